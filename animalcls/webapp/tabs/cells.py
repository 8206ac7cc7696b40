"""The Training tab's "photos behind the numbers" section: a confusion table per model (click a
cell for its test photos, with both models' predictions) and the photos the two models disagree
on. Its handlers (`CellView`) follow each visitor's current models."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.errors import AnimalclsError
from animalcls.store.checkpoints import KINDS
from animalcls.trust.cells import SplitPredictions, disagreements, recorded_confusion, split_predictions, true_labels
from animalcls.webapp.sessions import SessionModels, session_of
from animalcls.webapp.temp import TempImages
from animalcls.webapp.views import dataset_root_of

GALLERY_LIMIT = 60  # photos shown per cell


class CellView:
    """Handlers of the Training tab's "photos behind the numbers" section, for the models this
    visitor's session uses (`sessions`: after *Use this model* the tables are the fine-tune's)."""

    def __init__(self, sessions: SessionModels, wait_ready: Callable[[], None], images: TempImages) -> None:
        self.sessions, self.wait_ready, self.images = sessions, wait_ready, images
        self._lock = threading.Lock()  # one computation of the test-split predictions at a time

    def paths(self, session: Any = None) -> dict[str, Path | None]:
        return self.sessions.paths(session_of(session))

    @staticmethod
    def has_photos(paths: dict[str, Path | None]) -> bool:
        return any(dataset_root_of(paths[kind]) for kind in KINDS)

    def tables(self, session: Any = None) -> tuple[Any, ...]:
        """(what the section says, a confusion table per side)."""
        paths = self.paths(session)
        if self.has_photos(paths):
            intro = (
                "Click a cell of a table (true class in rows, predicted class in columns) to see those test "
                "photos with both models' predictions; a class name shows all of its photos."
            )
        else:
            intro = (
                "**The test photos are not on this machine** (the dataset the models were trained on is "
                "absent), so the tables show the counts only."
            )
        return (intro, *(_table(paths[kind]) for kind in KINDS))

    def refresh(self, session: Any = None) -> tuple[Any, ...]:
        """After a model swap: the new models' tables, and no photos of the old ones."""
        return (*self.tables(session), "", [])

    def select(self, kind: str) -> Callable[..., tuple[Any, Any]]:
        # gr.EventData, not gr.SelectData: SelectData fails inside Gradio, with no message, on an API
        # call whose event data lacks "index" or "value".
        def handler(evt: gr.EventData, session: Any = None, progress: gr.Progress = gr.Progress()) -> tuple[Any, Any]:
            data = evt._data if isinstance(evt._data, dict) else {}
            cell = _cell_index(data.get("index"))
            if cell is None:  # an API caller's index that no click makes: answered, not a traceback
                return "Click a cell of the table.", []
            row, col = cell
            return self.cell(kind, row, col - 1 if col > 0 else None, session, progress)

        return handler

    def cell(
        self, kind: str, true: int, predicted: int | None, session: Any = None, progress: Any = None
    ) -> tuple[str, Any]:
        """(caption, gallery) of the test photos of class `true` that `kind` predicted as
        `predicted` (None: any)."""
        paths = self.paths(session)
        recorded = recorded_confusion(paths[kind])
        if recorded is None:
            return f"The {kind} model has no test-split evaluation.", []
        names, matrix = recorded
        if not 0 <= true < len(names) or (predicted is not None and not 0 <= predicted < len(names)):
            return "Click a cell of the table.", []
        what = f"true **{names[true]}**" + (
            f", predicted by the {kind} model as **{names[predicted]}**" if predicted is not None else ""
        )
        count = matrix[true][predicted] if predicted is not None else sum(matrix[true])
        if not self.has_photos(paths):
            return f"{count} test photos: {what}. The photos are not on this machine.", []
        predictions = self._predictions(paths, progress)
        if kind not in predictions:
            return f"{count} test photos: {what}. The {kind} model's photos could not be read.", []
        files = [predictions[kind].files[i] for i in predictions[kind].cell(true, predicted)]
        return self._gallery(f"{len(files)} test photos: {what}.", files, predictions, paths)

    def disagree(self, session: Any = None, progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:
        """(caption, gallery) of the test photos where scratch and transfer predict differently."""
        paths = self.paths(session)
        if not self.has_photos(paths):
            return "The test photos are not on this machine, so the photos the models disagree on cannot be shown.", []
        predictions = self._predictions(paths, progress)
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
        return self._gallery(caption, files, predictions, paths)

    def _predictions(self, paths: dict[str, Path | None], progress: Any) -> dict[str, SplitPredictions]:
        self.wait_ready()
        out: dict[str, SplitPredictions] = {}
        with self._lock:
            for kind in KINDS:
                folder = paths[kind]
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

    def _gallery(
        self,
        caption: str,
        files: list[str],
        predictions: dict[str, SplitPredictions],
        paths: dict[str, Path | None],
    ) -> tuple[str, Any]:
        roots = {k: dataset_root_of(paths[k]) for k in predictions}
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


def _table(folder: Path | None) -> Any:
    import pandas as pd

    recorded = recorded_confusion(folder)
    if recorded is None:
        return pd.DataFrame({"true \\ predicted": []})
    names, matrix = recorded
    return pd.DataFrame([[n, *row] for n, row in zip(names, matrix)], columns=["true \\ predicted", *names])


def _cell_index(index: Any) -> tuple[int, int] | None:
    """(row, column) of a table click: [row, col] from the page, a bare row from older clients;
    None for anything else (text, fractions, booleans, NaN)."""
    cell = list(index) if isinstance(index, (list, tuple)) else [index, 0]
    if len(cell) != 2 or not all(type(i) is int for i in cell):
        return None
    return cell[0], cell[1]


def build_cells_section(view: CellView, demo: gr.Blocks, session: gr.State) -> list[Any]:
    """The Training tab's section: a confusion table per model (click a cell), a button for the
    photos the models disagree on, and one gallery. Returns the outputs of `CellView.refresh`,
    for the layout to refresh after a model swap."""
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
    photos = view.has_photos(view.paths())
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
            session,
            [caption, gallery],
            api_name=f"cell_photos_{kind}",
            api_visibility="undocumented",
            concurrency_id="cells",
        )
    disagree.click(
        view.disagree,
        session,
        [caption, gallery],
        api_name="disagreements",
        api_visibility="undocumented",
        concurrency_id="cells",
    )
    demo.load(
        view.tables,
        session,
        [intro, *tables.values()],
        api_name="cell_tables",
        api_visibility="undocumented",
        show_progress="hidden",
    )
    return [intro, *tables.values(), caption, gallery]
