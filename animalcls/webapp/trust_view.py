"""The app's "when to trust an answer" parts: the none-of-the-five banner and verdict, the
Grad-CAM heatmaps under each model's result, and the Training tab's photos behind every
confusion-matrix cell (plus the photos where the two models disagree).

Images go to the page as files written here (a per-request overlay file, a cached thumbnail per
test photo), never as PIL objects: Gradio's PIL cache races between concurrent requests.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.atomic import write_atomic
from animalcls.core.errors import AnimalclsError
from animalcls.serving.inference import load_predictor
from animalcls.store.checkpoints import KINDS, read_manifest
from animalcls.trust import verdicts as trust
from animalcls.trust.cells import SplitPredictions, disagreements, recorded_confusion, split_predictions, true_labels
from animalcls.webapp.state import ModelRegistry
from animalcls.webapp.temp import private_folder
from animalcls.webapp.views import side_title

OVERLAY_SIDE = 448  # overlays are shown about 250 px wide: no need to blend a 12-megapixel photo
KEEP_OVERLAYS = 64  # overlay files kept on disk; older ones are deleted (Gradio has copied them by then)
GALLERY_LIMIT = 60  # photos shown per cell
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


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


# ------------------------------------------------------------------------ Classify tab


def known_classes_markdown(registry: ModelRegistry) -> str:
    """What the empty Classify tab says: which animals the models know."""
    names: list[str] = []
    for kind in ("transfer", "scratch"):
        folder = registry.path(kind)
        try:
            names += [n for n in (read_manifest(folder)["class_names"] if folder else []) if n not in names]
        except AnimalclsError:
            continue
    if not names:
        return ""
    count = NUMBERS.get(len(names), str(len(names)))
    return (
        f"They know **{count} animals: {', '.join(names)}**. Shown anything else, they still pick one of "
        f"the {count}, so each photo is checked too, with a warning when it may show none of them."
    )


def answer_sides(folders: dict[str, Path], picture: Any, heatmaps: bool) -> dict[str, trust.Answer | str]:
    """Each side's answer for one photo (one forward pass per model), or why it failed. The
    transfer model answers first: its pooled features are the ImageNet ones scratch's detector needs."""
    judges: dict[str, trust.Judge | str] = {}
    for kind, folder in folders.items():  # the folders of one registry snapshot
        try:
            judges[kind] = trust.Judge(load_predictor(folder))
        except AnimalclsError as exc:
            judges[kind] = str(exc)
    ordered = sorted(judges, key=lambda k: not (isinstance(judges[k], trust.Judge) and judges[k].gives_imagenet))
    out: dict[str, trust.Answer | str] = {}
    imagenet = None
    for kind in ordered:
        judge = judges[kind]
        if isinstance(judge, str):
            out[kind] = judge
            continue
        try:
            if judge.needs_imagenet and imagenet is None:
                imagenet = trust.imagenet_features([picture])
            answers, pooled = judge.answer([picture], imagenet if judge.needs_imagenet else None, heatmaps)
        except AnimalclsError as exc:
            out[kind] = str(exc)
            continue
        out[kind] = answers[0]
        if judge.gives_imagenet and imagenet is None:
            imagenet = pooled
    return out


def untrusted_note(answer: trust.Answer | None) -> str:
    """Appended to a side's header: a small tag when its check flags the photo (the page dims that
    side's answer; the one warning above says why)."""
    if answer is None or answer.out_of_scope is None:
        return "\n\nThis model has no check for photos of other things." if answer else ""
    if answer.out_of_scope:
        return ' · <span class="side-flagged">⚠ a guess: not to be trusted</span>'
    return ""


def scope_thresholds(folders: Mapping[str, Path]) -> dict[str, float]:
    """kind -> the distance above which its none-of-the-five check warns (for the warning's details)."""
    out: dict[str, float] = {}
    for kind, folder in folders.items():
        try:
            detector, _ = trust.load_detector(folder, read_manifest(folder))
        except (AnimalclsError, OSError, ValueError):
            continue
        if detector is not None:
            out[kind] = float(detector.threshold)
    return out


def warning_markdown(
    answered: Mapping[str, trust.Answer], class_names: Sequence[str], limits: Mapping[str, float]
) -> str:
    """The ONE warning for a photo a model's check flags, with the scores behind a details toggle."""
    flagged = [k for k, a in answered.items() if a.out_of_scope]
    if not flagged:
        return ""
    count = NUMBERS.get(len(class_names), str(len(class_names)))
    who = "Both models" if len(flagged) == 2 else f"The {side_title(flagged[0]).lower()} model"
    scores = "".join(
        f"<li>{side_title(k)}: {a.scope_score:.2f}"
        + (f" (it warns above {limits[k]:.2f})" if k in limits else "")
        + (", flagged" if a.out_of_scope else "")
        + "</li>"
        for k, a in answered.items()
        if a.scope_score is not None
    )
    return (
        '<div class="scope-warning">\n\n'
        f"**⚠ This photo may show none of the {count} animals these models know** "
        f"({', '.join(class_names)}). {who} must still pick one, so the dimmed "
        f"answer{'s' if len(flagged) == 2 else ''} below {'are guesses' if len(flagged) == 2 else 'is a guess'}.\n\n"
        "<details><summary>Details</summary>Each model checks how far the photo is from the photos it was "
        f"trained on (a distance in its own features; higher is less alike):<ul>{scores}</ul></details>\n\n</div>"
    )


