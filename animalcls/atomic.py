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


# Crash leftovers: `.<name>.work` (a training run's scratch folder), `.<name>.tmp-XXXX` (a
# checkpoint folder being written) and `.<name>.old-PID` (a replaced folder being deleted).
LEFTOVER_PATTERNS = (".*.work", ".*.tmp-*", ".*.old-*")
OWNER_LOCK = ".owner.lock"
# A leftover without a lock file is removed only when nothing in it changed for this long:
# atomic_dir fills its temp folder within seconds, so a live writer is always younger.
STALE_AFTER_SECONDS = 600.0


@contextmanager
def owner_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder/.owner.lock` while a long job writes in `folder`:
    the kernel drops it when the process dies (even by SIGKILL), so `clean_leftovers` in
    another process can tell a live folder from a crashed one without trusting pids, which a
    restarted container reuses."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / OWNER_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owner_alive(folder: Path) -> bool | None:
    """True when a live process holds the folder's lock, False when the lock is free, None
    when there is no lock file."""
    import fcntl

    try:
        handle = open(folder / OWNER_LOCK)  # never created here: no file means no owner lock
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _newest_change(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir():
        times += [child.lstat().st_mtime for child in path.iterdir()]
    return max(times)


def clean_leftovers(roots: list[Path], stale_after: float = STALE_AFTER_SECONDS) -> list[str]:
    """Remove crash leftovers directly under each root; returns the names removed. A folder
    whose lock a live process holds, or an unlocked one changed in the last `stale_after`
    seconds, is left alone."""
    import fnmatch
    import time

    removed: list[str] = []
    for root in roots:
        if not Path(root).is_dir():
            continue
        for entry in sorted(Path(root).iterdir()):
            if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in LEFTOVER_PATTERNS):
                continue
            try:
                alive = _owner_alive(entry) if entry.is_dir() else None
                if alive or (alive is None and time.time() - _newest_change(entry) < stale_after):
                    continue
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                removed.append(entry.name)
            except OSError:
                continue  # vanished meanwhile, or not ours to delete
    return removed
