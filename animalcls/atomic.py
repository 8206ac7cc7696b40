"""Atomic writes: a temp file (or folder) next to the target, then one rename, so readers see
the old content or the complete new one, never a partial file. A leaf: standard library only."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> Path:
    """Call `write(handle)` on a temp file in `path`'s folder, then os.replace it onto `path`.
    `mode` replaces mkstemp's 0600: these files are meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically."""
    return write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=1).encode()))


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temp folder next to `target`; on success it replaces `target`, on any
    error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`, swapping out an existing `target`."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
