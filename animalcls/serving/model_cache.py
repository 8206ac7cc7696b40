"""A bounded cache of what is loaded from checkpoint files (models, scope detectors), shared by a
process: the least recently used entry leaves first, and an entry whose file is gone or changed
leaves at the next lookup. Standard library only.

Leaving the cache only drops the cache's reference: a request that holds a loaded model keeps
using it until it is done, and the memory is freed after that.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

# Models kept loaded per process: the app's two defaults and a couple of visitors' fine-tunes.
# Each Lite0 checkpoint costs about 45 MB (ONNX session and scope detector).
MODELS_KEPT = 4

V = TypeVar("V")


def file_stamp(path: Path) -> float:
    """`path`'s modification time, 0.0 when it does not exist."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


class FileCache(Generic[V]):
    """Values loaded from a file, keyed by (file, its mtime, anything else): at most `size`."""

    def __init__(self, size: int = MODELS_KEPT) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, float, Hashable], V] = OrderedDict()
        self.lock = threading.RLock()  # held while loading: one load at a time, as before

    def get(self, path: Path, extra: Hashable, load: Callable[[], V]) -> V:
        """The value for `path` as it is now on disk (loaded once by `load`), most recently used."""
        key = (str(path), file_stamp(path), extra)
        with self.lock:
            self._drop_gone()
            if key not in self._entries:
                self._entries[key] = load()
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                old, _ = self._entries.popitem(last=False)
                log.debug("unloaded %s (least recently used)", old[0])
            return self._entries[key]

    def _drop_gone(self) -> None:
        for key in [k for k in self._entries if not Path(k[0]).parent.is_dir() or file_stamp(Path(k[0])) != k[1]]:
            del self._entries[key]
            log.debug("unloaded %s (changed or removed on disk)", key[0])

    def paths(self) -> list[str]:
        """The files of the cached values, least recently used first."""
        with self.lock:
            return [key[0] for key in self._entries]

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
