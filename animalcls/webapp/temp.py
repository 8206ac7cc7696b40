"""The web app's private temp folders (plots, overlays, thumbnails): named after the process that
made them, removed when it exits, and removed at the next start when a process died without
cleaning up. `TempImages` writes the image files the page shows there: files, never PIL objects,
because Gradio's PIL cache races between concurrent requests. No Gradio here."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from animalcls.core.atomic import write_atomic

log = logging.getLogger(__name__)

PREFIX = "animalcls-"
KINDS = ("plots", "images")
# Folders of older versions carry no process id: removed once this old.
UNOWNED_AGE_S = 24 * 3600
KEEP_OVERLAYS = 64  # overlay files kept on disk; older ones are deleted (Gradio has copied them by then)
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


class TempImages:
    """Image files for the page in one private temp folder: overlays (a new file per request,
    the oldest deleted beyond KEEP_OVERLAYS) and thumbnails (one per photo, reused)."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._overlays: deque[Path] = deque()
        self._lock = threading.Lock()

    def folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = private_folder("images")  # removed at exit (and at the next start if killed)
            return self._folder

    def overlay(self, image: Any) -> str:
        path = self.folder() / f"overlay-{uuid.uuid4().hex}.jpg"
        image.save(path, format="JPEG", quality=90)
        with self._lock:
            self._overlays.append(path)
            while len(self._overlays) > KEEP_OVERLAYS:
                self._overlays.popleft().unlink(missing_ok=True)
        return str(path)

    def thumbnail(self, photo: str, side: int = 256) -> str:
        from animalcls.serving.inference import load_image

        key = hashlib.sha1(f"{photo}:{os.stat(photo).st_mtime_ns}".encode()).hexdigest()
        path = self.folder() / f"thumb-{key}.jpg"
        if not path.is_file():
            image = load_image(photo)
            image.thumbnail((side, side))
            write_atomic(path, lambda handle: image.save(handle, format="JPEG", quality=90))
        return str(path)
