"""The web app's composition root (one AnimalApp per server): the services every tab shares, one
handler object per tab (animalcls/webapp/tabs/), and the handlers that span tabs: the views a
session's models decide (refreshed on page load and after Use / Restore) and the session's end.
The layout that wires them into gr.Blocks is animalcls/webapp/layout.py."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.atomic import clean_leftovers
from animalcls.core.settings import BUNDLED_DIR, finetunes_root
from animalcls.store.checkpoints import KINDS, read_manifest
from animalcls.webapp import views
from animalcls.webapp.checkpoints import ServedCheckpoints, resolve_checkpoints
from animalcls.webapp.inputs import user_error
from animalcls.webapp.sessions import FinetuneStore, SessionModels, StoreLimits, session_hash, session_key, session_of
from animalcls.webapp.state import FinetuneRunner, ModelRegistry
from animalcls.webapp.tabs.cells import CellView
from animalcls.webapp.tabs.classify import ClassifyTab
from animalcls.webapp.tabs.finetune import FinetuneTab
from animalcls.webapp.tabs.finetune_status import FinetuneSettings
from animalcls.webapp.tabs.training import TrainingTab
from animalcls.webapp.temp import TempImages, private_folder, remove_stale


class AnimalApp:
    """The app's services and tabs; layout.build_layout() wires them into gr.Blocks.

    State scope: the server's DEFAULT models (`registry`), the fine-tune queue (`runner`) and
    the fine-tune store are per server. Which models a visitor classifies with, and which
    fine-tunes are theirs, live in that visitor's gr.State (`session`, see
    animalcls.webapp.sessions): "Use this model" never changes what another visitor sees, unless
    the operator started the app with `use_for_everyone`.
    """

    def __init__(
        self,
        scratch_dir: str | Path | None = None,
        transfer_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        *,
        checkpoints_root: str | Path = BUNDLED_DIR,
        finetune_root: str | Path | None = None,
        use_hub: bool = True,
        hub_repo: str | None = None,
        examples_dir: str | Path = views.EXAMPLES_DIR,
        limits: StoreLimits | None = None,
        max_epochs: int = 20,
        max_unfreeze: int = 0,
        use_for_everyone: bool = False,
        served: ServedCheckpoints | None = None,
    ) -> None:
        served = served or resolve_checkpoints(scratch_dir, transfer_dir, Path(checkpoints_root), use_hub, hub_repo)
        paths, notices = served.paths, list(served.notices)
        self.registry = ModelRegistry(paths)
        self.runner = FinetuneRunner()
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            notices.append(f"The fine-tune dataset {self.data_dir} does not exist: fine-tuning is off.")
        self.notices = [views.public(n) for n in notices]
        self.checkpoints_root = Path(checkpoints_root)
        self.finetune_root = Path(finetune_root) if finetune_root else finetunes_root()
        protected = [self.checkpoints_root, *(p for p in paths.values() if p is not None)]
        self.store = FinetuneStore(self.finetune_root, limits, protected)
        self.sessions = SessionModels(self.registry.paths, self.store)
        self.use_for_everyone = use_for_everyone
        remove_stale()  # temp folders of app processes that died without cleaning up
        self.render_dir = private_folder("plots")  # plots drawn for PNG-less folders; removed at exit
        clean_leftovers([self.checkpoints_root, self.finetune_root])
        # A store over its caps (they may have been lowered) is pruned now, not after the next fine-tune.
        self.store.prune(keep=[p for p in paths.values() if p is not None])
        # Set once TensorFlow and Keras are imported (main() imports them after the server is
        # up). Handlers that need them wait for it: two threads importing TensorFlow at the
        # same time can fail with importlib's _DeadlockError (seen here).
        self.ready = threading.Event()
        self.ready.set()
        # Set once the models are loaded: through ONNX Runtime that needs no TensorFlow, so
        # Classify answers before TensorFlow is imported.
        self.models_ready = threading.Event()
        self.models_ready.set()
        self.images = TempImages()  # overlay and thumbnail files for the page
        # One handler object per tab, given the services it uses.
        wait_for_models = functools.partial(self.wait_ready, self.models_ready)
        self.classify_tab = ClassifyTab(self.registry, self.sessions, self.images, wait_for_models, examples_dir)
        self.training_tab = TrainingTab(self.sessions, self.render_dir)
        self.cells = CellView(self.sessions, self.wait_ready, self.images)
        settings = FinetuneSettings(self.data_dir, self.checkpoints_root, max_epochs, max_unfreeze)
        self.finetune_tab = FinetuneTab(
            self.registry, self.sessions, self.runner, self.wait_ready, self.render_dir, settings
        )

    def wait_ready(self, event: threading.Event | None = None) -> None:
        """Block until TensorFlow is imported (or `event` is set); a visitor is told after 5 minutes."""
        if not (event or self.ready).wait(timeout=300):
            raise user_error("The server is still starting up; try again in a minute.", "Starting")

    def model_views(self, session: Any = None) -> tuple[Any, ...]:
        """What this session's models decide outside the Classify results: the Classify tab's two
        headers, the Training tab's views of each side, then the animals the Classify tab names."""
        headers = (self.classify_tab.header(kind, session) for kind in KINDS)
        return (*headers, *self.training_tab.views(session), self.classify_tab.known_classes(session))

    # ----- Use / restore (this session only, unless the operator shares swaps) -----
    def use_model(self, name: str | None = None, session: Any = None, request: gr.Request = None) -> tuple[Any, ...]:
        """Classify with the checkpoint `name` (a fine-tune of this session) from now on; it stays
        on the server while this session lives (pinned)."""
        state = session_of(session)
        if not name:
            raise user_error("No fine-tuned model yet: run a fine-tune to the end first.", "Nothing to use")
        folder = self.sessions.folder_of(state, str(name))
        if folder is None:
            raise user_error(
                f"There is no model called {name} that this session may use (only this server's "
                "models and your own fine-tunes; old fine-tunes are removed to make room).",
                "Unknown model",
            )
        return self._use(state, [folder], request)

    def use_taught(self, taught: Any = None, session: Any = None, request: gr.Request = None) -> tuple[Any, ...]:
        """The Teach panel's "Use the taught models": both sides classify with what this session taught."""
        state = session_of(session)
        names = getattr(taught, "saved", None) or {}
        folders = [folder for name in names.values() if (folder := self.sessions.folder_of(state, name)) is not None]
        if not folders:
            raise user_error("Nothing taught yet, or it was removed to make room: train again first.", "Nothing to use")
        return self._use(state, folders, request)

    def _use(self, state: dict[str, Any], folders: list[Path], request: gr.Request | None) -> tuple[Any, ...]:
        self.wait_ready()
        sides = []
        for folder in folders:
            kind = read_manifest(folder)["kind"]
            state = self.sessions.choose(state, folder.name, kind)
            if self.use_for_everyone:
                self.registry.use(folder, kind)
            sides.append(f"{folder.name} on the {views.side_title(kind)} side")
        state = self.store.pin(state, session_key(request))
        who = "for every visitor of this server" if self.use_for_everyone else "in this browser session only"
        others = "" if self.use_for_everyone else " (other visitors keep the original models)"
        message = f"**Now classifying with {' and '.join(sides)}**, {who}{others}."
        return (message, *self.model_views(state), state)

    def restore_models(self, session: Any = None, request: gr.Request = None) -> tuple[Any, ...]:
        state = self.store.pin({**session_of(session), "models": {}}, session_key(request))
        if self.use_for_everyone:
            self.registry.reset()
        return ("Restored the original models.", *self.model_views(state), state)

    # ----- Session end: its fine-tunes are no longer pinned -----
    def end_session(self, request: gr.Request = None) -> None:
        """demo.unload: the visitor closed or reloaded the page. Its fine-tune stops (nobody would
        see it), remembered as abandoned so that the reloaded page can say so."""
        self.store.pins.drop(session_hash(request))
        self.runner.abandon(session_hash(request))

    def forget_session(self, session: Any) -> None:
        """The session state's delete_callback: Gradio dropped the state (an hour after the page closed)."""
        self.store.pins.drop(session.get("pin") if isinstance(session, dict) else None)