def trust_outputs(
    answers: dict[str, trust.Answer | str],
    picture: Any,
    heatmaps: bool,
    images: TempImages,
    class_names: Sequence[str],
    limits: Mapping[str, float] | None = None,
) -> tuple[Any, ...]:
    """(banner, verdict for the API, scratch heatmap, transfer heatmap)."""
    answered = {k: a for k, a in answers.items() if isinstance(a, trust.Answer)}
    banner = warning_markdown(answered, class_names, limits or {})
    checked = [a.out_of_scope for a in answered.values() if a.out_of_scope is not None]
    verdict = {"out_of_scope": any(checked) if checked else None, **{k: a.to_json() for k, a in answered.items()}}
    return (banner, verdict, *(_heatmap(kind, answered.get(kind), picture, heatmaps, images) for kind in KINDS))


def _heatmap(kind: str, answer: trust.Answer | None, picture: Any, heatmaps: bool, images: TempImages) -> Any:
    if not heatmaps or answer is None:
        return gr.update(value=None, visible=False)
    if answer.heatmap is None:
        return gr.update(value=None, visible=True, label=f"{side_title(kind)}: no heatmap for this model")
    from animalcls.trust.explain import overlay

    small = picture.copy()
    small.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    label = f"{side_title(kind)}: where it looked for “{answer.label}”"
    return gr.update(value=images.overlay(overlay(small, answer.heatmap)), visible=True, label=label)


def cleared_trust_outputs() -> tuple[Any, ...]:
    return ("", None, *(gr.update(value=None, visible=False) for _ in KINDS))


# ------------------------------------------------------------------------ Training tab


