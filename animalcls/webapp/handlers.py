"""The web app's handlers and server-side state (one AnimalApp per server). The layout that wires
them into gr.Blocks is in animalcls/webapp/layout.py; what the handlers show is computed in animalcls.webapp.views."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.atomic import clean_leftovers
from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.core.settings import BUNDLED_DIR, finetunes_root
from animalcls.serving.inference import load_image, top_k
from animalcls.store.checkpoints import KINDS, read_manifest
from animalcls.webapp import views
from animalcls.webapp.checkpoints import ServedCheckpoints, resolve_checkpoints
from animalcls.webapp.finetune_tab import FinetuneSettings, FinetuneTab
from animalcls.webapp.inputs import UnusableUpload, user_error
from animalcls.webapp.sessions import FinetuneStore, SessionModels, StoreLimits, session_hash, session_key, session_of
from animalcls.webapp.state import FinetuneRunner, ModelRegistry
from animalcls.webapp.temp import private_folder, remove_stale
from animalcls.webapp.trust_view import (
    CellView,
    TempImages,
    answer_sides,
    cleared_trust_outputs,
    known_classes_markdown,
    scope_thresholds,
    trust_outputs,
    untrusted_note,
)


def image_error(message: str) -> gr.Error:
    return user_error(message, "Not a usable image")


class AnimalApp:
    """The app's handlers and server-side state; layout.build_layout() wires them into gr.Blocks.
    Each tab with handlers of its own is an object built here from the services it uses
    (`finetune_tab`, `cells`); this class keeps the Classify and Training handlers and those
    that span tabs (use / restore a model, the session's end).

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
        self.examples_dir = Path(examples_dir)
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
        self.cells = CellView(self.registry, self.wait_ready, self.images)
        settings = FinetuneSettings(self.data_dir, self.checkpoints_root, max_epochs, max_unfreeze)
        self.finetune_tab = FinetuneTab(
            self.registry, self.sessions, self.runner, self.wait_ready, self.render_dir, settings
        )

    def wait_ready(self, event: threading.Event | None = None) -> None:
        """Block until TensorFlow is imported (or `event` is set); a visitor is told after 5 minutes."""
        if not (event or self.ready).wait(timeout=300):
            raise user_error("The server is still starting up; try again in a minute.", "Starting")

    def paths(self, session: Any) -> dict[str, Path | None]:
        """kind -> the checkpoint folder this session classifies with."""
        return self.sessions.paths(session_of(session))

    # ----- Classify tab -----
    def classify(self, image: str | None, show_heatmaps: bool = False, session: Any = None) -> tuple[Any, ...]:
        """Top-5 of each model with its none-of-the-five verdict (one forward pass each), a
        header per side with the time taken, whether they agree, the banner and the heatmaps."""
        if isinstance(image, UnusableUpload):
            raise image_error(str(image))
        if not image:
            raise user_error("Upload a photo first (or pick an example).", "No photo")
        # read once: a swap meanwhile must not mix two models' answers
        sides = self.sessions.snapshot(session_of(session), self.registry.snapshot())
        if not any(folder for folder, _ in sides.values()):
            raise user_error("No checkpoints are available on this server: see the notice at the top.", "No models")
        try:  # decoded once, shrunk to what the largest model needs before any float conversion
            picture = load_image(image, max_side=views.largest_input([folder for folder, _ in sides.values()]))
        except ImageError as exc:
            raise image_error(str(exc)) from None
        self.wait_ready(self.models_ready)
        answers = answer_sides(
            {kind: folder for kind, (folder, _) in sides.items() if folder}, picture, bool(show_heatmaps)
        )
        results: dict[str, tuple[dict[str, float], float] | None] = {}
        outputs: list[Any] = []
        for kind in KINDS:
            folder, swapped = sides[kind]
            header, answer = views.model_header(folder, kind, swapped=swapped), answers.get(kind)
            if isinstance(answer, str):
                header += f"\n\n**This model could not be used:** {html.escape(views.public(answer))}"
                answer = None
            if answer is not None:
                header += "\n\n" + views.timing_line(answer.seconds) + untrusted_note(answer)
            results[kind] = (answer.probabilities, answer.seconds) if answer else None
            outputs += [header, dict(top_k(answer.probabilities, 5)) if answer else None]
        limits = scope_thresholds({kind: folder for kind, (folder, _) in sides.items() if folder})
        extras = trust_outputs(answers, picture, bool(show_heatmaps), self.images, self.class_names(sides), limits)
        # Under a warning the page dims the comparison (PAGE_CSS): it is not repeated here.
        return (*outputs, views.comparison_markdown(results), *extras)

    @staticmethod
    def validate_photo(image: str | None, show_heatmaps: bool = False, session: Any = None) -> list[dict[str, Any]]:
        """The Classify button's validator: without a photo, one message by the photo input
        instead of an error on every output (classify itself still refuses, for API callers)."""
        return [
            gr.validate(bool(image), "Upload a photo first (or click an example below)."),
            gr.validate(True, ""),
            gr.validate(True, ""),
        ]

    def classify_new(self, image: str | None, show_heatmaps: bool = False, session: Any = None) -> tuple[Any, ...]:
        """The photo input, then classify's outputs, after an upload (or a model swap): the
        photo's results; none without a photo; for an unusable upload, the input and results
        cleared and the reason shown once, where the comparison goes."""
        if isinstance(image, UnusableUpload):
            cleared = list(self.clear_results(session))
            cleared[4] = f"**Not a usable image:** {html.escape(image)}"
            return (None, *cleared)
        # The photo as a plain value, not gr.skip(): an update makes Gradio rebuild the input
        # component for the session (its class keeps app_inputs.UploadedImage's checks, but not its value).
        return (image, *(self.classify(image, show_heatmaps, session) if image else self.clear_results(session)))

    def clear_results(self, session: Any = None) -> tuple[Any, ...]:
        return (
            self.header("scratch", session),
            None,
            self.header("transfer", session),
            None,
            "",
            *cleared_trust_outputs(),
        )

    def known_classes(self) -> str:
        return known_classes_markdown(self.registry)

    def class_names(self, sides: dict[str, tuple[Path | None, bool]] | None = None) -> list[str]:
        """The class names of the transfer (else scratch) model, from `sides` (one snapshot) when given."""
        sides = sides if sides is not None else self.registry.snapshot()
        for kind in ("transfer", "scratch"):
            folder = sides.get(kind, (None, False))[0]
            if folder is not None:
                try:
                    return list(read_manifest(folder)["class_names"])
                except AnimalclsError:
                    continue
        return []

    def header(self, kind: str, session: Any = None) -> str:
        """A side's header, "swapped in" judged as classify judges it (one snapshot: the
        server's original models, this session's choices on top)."""
        folder, swapped = self.sessions.snapshot(session_of(session), self.registry.snapshot())[kind]
        return views.model_header(folder, kind, swapped=swapped)

    # ----- Training tab (and the headers), refreshed on page load and after a swap -----
    def model_views(self, session: Any = None) -> tuple[Any, ...]:
        """Headers for the Classify tab, then per side: facts, curves, confusion matrix, report.
        Pictures are files (the checkpoint's own PNGs), never images drawn per request."""
        paths = self.paths(session)
        values: list[Any] = [self.header(kind, session) for kind in KINDS]
        for kind in KINDS:
            folder = paths[kind]
            if folder is None:
                values += [views.missing_side_text(kind), None, None, views.report_frame(None)]
                continue
            try:
                values += [
                    views.facts_markdown(folder),
                    views.history_file(folder, self.render_dir),
                    views.confusion_file(folder, self.render_dir),
                    views.report_frame(views.evaluation_of(folder)),
                ]
            except AnimalclsError as exc:
                values += [
                    f"**Unusable checkpoint:** {html.escape(views.public(str(exc)))}",
                    None,
                    None,
                    views.report_frame(None),
                ]
        return tuple(values)

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
        kind = read_manifest(folder)["kind"]
        self.wait_ready()
        state = self.store.pin(self.sessions.choose(state, folder.name, kind), session_key(request))
        if self.use_for_everyone:
            self.registry.use(folder, kind)
            message = f"**Now classifying with {folder.name}** on the {kind} side, for every visitor of this server."
        else:
            message = (
                f"**Now classifying with {folder.name}** on the {kind} side, in this browser session only "
                "(other visitors keep the original models)."
            )
        return (message, *self.model_views(state), state)

    def restore_models(self, session: Any = None, request: gr.Request = None) -> tuple[Any, ...]:
        state = self.store.pin({**session_of(session), "models": {}}, session_key(request))
        if self.use_for_everyone:
            self.registry.reset()
        return ("Restored the original models.", *self.model_views(state), state)

    # ----- Session end: its fine-tunes are no longer pinned -----
    def end_session(self, request: gr.Request = None) -> None:
        """demo.unload: the visitor closed or reloaded the page."""
        self.store.pins.drop(session_hash(request))

    def forget_session(self, session: Any) -> None:
        """The session state's delete_callback: Gradio dropped the state (an hour after the page closed)."""
        self.store.pins.drop(session.get("pin") if isinstance(session, dict) else None)

    # ----- Examples -----
    def example_photos(self) -> tuple[list[str], list[str]]:
        """Test-split photos of each checkpoint's dataset (when on this machine), and the
        freely licensed photos shipped in examples/."""
        folders = [self.registry.path(kind) for kind in ("transfer", "scratch")]
        return views.held_out_photos(folders), views.folder_photos(self.examples_dir)
