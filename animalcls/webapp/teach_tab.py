"""The Fine-tune tab's "Teach" panel: name a class, drop photos (or use the webcam), train both
models' heads at once, then classify the next photo with both taught models side by side.

Everything a visitor teaches lives in their own gr.State (animalcls.webapp.teach_session.TeachSession):
another visitor never sees it, and nothing is written on the server. `build_teach_section`
is called inside the Fine-tune tab; the handlers are thin wrappers around teach_session.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.serving.inference import load_image
from animalcls.store.checkpoints import KINDS
from animalcls.webapp.inputs import UnusableUpload, UploadedImage
from animalcls.webapp.teach_session import TeachLimits, TeachSession, classify, teach_sides

API_NAMES = ("teach_add", "teach_train", "teach_classify", "teach_clear")
STATE_TTL_S = 3600  # a session's photos and heads are dropped an hour after its last use


def _error(message: str, title: str = "Teach") -> gr.Error:
    return gr.Error(message, title=title, print_exception=False)  # plain text: API clients read it as is


class TeachPanel:
    """Handlers of the Teach panel; `app` is the AnimalApp (for the models each side serves)."""

    def __init__(self, app: Any, limits: TeachLimits) -> None:
        self.app, self.limits = app, limits

    def sides(self) -> dict[str, Any]:
        return {kind: self.app.registry.path(kind) for kind in KINDS}

    def base_classes(self) -> list[str]:
        from animalcls.store.checkpoints import read_manifest

        return [c for folder in self.sides().values() if folder for c in read_manifest(folder)["class_names"]]

    def add(self, session: TeachSession, name: str, files: list[str] | None, webcam: str | None) -> tuple[Any, ...]:
        if isinstance(webcam, UnusableUpload):
            raise _error(f"The webcam photo is not usable: {webcam}", "Not a usable image")
        uploads = [*(files or []), *([webcam] if webcam else [])]
        if not uploads:
            raise _error("Drop one or more photos (or take one with the webcam) first.")
        try:
            notes = session.add(name, uploads, self.limits, self.base_classes())
        except AnimalclsError as exc:
            raise _error(str(exc)) from None
        text = f"{session.count()} photo(s) in this session (at most {self.limits.max_photos})."
        if notes:
            text += "\n\n" + "\n".join(f"- {html.escape(note)}" for note in notes)
        return session, session.summary(), text, None, None

    def train(self, session: TeachSession, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        self.app.wait_ready()
        try:
            notes = teach_sides(session, self.sides(), on_step=lambda f, what: progress(f, desc=what))
        except AnimalclsError as exc:
            raise _error(str(exc)) from None
        return session, _trained_text(session, notes)

    def classify(self, session: TeachSession, image: str | None) -> tuple[Any, ...]:
        if isinstance(image, UnusableUpload):
            raise _error(str(image), "Not a usable image")
        if not session.taught:
            raise _error("Train first: add photos, then press Train both models.")
        if not image:
            raise _error("Upload a photo to classify.")
        try:
            picture = load_image(image)
        except ImageError as exc:
            raise _error(str(exc), "Not a usable image") from None
        results = classify(session, KINDS, picture)
        return tuple(results[kind] for kind in KINDS)

    def clear(self) -> tuple[Any, ...]:
        return TeachSession(), [], "Cleared: this session holds no photos.", None, None


def _trained_text(session: TeachSession, notes: list[str]) -> str:
    lines = []
    for kind, taught in session.taught.items():
        old = taught.scores.get("original_classes") if taught.scores else None
        lines.append(
            f"**{kind}**: {len(taught.class_names)} classes ({', '.join(taught.class_names)}), "
            f"trained in {taught.seconds.get('total', 0):.1f} s"
            + (f"; original classes {old['accuracy']:.1%} on their test photos" if old else "")
            + "."
        )
    return "\n\n".join([*lines, *(f"- {html.escape(n)}" for n in notes)]) or "Nothing was taught."


def build_teach_section(app: Any, limits: TeachLimits | None = None) -> TeachPanel:
    """The panel's components and events; call inside the Fine-tune tab of the Blocks."""
    panel = TeachPanel(app, limits or TeachLimits())
    gr.Markdown(
        "## Teach it your own photos\nName a class (a new animal, or one the models know), add a few "
        "photos, repeat for more classes, then train both models at once. Only the heads train, on "
        "the stored features of the original photos plus yours: seconds on a CPU. What you teach stays "
        f"in your browser session (at most {panel.limits.max_photos} photos of up to "
        f"{panel.limits.max_mb:g} MB) and is never saved on the server.",
        elem_id="teach-intro",
    )
    state = gr.State(TeachSession(), time_to_live=STATE_TTL_S)
    with gr.Row(equal_height=False):
        with gr.Column():
            name = gr.Textbox(label="Class name", placeholder="e.g. dog", max_length=40, elem_id="teach-name")
            files = gr.File(
                label="Photos", file_count="multiple", file_types=["image"], type="filepath", elem_id="teach-files"
            )
            webcam = UploadedImage(sources=["webcam"], type="filepath", label="or take one", elem_id="teach-webcam")
            with gr.Row():
                add = gr.Button("Add photos", elem_id="teach-add")
                clear = gr.Button("Clear", elem_id="teach-clear")
        with gr.Column():
            table = gr.Dataframe(
                headers=["class", "photos"], label="This session's photos", interactive=False, elem_id="teach-table"
            )
            notes = gr.Markdown(elem_id="teach-notes")
            train = gr.Button("Train both models", variant="primary", elem_id="teach-train")
            trained = gr.Markdown(elem_id="teach-status")
    with gr.Row(equal_height=False):
        photo = UploadedImage(
            sources=["upload", "webcam", "clipboard"],
            type="filepath",
            label="Next photo",
            elem_id="teach-photo",
            height=240,
        )
        labels = [
            gr.Label(
                num_top_classes=5,
                label=f"taught {kind} model",
                elem_id=f"teach-label-{kind}",
                elem_classes=["teach-result"],
            )
            for kind in KINDS
        ]
    go = gr.Button("Classify with both taught models", elem_id="teach-classify")
    add.click(panel.add, [state, name, files, webcam], [state, table, notes, files, webcam], api_name="teach_add")
    train.click(
        panel.train, state, [state, trained], api_name="teach_train", concurrency_id="teach", concurrency_limit=1
    )
    go.click(panel.classify, [state, photo], labels, api_name="teach_classify", concurrency_id="classify")
    clear.click(panel.clear, None, [state, table, notes, files, webcam], api_name="teach_clear")
    return panel
