"""Filter TensorFlow's log noise without turning oneDNN off (that made training 1.7x slower).

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

NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|cpu_feature_guard|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|could not find cuda drivers|computation_placer\.cc|"
    r"TF-TRT Warning|Could not find TensorRT|cuda_dnn|absl::InitializeLog|E0000 00:00"
)
_installed = False


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
    """Route file descriptor 2 through a filtering thread (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(target=_pump, args=(read_fd, original), daemon=True, name="stderr-filter").start()


def quiet_tensorflow() -> None:
    """Filter C++ noise, then import TensorFlow and lower its Python loggers to errors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.stderr.isatty() or os.environ.get("ANIMALCLS_FILTER_STDERR", "1") == "1":
        filter_stderr()
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)  # e.g. tf.function retracing warnings
    logging.getLogger("absl").setLevel(logging.ERROR)
