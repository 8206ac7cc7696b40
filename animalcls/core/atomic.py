"""Atomic writes: a temp file (or folder) next to the target, then one rename, so readers see
the old content or the complete new one, never a partial file. A leaf: standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Every temp or work folder holds this file, naming the process writing it ("pid host"), so a
# later run can tell a crash leftover (its process is gone) from a folder still being written.
OWNER_FILE = ".animalcls-owner"
# A folder without an owner file is only taken for a leftover once it is this old: the owner
# file is written right after the folder is created, and removed just before the final rename.
UNOWNED_GRACE_S = 3600.0


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
    remove_stale_leftovers(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        mark_owner(tmp)
        yield tmp
        (tmp / OWNER_FILE).unlink(missing_ok=True)
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


@contextmanager
def work_dir(target: Path) -> Iterator[Path]:
    """Yield `.NAME.work` next to `target` for scratch files of a long job (training
    checkpoints, history), removed afterwards. Crash leftovers of the same target are removed
    first; a work folder that a live process still owns is refused."""
    target = Path(target)
    remove_stale_leftovers(target)
    work = target.parent / f".{target.name}.work"
    if work.exists():
        raise FileExistsError(f"Another process ({_owner_text(work)}) is writing {target}: choose another folder.")
    work.mkdir(parents=True)
    mark_owner(work)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def mark_owner(folder: Path) -> None:
    (Path(folder) / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")


def leftovers_of(target: Path) -> list[Path]:
    """The temp, work and swap folders (`.NAME.tmp-*`, `.NAME.work`, `.NAME.old-*`) of `target`."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    return sorted({p for pattern in leftover_patterns(target.name) for p in target.parent.glob(pattern) if p.is_dir()})


def remove_stale_leftovers(target: Path) -> list[Path]:
    """Remove the leftovers of `target` whose writing process is gone; returns what was removed."""
    removed = []
    for folder in leftovers_of(target):
        if is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def is_stale(folder: Path) -> bool:
    """True when the process that wrote `folder` is gone (same host, pid not running)."""
    folder = Path(folder)
    owner = _read_owner(folder)
    if owner is None and ".old-" in folder.name:  # replace_dir names these after its pid
        owner = (_int(folder.name.rsplit("-", 1)[-1]), socket.gethostname())
    if owner is None or owner[0] is None:
        try:
            return time.time() - folder.stat().st_mtime > UNOWNED_GRACE_S
        except FileNotFoundError:
            return False
    pid, host = owner
    return host == socket.gethostname() and not _pid_alive(pid)


def _read_owner(folder: Path) -> tuple[int | None, str] | None:
    try:
        pid, _, host = (folder / OWNER_FILE).read_text().strip().partition(" ")
    except OSError:
        return None
    return _int(pid), host


def _owner_text(folder: Path) -> str:
    owner = _read_owner(folder)
    return f"pid {owner[0]} on {owner[1]}" if owner else "unknown"


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def leftover_patterns(name: str = "*") -> tuple[str, str, str]:
    """Glob patterns of the crash leftovers of a folder `name` (any name by default): `.<name>.tmp-XXXX`
    (a folder being written), `.<name>.work` (a long job's scratch folder) and `.<name>.old-PID`
    (a replaced folder being deleted)."""
    return f".{name}.tmp-*", f".{name}.work", f".{name}.old-*"


def clean_leftovers(roots: list[Path]) -> list[str]:
    """Remove the stale leftovers (see `is_stale`) directly under each root, whatever their
    target; returns the names removed. Called at app startup."""
    removed: list[str] = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for pattern in leftover_patterns():
            for folder in sorted(root.glob(pattern)):
                if folder.is_dir() and not folder.is_symlink() and is_stale(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
    return sorted(removed)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks: what every cache and sidecar is keyed by."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
