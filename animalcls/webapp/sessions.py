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
nothing outside the fine-tune root (the bundled checkpoints included) is ever deleted. A
fine-tune a live session uses (or just made) is pinned (`Pins`, keyed by the session's "pin"):
never deleted while pinned, whatever the caps; a new fine-tune is refused instead when the
pinned ones alone reach the hard ceiling (`StoreLimits.ceiling`).
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.store.checkpoints import KINDS, MANIFEST_FILE

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
    session = {
        "models": {k: str(v) for k, v in models.items() if k in KINDS and isinstance(v, str)},
        "owned": [str(name) for name in owned if isinstance(name, str)],
    }
    if isinstance(state.get("pin"), str):
        session["pin"] = state["pin"]
    taught = state.get("taught") if isinstance(state.get("taught"), list) else []
    session["taught"] = [name for name in taught if isinstance(name, str) and name in session["owned"]]
    return session


def session_hash(request: Any) -> str | None:
    """The Gradio session hash of a request (a gr.Request; None without one)."""
    return getattr(request, "session_hash", None)


def session_key(request: Any) -> str:
    """The key a session's pins are kept under: its Gradio session hash (a random one without)."""
    return session_hash(request) or uuid.uuid4().hex


class PageTokens:
    """A random token per page load, kept in that browser (gr.BrowserState), mapped to the page's
    session hash: after a reload the new page names the old one by it. The newest `keep` only."""

    def __init__(self, keep: int = 1000) -> None:
        self._owners: dict[str, str] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def issue(self, owner: str | None) -> str:
        token = secrets.token_urlsafe(16)
        with self._lock:
            if owner:
                self._owners[token] = owner
                while len(self._owners) > self._keep:
                    del self._owners[next(iter(self._owners))]
        return token

    def owner(self, token: Any) -> str | None:
        """The session hash `token` was issued to; None for anything else (the value comes from the browser)."""
        if not isinstance(token, str) or len(token) > 64:
            return None
        with self._lock:
            return self._owners.get(token)


def pinned_names(session: dict[str, Any]) -> set[str]:
    """The checkpoints a session must keep: those it classifies with, its newest fine-tune and
    both sides of its latest teach (saved together, used together)."""
    return {*session["models"].values(), *session["owned"][-1:], *session.get("taught", [])}


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

    def ceiling(self) -> tuple[int, int]:
        """(count, bytes) that fine-tunes pinned by live sessions may reach before new
        fine-tunes are refused: twice the caps."""
        return 2 * self.max_count, 2 * self.max_bytes

    def kept(self, folder_size: int) -> int:
        """How many fine-tunes of `folder_size` bytes the caps keep (at least the newest one)."""
        return max(1, min(self.max_count, self.max_bytes // max(1, folder_size)))


class Pins:
    """Names pinned per live session (thread-safe): what `pinned_names` gives for its session."""

    def __init__(self) -> None:
        self._by_session: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def set(self, key: str, names: set[str]) -> None:
        with self._lock:
            self._by_session[key] = frozenset(names)

    def drop(self, key: Any) -> None:
        with self._lock:
            self._by_session.pop(key, None)

    def names(self) -> set[str]:
        with self._lock:
            return set().union(*self._by_session.values())


class FinetuneStore:
    """The fine-tune root: name -> folder for the sessions that own them, and pruning."""

    def __init__(self, root: Path, limits: StoreLimits | None = None, protected: list[Path] | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or StoreLimits()
        # Folders never deleted whatever the caps: the bundled checkpoints, the server's defaults.
        self.protected = [Path(p).resolve() for p in (protected or [])]
        self.pins = Pins()  # fine-tunes live sessions use: never deleted while pinned

    def pin(self, session: dict[str, Any], key: str) -> dict[str, Any]:
        """`session` pinned under `key` (kept if it has one): its models stay until `unpin`."""
        session = {**session, "pin": session.get("pin") or key}
        self.pins.set(session["pin"], pinned_names(session))
        return session

    def typical_bytes(self, source: Path) -> int:
        """The size of a fine-tune: the newest stored one, else `source` without what a
        fine-tune does not copy (its stored features)."""
        from animalcls.store.stored_features import FEATURES_FILE

        stored = self.stored()
        if stored:
            return folder_bytes(stored[-1])
        features = Path(source) / FEATURES_FILE
        return folder_bytes(Path(source)) - (features.stat().st_size if features.is_file() else 0)

    def crowded(self) -> str | None:
        """Why no new fine-tune may be stored now (the pinned ones alone reach the ceiling), or None."""
        pinned = [folder for folder in self.stored() if folder.name in self.pins.names()]
        count, size = self.limits.ceiling()
        if len(pinned) < count and sum(map(folder_bytes, pinned)) < size:
            return None
        return (
            f"This server already keeps {len(pinned)} fine-tunes that visitors are using, its limit: "
            "a new one could not be stored. Try again when some visitors have left."
        )

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
        any the server serves to everyone) and those pinned by live sessions always stay.
        Returns the names deleted."""
        kept, pinned = {Path(p).resolve() for p in keep}, self.pins.names()
        folders = self.stored()
        sizes = {p: folder_bytes(p) for p in folders}
        removed: list[str] = []
        for folder in folders:
            count, total = len(folders) - len(removed), sum(sizes.values())
            if count <= self.limits.max_count and total <= self.limits.max_bytes:
                break
            if folder.resolve() in kept or folder.name in pinned or self._protected(folder):
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
        for _kind, folder in self.defaults.items():
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
        with this session's choices on top: one request never mixes two models. A pinned
        session is pinned again (its pins may have been dropped when its connection broke)."""
        if session.get("pin"):
            self.store.pins.set(session["pin"], pinned_names(session))
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
