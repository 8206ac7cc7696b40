"""Logging: the library's records shown on stderr by the command line and the app, and
TensorFlow's log noise filtered without turning oneDNN off (that made training 1.7x slower).

TF_CPP_MIN_LOG_LEVEL does not silence the absl pre-init warning or the oneDNN notice, which
the C++ runtime writes straight to file descriptor 2. `quiet_tensorflow()` routes fd 2 through
a pipe and drops only those known lines; everything else still reaches the terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cpu_feature_guard|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|could not find cuda drivers|computation_placer\.cc|"
    r"TF-TRT Warning|Could not find TensorRT|cuda_dnn|absl::InitializeLog|E0000 00:00"
)
_installed: dict[str, object] = {}


def is_noise(line: str) -> bool:
    return bool(NOISE.search(line))


def _pump(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(8192):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not is_noise(line.decode("utf-8", "replace")):
                    os.write(write_fd, line + b"\n")
        if pending and not is_noise(pending.decode("utf-8", "replace")):
            os.write(write_fd, pending)


def filter_stderr() -> None:
    """Route file descriptor 2 through a filtering thread (once per process); undo it with
    `restore_stderr()` before exit so the last lines are not lost."""
    if _installed:
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, original), daemon=True, name="stderr-filter")
    thread.start()
    _installed.update(original=original, thread=thread)


def restore_stderr(timeout: float = 2.0) -> None:
    """Put the real stderr back on fd 2 and wait until the filter has written everything."""
    if not _installed:
        return
    sys.stderr.flush()
    original, thread = _installed.pop("original"), _installed.pop("thread")
    os.dup2(original, 2)  # closes the pipe's last write end, so the pump reads EOF
    thread.join(timeout)  # type: ignore[attr-defined]
    os.close(original)  # type: ignore[arg-type]


def quiet_tensorflow() -> None:
    """Filter C++ noise and lower TensorFlow's Python loggers to errors, without importing
    TensorFlow (commands that don't need it stay fast)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("ANIMALCLS_FILTER_STDERR", "1") == "1":
        filter_stderr()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing warnings
    logging.getLogger("absl").setLevel(logging.ERROR)


PREFIXES = {logging.DEBUG: "debug: ", logging.INFO: "note: ", logging.WARNING: "warning: "}


class OneLine(logging.Formatter):
    """`note: ...` for info, `warning: ...` for warnings, `error: ...` above: one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = PREFIXES.get(record.levelno, f"{record.levelname.lower()}: ")
        return prefix + " ".join(record.getMessage().split())


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (pytest's capture, the stderr filter)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(OneLine())

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns it
        pass


@contextmanager
def library_logs_to_stderr(level: int = logging.INFO) -> Iterator[None]:
    """While open, the library's records at `level` and above reach stderr, one line each. The
    library only logs (`logging.getLogger(__name__)`); the command line and the app call this."""
    logger = logging.getLogger("animalcls")
    handler, previous = _Stderr(), logger.level
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(min(level, previous) if previous else level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
