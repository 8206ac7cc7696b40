"""Per-visitor model choices and the bounded store of fine-tuned checkpoints (no Gradio, no TF).

A browser session (or gradio_client Client) carries a `session` dict in a gr.State:

    {"models": {"transfer": "transfer-...-ft-20261128-153000"}, "owned": ["transfer-...-ft-..."]}

`models` maps a kind to the checkpoint NAME that session classifies with instead of the
server's default; `owned` lists the fine-tunes that session made. Only names travel, never
paths: `FinetuneStore.folder_of` turns a name into a folder, and only for names the server
knows (its default pair) or that the session owns. A session's choice never changes what
another session sees; the server-wide default changes only when the operator allows it
(`--use-for-everyone`).

Stored fine-tunes are capped in number and total bytes; the oldest are deleted first, and
nothing outside the fine-tune root (the bundled checkpoints included) is ever deleted.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import KINDS, MANIFEST_FILE
from .errors import AnimalclsError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def new_session() -> dict[str, Any]:
    """The initial gr.State value: the server defaults, nothing owned."""
    return {"models": {}, "owned": []}


def session_of(state: Any) -> dict[str, Any]:
    """A well-formed copy of a session value (None or junk from an API call -> a new session)."""
    if not isinstance(state, dict):
        return new_session()
    models = state.get("models") if isinstance(state.get("models"), dict) else {}
    owned = state.get("owned") if isinstance(state.get("owned"), list) else []
    return {
        "models": {k: str(v) for k, v in models.items() if k in KINDS and isinstance(v, str)},
        "owned": [str(name) for name in owned if isinstance(name, str)],
    }


def valid_name(name: Any) -> bool:
    """A checkpoint name: one plain folder name (no separators, no leading dot)."""
    return isinstance(name, str) and bool(NAME_PATTERN.match(name)) and ".." not in name


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class StoreLimits:
    """Operator caps (app flags): how many fine-tunes are kept and how many bytes in all."""

    max_count: int = 5
    max_bytes: int = 200 * 2**20


class FinetuneStore:
    """The fine-tune root: name -> folder for the sessions that own them, and pruning."""

    def __init__(self, root: Path, limits: StoreLimits | None = None, protected: list[Path] | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or StoreLimits()
        # Folders never deleted whatever the caps: the bundled checkpoints, the server's defaults.
        self.protected = [Path(p).resolve() for p in (protected or [])]

    def folder(self, name: str) -> Path | None:
        """The stored fine-tune called `name`, if it exists."""
        if not valid_name(name):
            return None
        folder = self.root / name
        return folder if (folder / MANIFEST_FILE).is_file() else None

    def stored(self) -> list[Path]:
        """Stored fine-tunes, oldest first (by manifest time: written once, when saved)."""
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()]
        return sorted(folders, key=lambda p: ((p / MANIFEST_FILE).stat().st_mtime, p.name))

    def prune(self, keep: list[Path] | tuple[Path, ...] = ()) -> list[str]:
        """Delete the oldest fine-tunes until both caps hold; the folders in `keep` (the newest,
        any the server serves to everyone) always stay. Returns the names deleted."""
        kept = {Path(p).resolve() for p in keep}
        folders = self.stored()
        sizes = {p: folder_bytes(p) for p in folders}
        removed: list[str] = []
        for folder in folders:
            count, total = len(folders) - len(removed), sum(sizes.values())
            if count <= self.limits.max_count and total <= self.limits.max_bytes:
                break
            if folder.resolve() in kept or self._protected(folder):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
            sizes.pop(folder)
        return removed

    def _protected(self, folder: Path) -> bool:
        resolved = folder.resolve()
        return any(resolved == p or p in resolved.parents or resolved in p.parents for p in self.protected)


class SessionModels:
    """Resolves a session's choices against the server defaults and the fine-tune store."""

    def __init__(self, defaults: Callable[[], dict[str, Path | None]], store: FinetuneStore) -> None:
        self.store = store
        self._defaults = defaults  # kind -> folder: the server's current defaults (shared)

    @property
    def defaults(self) -> dict[str, Path | None]:
        return self._defaults()

    def folder_of(self, session: dict[str, Any], name: str) -> Path | None:
        """The folder for `name` as this session may use it: a server default, or a fine-tune it owns."""
        for kind, folder in self.defaults.items():
            if folder is not None and Path(folder).name == name:
                return Path(folder)
        return self.store.folder(name) if name in session["owned"] else None

    def paths(self, session: dict[str, Any]) -> dict[str, Path | None]:
        """kind -> folder this session classifies with (a vanished choice falls back to the default)."""
        chosen = dict(self.defaults)
        for kind, name in session["models"].items():
            folder = self.folder_of(session, name)
            if folder is not None:
                chosen[kind] = folder
        return chosen

    def snapshot(
        self, session: dict[str, Any], shared: dict[str, tuple[Path | None, bool]]
    ) -> dict[str, tuple[Path | None, bool]]:
        """kind -> (folder, swapped in) from one read of the server's sides (ModelRegistry.snapshot)
        with this session's choices on top: one request never mixes two models."""
        sides = dict(shared)
        for kind, name in session["models"].items():
            folder = self.folder_of(session, name)
            if folder is not None and kind in sides and folder != sides[kind][0]:
                sides[kind] = (folder, True)
        return sides

    def choose(self, session: dict[str, Any], name: Any, kind: str) -> dict[str, Any]:
        """A new session value that uses `name` on `kind`'s side."""
        if not valid_name(name) or self.folder_of(session, name) is None:
            raise AnimalclsError(
                f"There is no model called {name!r} that this session may use: only the server's models "
                "and fine-tunes made in this session (a fine-tune may also have been removed to make room)."
            )
        return {**session, "models": {**session["models"], kind: name}}
