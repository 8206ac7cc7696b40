"""The web app's handlers and server-side state (one AnimalApp per server). The layout that wires
them into gr.Blocks is in app.py; what the handlers show is computed in animalcls.app_views."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls import app_views as views
from animalcls import errors
from animalcls.app_state import BusyError, FinetuneRunner, JobProgress, ModelRegistry
from animalcls.checkpoints import KINDS, default_pair, read_manifest
from animalcls.errors import AnimalclsError, ImageError
from animalcls.inference import load_image, load_predictor, top_k
from animalcls.reports import REPORT_HEADERS, report_rows
from animalcls.settings import BUNDLED_DIR, finetune_folder
from app_trust import CellView, TempImages, answer_sides, cleared_trust_outputs, known_classes_markdown
from app_trust import trust_outputs, untrusted_note

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


class UnusableUpload(str):
    """What the photo input passes on, instead of a path, for an upload it cannot open: the
    reason. Raising in preprocessing would mark every output with a red "Error" badge and
    leave a broken image in the input; the handlers show the reason once and clear instead."""


def why_unusable(payload: Any) -> str:
    path = getattr(payload, "path", None)
    if path:
        try:
            load_image(path)
        except ImageError as exc:
            return str(exc)
    return "The upload is not a usable image (supported: JPEG, PNG, GIF, BMP, WebP, TIFF)."


def image_error(message: str) -> gr.Error:
    return gr.Error(html.escape(message), title="Not a usable image", print_exception=False)


def _user_error(message: str, title: str = "Error") -> gr.Error:
    return gr.Error(html.escape(message), title=title, print_exception=False)


def resolve_checkpoints(
    scratch_dir: str | Path | None,
    transfer_dir: str | Path | None,
    checkpoints_root: Path,
    use_hub: bool,
    hub_repo: str | None,
) -> tuple[dict[str, Path | None], list[str]]:
    """Explicit folders first, then the Hub (ANIMALCLS_HUB_REPO), then the bundled defaults."""
    paths: dict[str, Path | None] = {"scratch": None, "transfer": None}
    notices: list[str] = []
    given = {"scratch": scratch_dir, "transfer": transfer_dir}
    for kind, folder in given.items():
        if folder is None:
            continue
        try:
            manifest = read_manifest(folder)
        except AnimalclsError as exc:
            notices.append(f"The {kind} checkpoint given cannot be used, so the {kind} side is empty: {exc}")
            continue
        if manifest["kind"] != kind:
            notices.append(f"{folder} is a {manifest['kind']} checkpoint, shown on the {kind} side as asked.")
        paths[kind] = Path(folder)
    missing = [kind for kind in KINDS if given[kind] is None]
    if missing and use_hub:
        pulled, error = _pull_from_hub(hub_repo)
        if error:
            notices.append(error)
        for kind in missing:
            if pulled.get(kind):
                paths[kind] = Path(pulled[kind])
    if any(paths[kind] is None for kind in missing):
        try:
            bundled = default_pair(checkpoints_root)
        except AnimalclsError as exc:
            notices.append(f"Could not read the bundled checkpoints in {checkpoints_root}: {exc}")
            bundled = {}
        for kind in missing:
            if paths[kind] is None and bundled.get(kind):
                paths[kind] = bundled[kind]
    for kind in missing:
        if paths[kind] is None:
            notices.append(f"No {kind} checkpoint found (looked in {checkpoints_root}): the {kind} side is empty.")
    return paths, notices


def _pull_from_hub(repo_id: str | None) -> tuple[dict[str, Path], str | None]:
    """({kind: folder}, None), ({}, None) when no repo is configured, or ({}, message)."""
    from animalcls.hub import pull_app_checkpoints

    try:
        return pull_app_checkpoints(repo_id)
    except AnimalclsError as exc:
        return {}, str(exc)


class AnimalApp:
    """The app's handlers and server-side state; app.build_layout() wires them into gr.Blocks.

    State scope: one AnimalApp per server. The models in use (and a model swapped in with
    "Use this model") and the fine-tune job are shared by every session and API client.
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
        examples_dir: str | Path = EXAMPLES_DIR,
    ) -> None:
        paths, self.notices = resolve_checkpoints(scratch_dir, transfer_dir, Path(checkpoints_root), use_hub, hub_repo)
        self.registry = ModelRegistry(paths)
        self.runner = FinetuneRunner()
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            self.notices.append(f"The fine-tune dataset {self.data_dir} does not exist: fine-tuning is off.")
        self.finetune_root = Path(finetune_root) if finetune_root else None
        self.examples_dir = Path(examples_dir)
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
        self.cells = CellView(self.registry, self._wait_ready, self.images)

    def _wait_ready(self, event: threading.Event | None = None) -> None:
        if not (event or self.ready).wait(timeout=300):
            raise _user_error("The server is still starting up; try again in a minute.", "Starting")

    # ----- Classify tab -----
    def classify(self, image: str | None, show_heatmaps: bool = False) -> tuple[Any, ...]:
        """Top-5 of each model with its none-of-the-five verdict (one forward pass each), a
        header per side with the time taken, whether they agree, the banner and the heatmaps."""
        if isinstance(image, UnusableUpload):
            raise image_error(str(image))
        if not image:
            raise _user_error("Upload a photo first (or pick an example).", "No photo")
        sides = self.registry.snapshot()  # read once: a swap meanwhile must not mix two models' answers
        if not any(folder for folder, _ in sides.values()):
            raise _user_error("No checkpoints are available on this server: see the notice at the top.", "No models")
        try:
            picture = load_image(image)
        except ImageError as exc:
            raise image_error(str(exc)) from None
        self._wait_ready(self.models_ready)
        answers = answer_sides({kind: folder for kind, (folder, _) in sides.items() if folder}, picture, bool(show_heatmaps))
        results: dict[str, tuple[dict[str, float], float] | None] = {}
        outputs: list[Any] = []
        for kind in KINDS:
            folder, swapped = sides[kind]
            header, answer = views.model_header(folder, kind, swapped=swapped), answers.get(kind)
            if isinstance(answer, str):
                header += f"\n\n**This model could not be used:** {html.escape(answer)}"
                answer = None
            if answer is not None:
                header += "\n\n" + views.timing_line(answer.seconds) + untrusted_note(answer)
            results[kind] = (answer.probabilities, answer.seconds) if answer else None
            outputs += [header, dict(top_k(answer.probabilities, 5)) if answer else None]
        extras = trust_outputs(answers, picture, bool(show_heatmaps), self.images, self.class_names(sides))
        comparison = views.comparison_markdown(results)
        if extras[0] and comparison:
            comparison = "*Not to be trusted (see the warning above):* " + comparison
        return (*outputs, comparison, *extras)

    def classify_new(self, image: str | None, show_heatmaps: bool = False) -> tuple[Any, ...]:
        """The photo input, then classify's outputs, after an upload (or a model swap): the
        photo's results; none without a photo; for an unusable upload, the input and results
        cleared and the reason shown once, where the comparison goes."""
        if isinstance(image, UnusableUpload):
            cleared = list(self.clear_results())
            cleared[4] = f"**Not a usable image:** {html.escape(image)}"
            return (None, *cleared)
        # The photo as a plain value, not gr.skip(): an update makes Gradio rebuild the input
        # component for the session, which would drop app.checked_image's preprocessing.
        return (image, *(self.classify(image, show_heatmaps) if image else self.clear_results()))

    def clear_results(self) -> tuple[Any, ...]:
        return (self.header("scratch"), None, self.header("transfer"), None, "", *cleared_trust_outputs())

    def known_classes(self) -> str:
        return known_classes_markdown(self.registry)

    def class_names(self, sides: dict[str, tuple[Path | None, bool]] | None = None) -> list[str]:
        """The served classes, from one registry reading (`sides`, a snapshot) when given."""
        sides = sides or self.registry.snapshot()
        for kind in ("transfer", "scratch"):
            folder = sides[kind][0]
            if folder is not None:
                try:
                    return list(read_manifest(folder)["class_names"])
                except AnimalclsError:
                    continue
        return []

    def header(self, kind: str) -> str:
        return views.model_header(self.registry.path(kind), kind, swapped=self.registry.is_swapped(kind))

    # ----- Training tab (and the headers), refreshed on page load and after a swap -----
    def model_views(self) -> tuple[Any, ...]:
        """Headers for the Classify tab, then per side: facts, curves, confusion matrix, report."""
        values: list[Any] = [self.header(kind) for kind in KINDS]
        for kind in KINDS:
            folder = self.registry.path(kind)
            if folder is None:
                values += [views.missing_side_text(kind), None, None, self.report_frame(None)]
                continue
            try:
                values += [
                    views.facts_markdown(folder),
                    views.history_image(folder),
                    views.confusion_image(folder),
                    self.report_frame(views.evaluation_of(folder)),
                ]
            except AnimalclsError as exc:
                values += [f"**Unusable checkpoint:** {html.escape(str(exc))}", None, None, self.report_frame(None)]
        return tuple(values)

    @staticmethod
    def report_frame(evaluation: dict[str, Any] | None) -> Any:
        import pandas as pd

        # Empty cells, not None: pandas turns None into NaN, which reaches the JSON as a bare NaN.
        rows = [["" if cell is None else cell for cell in row] for row in report_rows(evaluation)]
        return pd.DataFrame(rows, columns=REPORT_HEADERS)

    # ----- Fine-tune tab -----
    def finetune_data(self) -> Path | None:
        """The configured dataset, else the one the transfer model was trained on, if on this machine."""
        return self.data_dir if self.data_dir is not None else views.dataset_root_of(self.registry.path("transfer"))

    def finetune_intro(self) -> str:
        if self.registry.path("transfer") is None:
            return "**Fine-tuning needs a transfer checkpoint**, and this server has none (see the notice at the top)."
        if self.data_dir is not None:
            where = f"the configured dataset `{self.data_dir}` (`--data` / `ANIMALCLS_DATA`)"
        elif self.finetune_data() is not None:
            where = f"the dataset it was trained on, `{self.finetune_data()}`"
        else:
            where = ("**no dataset**: the transfer model's dataset is not on this machine; start the app with "
                     "`--data DIR` or `ANIMALCLS_DATA=DIR` to enable fine-tuning")
        out = f"`{self.finetune_root}`" if self.finetune_root else "`runs/finetunes` (or `$ANIMALCLS_RUNS/finetunes`)"
        return (
            f"Fine-tunes the transfer model (the one on the Classify tab) on {where}, "
            "then evaluates it on the test split. "
            f"The result is saved as a new checkpoint folder under {out} (the bundled checkpoints are never "
            "changed). With 0 unfrozen layers only the classifier head trains, on cached backbone features (fast). "
            "One fine-tune runs at a time on this server; classification keeps working meanwhile."
        )

    def _out_dir(self, source: Path) -> Path | None:
        # None: the library's default, runs/finetunes/<new name>
        return finetune_folder(source, self.finetune_root) if self.finetune_root else None

    def finetune(
        self, epochs: float, learning_rate: float, unfreeze_layers: float, progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        """Generator: fine-tune the transfer model in a worker thread; yields the status, live
        curves, then both reports and confusion matrices, and the "Use this model" button's state."""
        epochs, learning_rate, unfreeze_layers = _finetune_inputs(epochs, learning_rate, unfreeze_layers)
        source = self.registry.path("transfer")
        if source is None:
            raise _user_error("There is no transfer model to fine-tune on this server.", "No model")
        if self.finetune_data() is None:
            raise _user_error(
                "No dataset to fine-tune on: the checkpoint's dataset is not on this machine. "
                "Start the app with --data DIR or set ANIMALCLS_DATA=DIR.", "No dataset")
        data_dir, out_dir = self.data_dir, self._out_dir(source)
        self._wait_ready()

        def target(hooks: Any) -> Any:
            from animalcls.finetune import finetune

            return finetune(source, data_dir=data_dir, epochs=epochs, learning_rate=learning_rate,
                            unfreeze_layers=unfreeze_layers, out_dir=out_dir, hooks=hooks)

        try:
            job = self.runner.start(target, epochs, meta={"source": source})
        except BusyError as exc:
            raise _user_error(str(exc), "Busy") from None
        name = read_manifest(source)["name"]
        yield (
            f"**Fine-tuning {name}**: starting…", _curves({}, name), self.report_frame(views.evaluation_of(source)),
            views.confusion_image(source), self.report_frame(None), None, gr.update(interactive=False),
        )
        skip = gr.skip()
        drawn = 0
        for snapshot in job.watch():
            fraction = snapshot.fraction()
            progress(fraction if fraction is not None else 0.0, desc=snapshot.describe())
            curves = skip
            if snapshot.epochs_done != drawn:
                drawn, curves = snapshot.epochs_done, _curves(snapshot.history, name)
            yield (_status(name, snapshot, job.cancel_event.is_set()), curves, skip, skip, skip, skip, skip)
        if job.error is not None:
            if isinstance(job.error, errors.Cancelled):  # stopped before an epoch finished: nothing saved
                yield (_cancelled_status(job.error), skip, skip, skip, skip, skip, gr.update(interactive=False))
                return
            if isinstance(job.error, AnimalclsError):
                raise _user_error(f"The fine-tune failed: {job.error}", "Fine-tune failed")
            raise _user_error(f"The fine-tune failed: {type(job.error).__name__}: {job.error}", "Fine-tune failed")
        result = job.result
        yield (
            _final_status(name, result, source), _curves(result.history or {}, f"{name} fine-tuned"), skip, skip,
            self.report_frame(result.evaluation), _result_confusion(result), gr.update(interactive=True),
        )

    def cancel_finetune(self) -> str:
        if self.runner.cancel():
            return "**Cancelling:** the fine-tune stops after the current batch and keeps only the epochs that finished."
        return "No fine-tune is running."

    def use_model(self) -> tuple[Any, ...]:
        """Serve the last finished fine-tune on its side of the Classify tab, for every session."""
        job = self.runner.last_success
        if job is None or job.running or job.result is None or not getattr(job.result, "path", None):
            raise _user_error("No fine-tuned model yet: run a fine-tune to the end first.", "Nothing to use")
        self._wait_ready()
        kind = self.registry.use(Path(job.result.path))
        message = (
            f"**Now classifying with** `{job.result.path}` on the {kind} side, for every user of this server "
            "until it restarts (or *Restore original models* is pressed)."
        )
        return (message, *self.model_views())

    def restore_models(self) -> tuple[Any, ...]:
        self.registry.reset()
        return ("Restored the original models.", *self.model_views())

    # ----- Examples -----
    def example_photos(self) -> tuple[list[str], list[str]]:
        """Test-split photos of each checkpoint's dataset (when on this machine), and the
        photos a user put in examples/."""
        folders = [self.registry.path(kind) for kind in ("transfer", "scratch")]
        return views.held_out_photos(folders), views.folder_photos(self.examples_dir)

    # ----- Layout -----


def _finetune_inputs(epochs: Any, learning_rate: Any, unfreeze_layers: Any) -> tuple[int, float, int]:
    try:
        epochs, learning_rate, unfreeze = int(epochs), float(learning_rate), int(unfreeze_layers or 0)
    except (TypeError, ValueError):
        raise _user_error("Epochs and unfrozen layers must be whole numbers; the learning rate a number.",
                          "Bad settings") from None
    if not 1 <= epochs <= 100:
        raise _user_error("Epochs must be between 1 and 100.", "Bad settings")
    if not 0 < learning_rate <= 1:
        raise _user_error("The learning rate must be above 0 and at most 1 (e.g. 0.001).", "Bad settings")
    if unfreeze < 0:
        raise _user_error("The number of layers to unfreeze cannot be negative.", "Bad settings")
    return epochs, learning_rate, unfreeze


def _curves(history: dict[str, list[float]], title: str) -> Any:
    from animalcls.plots import history_figure

    return history_figure(history, title)


def _status(name: str, snapshot: JobProgress, cancelling: bool) -> str:
    prefix = "**Cancelling** (stops after the current batch): " if cancelling else f"**Fine-tuning {name}**: "
    return prefix + snapshot.describe()


def _final_status(name: str, result: Any, source: Path) -> str:
    evaluation = getattr(result, "evaluation", None) or {}
    before = views.held_out_accuracy(source)
    after = evaluation.get("accuracy")
    accuracy = f"test accuracy **{after:.1%}**" if after is not None else "no test evaluation"
    if before is not None and after is not None:
        accuracy += f" (the starting model: {before:.1%})"
    epochs = len((getattr(result, "history", None) or {}).get("loss", []))
    head = f"**Cancelled**; kept the {epochs} finished epoch(s)." if result.cancelled else "**Done.**"
    return (
        f"{head} {name} fine-tuned in {result.seconds:.0f} s: {accuracy}. Saved as `{result.path}`. "
        "Press **Use this model** to classify with it."
    )


def _cancelled_status(error: BaseException) -> str:
    from animalcls.features import FeatureExtractionCancelled

    if isinstance(error, FeatureExtractionCancelled):
        return ("**Cancelled** while extracting backbone features, before any training: nothing was saved. "
                "The features computed so far stay cached, so the next run starts faster.")
    return "**Cancelled** before the first epoch finished: nothing was saved."


def _result_confusion(result: Any) -> Any:
    if getattr(result, "path", None) and Path(result.path).is_dir():
        image = views.confusion_image(Path(result.path))
        if image is not None:
            return image
    evaluation = getattr(result, "evaluation", None)
    if evaluation:
        from animalcls.plots import confusion_figure

        return views.figure_image(confusion_figure(evaluation["confusion_matrix"], evaluation["class_names"]))
    return None
