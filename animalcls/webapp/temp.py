"""The web app's private temp folders (plots, overlays): named after the process that made them,
removed when it exits, and removed at the next start when a process died without cleaning up.
Standard library only."""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "animalcls-"
KINDS = ("plots", "images")
# Folders of older versions carry no process id: removed once this old.
UNOWNED_AGE_S = 24 * 3600
_OWNED = re.compile(rf"^{PREFIX}(?:{'|'.join(KINDS)})-(\d+)-")


def private_folder(kind: str, root: Path | None = None) -> Path:
    """A new empty folder <tmp>/animalcls-<kind>-<pid>-<random>, removed when this process exits."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=root))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(root: Path | None = None) -> list[Path]:
    """Remove the app's temp folders left by processes that are gone; returns them."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for folder in root.glob(f"{PREFIX}*-*"):
        if not folder.is_dir() or not any(folder.name.startswith(f"{PREFIX}{kind}-") for kind in KINDS):
            continue
        owner = _OWNED.match(folder.name)
        stale = not _alive(int(owner.group(1))) if owner else time.time() - folder.stat().st_mtime > UNOWNED_AGE_S
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d temp folder(s) left by stopped app processes", len(removed))
    return removed