class CellView:
    """Handlers of the Training tab's "photos behind the numbers" section."""

    def __init__(self, registry: ModelRegistry, wait_ready: Callable[[], None], images: TempImages) -> None:
        self.registry, self.wait_ready, self.images = registry, wait_ready, images
        self._lock = threading.Lock()  # one computation of the test-split predictions at a time

    def has_photos(self) -> bool:
        from animalcls.webapp.views import dataset_root_of

        return any(dataset_root_of(self.registry.path(kind)) for kind in KINDS)

    def tables(self) -> tuple[Any, ...]:
        """(what the section says, a confusion table per side)."""
        if self.has_photos():
            intro = (
                "Click a cell of a table (true class in rows, predicted class in columns) to see those test "
                "photos with both models' predictions; a class name shows all of its photos."
            )
        else:
            intro = (
                "**The test photos are not on this machine** (the dataset the models were trained on is "
                "absent), so the tables show the counts only."
            )
        return (intro, *(self._table(kind) for kind in KINDS))

    def _table(self, kind: str) -> Any:
        import pandas as pd

        recorded = recorded_confusion(self.registry.path(kind))
        if recorded is None:
            return pd.DataFrame({"true \\ predicted": []})
        names, matrix = recorded
        return pd.DataFrame([[n, *row] for n, row in zip(names, matrix)], columns=["true \\ predicted", *names])

    def select(self, kind: str) -> Callable[..., tuple[Any, Any]]:
        # gr.EventData, not gr.SelectData: SelectData fails inside Gradio, with no message, on an API
        # call whose event data lacks "index" or "value".
        def handler(evt: gr.EventData, progress: gr.Progress = gr.Progress()) -> tuple[Any, Any]:
            data = evt._data if isinstance(evt._data, dict) else {}
            cell = _cell_index(data.get("index"))
            if cell is None:  # an API caller's index that no click makes: answered, not a traceback
                return "Click a cell of the table.", []
            row, col = cell
            return self.cell(kind, row, col - 1 if col > 0 else None, progress)

        return handler

    def cell(self, kind: str, true: int, predicted: int | None, progress: Any = None) -> tuple[str, Any]:
        """(caption, gallery) of the test photos of class `true` that `kind` predicted as
        `predicted` (None: any)."""
        recorded = recorded_confusion(self.registry.path(kind))
        if recorded is None:
            return f"The {kind} model has no test-split evaluation.", []
        names, matrix = recorded
        if not 0 <= true < len(names) or (predicted is not None and not 0 <= predicted < len(names)):
            return "Click a cell of the table.", []
        what = f"true **{names[true]}**" + (
            f", predicted by the {kind} model as **{names[predicted]}**" if predicted is not None else ""
        )
        count = matrix[true][predicted] if predicted is not None else sum(matrix[true])
        if not self.has_photos():
            return f"{count} test photos: {what}. The photos are not on this machine.", []
        predictions = self._predictions(progress)
        if kind not in predictions:
            return f"{count} test photos: {what}. The {kind} model's photos could not be read.", []
        files = [predictions[kind].files[i] for i in predictions[kind].cell(true, predicted)]
        return self._gallery(f"{len(files)} test photos: {what}.", files, predictions)

    def disagree(self, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        """(caption, gallery) of the test photos where scratch and transfer predict differently."""
        if not self.has_photos():
            return "The test photos are not on this machine, so the photos the models disagree on cannot be shown.", []
        predictions = self._predictions(progress)
        if len(predictions) < 2:
            return "Both models are needed (with their test photos on this machine) to compare them.", []
        files = disagreements(predictions["scratch"], predictions["transfer"])
        truth = true_labels(list(predictions.values()))
        by_file = {k: p.by_file() for k, p in predictions.items()}
        right = {k: sum(by_file[k][f][0] == truth[f] for f in files) for k in KINDS}
        caption = (
            f"The models disagree on **{len(files)}** of {len(predictions['transfer'].files)} test photos: "
            f"scratch is right on {right['scratch']}, transfer on {right['transfer']}, "
            f"neither on {len(files) - right['scratch'] - right['transfer']}."
        )
        return self._gallery(caption, files, predictions)

    def _predictions(self, progress: Any) -> dict[str, SplitPredictions]:
        self.wait_ready()
        out: dict[str, SplitPredictions] = {}
        with self._lock:
            for kind in KINDS:
                folder = self.registry.path(kind)
                if folder is None:
                    continue

                def tick(done: int, total: int | None, kind: str = kind) -> None:
                    if progress is not None and total:
                        progress(done / total, desc=f"{kind} model: predicting the test split (once)")

                try:
                    out[kind] = split_predictions(folder, tick)
                except (AnimalclsError, OSError):
                    continue
        return out

    def _gallery(self, caption: str, files: list[str], predictions: dict[str, SplitPredictions]) -> tuple[str, Any]:
        from animalcls.webapp.views import dataset_root_of

        roots = {k: dataset_root_of(self.registry.path(k)) for k in predictions}
        truth = true_labels(list(predictions.values()))
        by_kind = {k: p.by_file() for k, p in predictions.items()}
        items = []
        for rel in files[:GALLERY_LIMIT]:
            root = next((roots[k] for k in predictions if rel in by_kind[k] and roots[k]), None)
            if root is None or not (root / rel).is_file():
                continue
            said = [f"{k} {by_kind[k][rel][0]} {by_kind[k][rel][1]:.0%}" for k in KINDS if rel in by_kind.get(k, {})]
            items.append((self.images.thumbnail(str(root / rel)), f"true {truth[rel]} · " + " · ".join(said)))
        if len(files) > GALLERY_LIMIT:
            caption += f" Showing the first {GALLERY_LIMIT}."
        return caption, items


def _cell_index(index: Any) -> tuple[int, int] | None:
    """(row, column) of a table click: [row, col] from the page, a bare row from older clients;
    None for anything else (text, fractions, booleans, NaN)."""
    cell = list(index) if isinstance(index, (list, tuple)) else [index, 0]
    if len(cell) != 2 or not all(type(i) is int for i in cell):
        return None
    return cell[0], cell[1]


def build_cells_section(view: CellView, demo: gr.Blocks) -> dict[str, Any]:
    """The Training tab's section: a confusion table per model (click a cell), a button for the
    photos the models disagree on, and one gallery."""
    gr.Markdown("## The test photos behind the numbers")
    intro = gr.Markdown(elem_id="cells-intro")
    tables = {}
    with gr.Row(equal_height=False):
        for kind in KINDS:
            tables[kind] = gr.Dataframe(
                label=f"{kind} model: true class (rows) × predicted class (columns)",
                interactive=False,
                elem_id=f"cells-{kind}",
            )
    # Without the dataset (a Space) there are no photos to show: no button, no empty gallery.
    photos = view.has_photos()
    disagree = gr.Button("Show the test photos where the two models disagree", visible=photos, elem_id="cells-disagree")
    caption = gr.Markdown(elem_id="cells-caption")
    # Three columns: each caption (true class, both predictions) fits its tile without being cut.
    gallery = gr.Gallery(
        label="Test photos",
        columns=3,
        height=760,
        elem_id="cells-gallery",
        allow_preview=True,
        object_fit="contain",
        visible=photos,
    )
    for kind in KINDS:
        tables[kind].select(
            view.select(kind),
            None,
            [caption, gallery],
            api_name=f"cell_photos_{kind}",
            api_visibility="undocumented",
            concurrency_id="cells",
        )
    disagree.click(
        view.disagree,
        None,
        [caption, gallery],
        api_name="disagreements",
        api_visibility="undocumented",
        concurrency_id="cells",
    )
    demo.load(
        view.tables,
        None,
        [intro, *tables.values()],
        api_name="cell_tables",
        api_visibility="undocumented",
        show_progress="hidden",
    )
    return {"intro": intro, "tables": tables, "caption": caption, "gallery": gallery}
