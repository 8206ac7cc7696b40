"""The Fine-tune tab's "Teach" panel: name a class, drop photos (or use the webcam), train both
models' heads at once, classify the next photo with both taught models side by side, and use
them on the Classify tab.

The photos live in the visitor's own gr.State (animalcls.webapp.tabs.teach_session.TeachSession):
another visitor never sees them. The taught models are saved into the fine-tune store and
owned by the visitor's session like fine-tunes (`/teach_train` returns the transfer side's
name last, for `/use_model`). `build_teach_section` is called inside the Fine-tune tab; the
handlers are thin wrappers around teach_session.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import gradio as gr

from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.serving.inference import load_image
from animalcls.store.checkpoints import KINDS
from animalcls.webapp.inputs import UnusableUpload, UploadedImage, user_error
from animalcls.webapp.sessions import SessionModels, session_key, session_of
from animalcls.webapp.state import ModelRegistry
from animalcls.webapp.tabs.teach_session import (
    TeachLimits,
    TeachSession,
    classify,
    new_classes,
    save_taught_sides,
    teach_sides,
)
from animalcls.webapp.views import side_title

# teach_classify_after_train and teach_classify_new (a new photo) are private: the page's own.
API_NAMES = (
    "teach_buttons_after_train",
    "teach_buttons_after_add",
    "teach_buttons_after_clear",
    "teach_add",
    "teach_train",
    "teach_classify",
    "teach_clear",
    "teach_classify_after_train",
    "teach_classify_new",
)
STATE_TTL_S = 3600  # a session's photos and heads are dropped an hour after its last use


class TeachPanel:
    """Handlers of the Teach panel. `registry` holds the server's models (what each side is
    taught from), `sessions` each visitor's models and, as `sessions.store`, the stored ones;
    `wait_ready` blocks until TensorFlow is imported (saving a taught model needs Keras)."""

    def __init__(
        self, registry: ModelRegistry, sessions: SessionModels, wait_ready: Callable[[], None], limits: TeachLimits
    ) -> None:
        self.registry, self.sessions, self.wait_ready, self.limits = registry, sessions, wait_ready, limits

    def sides(self) -> dict[str, Any]:
        return {kind: self.registry.path(kind) for kind in KINDS}

    def base_classes(self) -> list[str]:
        from animalcls.store.checkpoints import read_manifest

        return [c for folder in self.sides().values() if folder for c in read_manifest(folder)["class_names"]]

    def add(self, session: TeachSession, name: str, files: list[str] | None, webcam: str | None) -> tuple[Any, ...]:
        if isinstance(webcam, UnusableUpload):
            raise user_error(f"The webcam photo is not usable: {webcam}", "Not a usable image")
        uploads = [*(files or []), *([webcam] if webcam else [])]
        # What the visitor can fix is said beside the panel's table, the photos kept: no error toast.
        if not uploads:
            message = "**Not added:** drop one or more photos (or take one) first."
            return session, session.summary(), message, files, webcam
        try:
            notes = session.add(name, uploads, self.limits, self.base_classes())
        except AnimalclsError as exc:
            return session, session.summary(), f"**Not added:** {html.escape(str(exc))}", files, webcam
        text = f"{session.count()} photo(s) in this session (at most {self.limits.max_photos})."
        if notes:
            text += "\n\n" + "\n".join(f"- {html.escape(note)}" for note in notes)
        return session, session.summary(), text, None, None

    def train(
        self,
        session: TeachSession,
        models: Any = None,
        progress: gr.Progress = gr.Progress(),
        request: gr.Request = None,
    ) -> tuple[Any, ...]:
        """Teach both sides, then save them as this session's models: (teach state, what happened,
        the session's models, the taught transfer (else scratch) model's name for /use_model)."""
        self.wait_ready()
        try:
            notes = teach_sides(session, self.sides(), on_step=lambda f, what: progress(0.8 * f, desc=what))
        except AnimalclsError as exc:
            raise user_error(str(exc), "Teach") from None
        state, store = session_of(models), self.sessions.store
        crowded = store.crowded()
        if crowded:
            notes.append(f"Not saved for the Classify tab: {crowded}")
        else:
            progress(0.85, desc="saving the taught models")
            folders = save_taught_sides(session, store.root)
            taught = [folder.name for folder in folders.values()]
            state = store.pin({**state, "owned": [*state["owned"], *taught], "taught": taught}, session_key(request))
            store.prune(keep=list(folders.values()))
        name = session.saved.get("transfer") or session.saved.get("scratch") or ""
        return session, _trained_text(session, notes), state, name

    def classify_new(self, session: TeachSession, image: Any) -> tuple[Any, ...]:
        """A new photo in the panel: classified at once once both models are taught, else left blank."""
        if not image or isinstance(image, UnusableUpload) or not session.taught:
            return tuple(None for _ in KINDS)
        return self.classify(session, image)

    def classify(self, session: TeachSession, image: str | None) -> tuple[Any, ...]:
        if isinstance(image, UnusableUpload):
            raise user_error(str(image), "Not a usable image")
        if not session.taught:
            raise user_error("Train first: add photos, then press Train both models.", "Teach")
        if not image:
            raise user_error("Upload a photo to classify.", "Teach")
        try:
            picture = load_image(image)
        except ImageError as exc:
            raise user_error(str(exc), "Not a usable image") from None
        results = classify(session, KINDS, picture)
        return tuple(results[kind] for kind in KINDS)

    def buttons(self, session: TeachSession) -> tuple[Any, ...]:
        """Classify with the taught models once they exist; Use them once they are saved."""
        return gr.update(interactive=bool(session.taught)), gr.update(interactive=bool(session.saved))

    def clear(self) -> tuple[Any, ...]:
        return TeachSession(), [], "Cleared: this session holds no photos.", None, None, ""


def _trained_text(session: TeachSession, notes: list[str]) -> str:
    """What teaching did, in plain words: per model, what it knows now and what it kept."""
    lines = []
    for kind, taught in session.taught.items():
        new = new_classes(session, kind)
        old, before = taught.scores.get("original_classes"), taught.scores.get("original_classes_before")
        kept = (
            f" It still gets {old['accuracy']:.0%} of its {old['n']} test photos of the original animals right "
            f"({before:.0%} before)."
            if old and before is not None
            else ""
        )
        lines.append(f"**{side_title(kind)}** now knows {', '.join(new) or 'your photos'}.{kept}")
    if session.saved:
        lines.append("Press **Use the taught models** to classify with them on the Classify tab.")
    return "\n\n".join([*lines, COST_NOTE, *(f"- {html.escape(n)}" for n in notes)]) if lines else "Nothing was taught."


COST_NOTE = (
    "Why the two differ: the model trained from scratch only ever learned features that tell its five "
    "animals apart, so a new animal looks to it like one of them, and a few photos cannot change that. "
    "So that it does not start calling cats dogs, a new class may take at most 1% of its old training "
    "photos: it keeps what it knew and recognises few of the new animals. The transfer model's ImageNet "
    "features already tell hundreds of animals apart, so ten photos are enough."
)


def build_teach_section(panel: TeachPanel, models: gr.State) -> dict[str, Any]:
    """The panel's components and events; call inside the Fine-tune tab of the Blocks. Returns
    what the layout wires across tabs: the `use` button, the `status` it writes and the teach `state`."""
    gr.Markdown(
        "## Teach it your own photos\nName a class (a new animal, or one the models know), add a few "
        "photos, repeat for more classes, then train both models at once. Only their last layers learn, "
        "from what each model already saw in its training photos plus yours: seconds on a CPU. Your "
        f"photos stay in your browser session (at most {panel.limits.max_photos} photos of up to "
        f"{panel.limits.max_mb:g} MB); the taught models are yours alone and are removed like fine-tunes.",
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
            taught_name = gr.Textbox(visible=False, elem_id="teach-model-name")
            use = gr.Button("Use the taught models", elem_id="teach-use", interactive=False)
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
                label=f"{side_title(kind)}, taught",
                elem_id=f"teach-label-{kind}",
                elem_classes=["teach-result"],
            )
            for kind in KINDS
        ]
    go = gr.Button("Classify with both taught models", elem_id="teach-classify", interactive=False)
    inputs = [state, name, files, webcam]
    added = add.click(panel.add, inputs, [state, table, notes, files, webcam], api_name="teach_add")
    trained_event = train.click(
        panel.train,
        [state, models],
        [state, trained, models, taught_name],
        api_name="teach_train",
        concurrency_id="teach",
        concurrency_limit=1,
    )
    trained_event.success(
        panel.classify_new,
        [state, photo],
        labels,
        api_name="teach_classify_after_train",
        api_visibility="private",
        show_progress="hidden",
    )
    go.click(panel.classify, [state, photo], labels, api_name="teach_classify", concurrency_id="classify")
    photo.change(
        panel.classify_new,
        [state, photo],
        labels,
        api_name="teach_classify_new",
        api_visibility="private",
        concurrency_id="classify",
        show_progress="minimal",
    )
    cleared = clear.click(panel.clear, None, [state, table, notes, files, webcam, taught_name], api_name="teach_clear")
    for event, after in ((trained_event, "train"), (added, "add"), (cleared, "clear")):
        # Classify and Use only once both models are taught: before, they could only answer with an error.
        event.success(
            panel.buttons,
            state,
            [go, use],
            api_name=f"teach_buttons_after_{after}",
            api_visibility="private",
            show_progress="hidden",
        )
    return {"state": state, "use": use, "status": trained, "panel": panel}
