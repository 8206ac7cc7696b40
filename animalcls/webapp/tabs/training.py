"""The Training tab: what transfer learning buys (the bundled pair at a glance), then how each of
this visitor's models was trained: facts, curves, confusion matrix and report. Its handlers
(`TrainingTab`) read the models from the visitor's session; the photos behind the numbers are
the section in animalcls.webapp.tabs.cells."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core.errors import AnimalclsError
from animalcls.store.checkpoints import KINDS
from animalcls.training.reports import REPORT_HEADERS
from animalcls.webapp import views
from animalcls.webapp.lesson import lesson_figure, lesson_markdown
from animalcls.webapp.sessions import SessionModels, session_of


class TrainingTab:
    """The Training tab's handlers: `sessions` says which models a visitor uses; plots drawn for
    folders without their own PNGs go to `render_dir`."""

    def __init__(self, sessions: SessionModels, render_dir: Path) -> None:
        self.sessions, self.render_dir = sessions, render_dir

    def views(self, session: Any = None) -> tuple[Any, ...]:
        """Per side: facts, curves, confusion matrix, report. Pictures are files (the checkpoint's
        own PNGs), never images drawn per request."""
        paths = self.sessions.paths(session_of(session))
        values: list[Any] = []
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


def build_training_tab(lesson: dict[str, Any] | None) -> list[Any]:
    """The tab's components, inside the current gr.Tab: what transfer learning buys (bundled pair
    only), then per side its facts, curves, confusion matrix and report. Returns those per-side
    outputs, in `TrainingTab.views` order, for the layout to refresh with the session's models."""
    _lesson_section(lesson)
    parts: dict[str, list[Any]] = {}
    gr.Markdown(
        "How each model was trained: curves per metric (training vs validation), the confusion matrix "
        "and classification report on the held-out test split, and the facts from its manifest."
    )
    with gr.Row(equal_height=False):
        for kind in KINDS:
            with gr.Column(min_width=320):
                gr.Markdown(f"## {kind.capitalize()} model")
                facts = gr.Markdown(elem_id=f"facts-{kind}")
                # Captions as Markdown: an image's own label would cover the top of the plot.
                gr.Markdown("**Training vs validation, per metric**")
                history = figure_image("Training vs validation, per metric", f"history-{kind}")
                gr.Markdown("**Confusion matrix (test split)**")
                confusion = figure_image("Confusion matrix (test split)", f"confusion-{kind}")
                report = report_table(f"report-{kind}")
                parts[kind] = [facts, history, confusion, report]
    return [*parts["scratch"], *parts["transfer"]]


def figure_image(label: str, elem_id: str) -> gr.Image:
    """A plot shown as a picture file, its label for screen readers only (a caption in Markdown
    above it: an image's own label would cover the top of the plot)."""
    return gr.Image(
        type="filepath",
        label=label,
        show_label=False,
        interactive=False,
        elem_id=elem_id,
        buttons=["download", "fullscreen"],
    )


def report_table(elem_id: str) -> gr.Dataframe:
    """A model's classification report on the test split (views.report_frame fills it)."""
    return gr.Dataframe(
        headers=REPORT_HEADERS, label="Classification report (test split)", interactive=False, elem_id=elem_id
    )


def _lesson_section(lesson: dict[str, Any] | None) -> None:
    """What transfer learning buys, at the top of the Training tab (bundled pair only)."""
    if lesson is None:
        return
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            gr.Markdown(lesson_markdown(lesson), elem_id="lesson")
        with gr.Column(scale=2, min_width=320):
            gr.Plot(lesson_figure(lesson), show_label=False, format="png", elem_id="lesson-chart")
