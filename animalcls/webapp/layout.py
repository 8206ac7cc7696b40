"""The web app's layout: the gr.Blocks with the Classify, Training and Fine-tune tabs, each
event wired to an AnimalApp handler (animalcls/webapp/handlers.py) under an explicit api_name.

Imported by app.build_demo(), not at app.py's import: `python app.py` checks its arguments and
starts loading the models before Gradio (about 3 s to import) is loaded.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from animalcls.core.settings import BUNDLED_DIR
from animalcls.store.checkpoints import KINDS
from animalcls.training.reports import REPORT_HEADERS
from animalcls.webapp import views
from animalcls.webapp.finetune_tab import build_finetune_section
from animalcls.webapp.handlers import AnimalApp
from animalcls.webapp.inputs import UploadedImage, checked_examples
from animalcls.webapp.lesson import lesson_figure, lesson_for, lesson_markdown
from animalcls.webapp.sessions import new_session
from animalcls.webapp.teach_session import TeachLimits
from animalcls.webapp.teach_tab import API_NAMES as TEACH_API_NAMES
from animalcls.webapp.teach_tab import build_teach_section
from animalcls.webapp.trust_view import build_cells_section

TITLE = "Animal classifier: trained from scratch vs transfer learning"
# Gradio's (frequency, age) in seconds: every 15 minutes, uploads and outputs older than an hour
# are deleted from its cache; all of this server's are deleted when it stops.
DELETE_CACHE = (900, 3600)
# Every event's api_name. Public (in the API docs): classify, model_info, finetune,
# cancel_finetune, use_model, restore_models and the Teach panel's teach_*; the others are UI
# plumbing, callable but undocumented.
API_NAMES = (
    "classify",
    "clear_results",
    "classify_upload",
    "load_test_example",
    "classify_test_example",
    "load_user_example",
    "classify_user_example",
    "model_info",
    "finetune",
    "cancel_finetune",
    "use_model",
    "restore_models",
    "classify_after_use",
    "classify_after_restore",
    "reclassify_heatmaps",
    "cell_tables",
    "cell_photos_scratch",
    "cell_photos_transfer",
    "disagreements",
    "end_session",  # private: the page closing (demo.unload)
    "show_answers",  # private, in the page only: scrolls to where the answers appear (below)
    "show_user_answers",
    "show_test_answers",
    "finetune_waiting",  # private: the Fine-tune tab's status and Cancel button around a run
    "finetune_ended",
    "finetune_failed",
    *TEACH_API_NAMES,
)

# Every event whose input is a photo, with the API data a client sends around it (State inputs
# are not sent): what the tests and benchmarks/bench_hostile_inputs.py probe with hostile payloads.
IMAGE_ENDPOINTS = {
    "classify": lambda image: [image, False],
    "classify_upload": lambda image: [image, False],
    "reclassify_heatmaps": lambda image: [image, True],
    "classify_test_example": lambda image: [image, True],
    "classify_user_example": lambda image: [image, False],
    "classify_after_use": lambda image: [image, False],
    "classify_after_restore": lambda image: [image, False],
    "teach_add": lambda image: ["dog", None, image],
    "teach_classify": lambda image: [image],
}

# Where the eye should be when the answers come: the top of the answers (the one warning goes
# there). On a phone they sit below the photo and the examples; Gradio 6.31's scroll_to_output
# does not scroll (its status tracker never receives the flag), so the page does it at the click.
SCROLL_TO_ANSWERS_JS = """() => {
    const top = document.querySelector('#scope-banner')?.getBoundingClientRect().top;
    if (top !== undefined && (top < 0 || top > window.innerHeight * 0.6)) {
        window.scrollTo({top: top + window.scrollY - 12, behavior: 'smooth'});
    }
}"""


def build_layout(handlers: AnimalApp, teach_limits: TeachLimits | None = None) -> gr.Blocks:
    """The Blocks: a notice, then the Classify, Training and Fine-tune tabs, wired to `handlers`."""
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        # This visitor's model choices and fine-tunes (animalcls.webapp.sessions): per browser
        # session or gradio_client Client, never shared.
        session = gr.State(new_session(), delete_callback=handlers.forget_session)
        gr.Markdown(f"# {TITLE}", elem_id="title")
        gr.Markdown(views.intro_markdown(handlers.registry.paths().values()), elem_id="intro")
        with gr.Accordion("How to read this", open=False, elem_id="how-to-read"):
            gr.Markdown(views.HOW_TO_READ)
        gr.Markdown(
            "\n\n".join(f"**Note:** {html.escape(n)}" for n in handlers.notices),
            visible=bool(handlers.notices),
            elem_id="notice",
        )
        with gr.Tabs():
            with gr.Tab("Classify", id="classify", elem_id="tab-classify"):
                classify_parts = _classify_tab(handlers, session)
            with gr.Tab("Training", id="training", elem_id="tab-training"):
                _lesson_section(lesson_for(handlers.registry.paths(), BUNDLED_DIR))
                training_parts = _training_tab()
                build_cells_section(handlers.cells, demo)
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                finetune_parts = build_finetune_section(handlers.finetune_tab, session)
                teach_panel = build_teach_section(handlers, teach_limits)
        view_outputs = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"], *training_parts]
        _model_choice_events(handlers, session, finetune_parts, view_outputs, classify_parts["refresh"])
        demo.load(
            handlers.model_views,
            session,
            view_outputs,
            api_name="model_info",
            concurrency_limit=None,
            show_progress="hidden",
        )
    demo.unload(handlers.end_session)  # the visitor's fine-tunes are no longer pinned
    list(demo.fns.values())[-1].api_visibility = "private"  # Gradio's unload; not an endpoint for clients
    demo.animalcls_app = handlers  # for tests and embedding
    demo.animalcls_teach = teach_panel
    return demo


def _model_choice_events(
    handlers: AnimalApp, session: gr.State, parts: dict[str, Any], views_out: list[Any], refresh: dict[str, Any]
) -> None:
    """Use this model / Restore (on the Fine-tune tab): every tab's views follow this session's models."""
    parts["use"].click(
        handlers.use_model,
        [parts["result"], session],
        [parts["status"], *views_out, session],
        api_name="use_model",
        concurrency_limit=None,
    ).success(api_name="classify_after_use", api_visibility="undocumented", **refresh)
    parts["restore"].click(
        handlers.restore_models,
        session,
        [parts["status"], *views_out, session],
        api_name="restore_models",
        concurrency_limit=None,
    ).success(api_name="classify_after_restore", api_visibility="undocumented", **refresh)


def _classify_tab(handlers: AnimalApp, session: gr.State) -> dict[str, Any]:
    info, labels, heatmaps = {}, {}, {}
    gr.Markdown(handlers.known_classes(), elem_id="known-classes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            image = UploadedImage(
                sources=["upload", "webcam", "clipboard"],
                type="filepath",
                image_mode=None,
                label="Your photo",
                elem_id="classify-image",
                height=320,
            )
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            show_heatmaps = gr.Checkbox(
                False, label="Show where each model looked (heatmaps)", elem_id="heatmap-toggle"
            )
        with gr.Column(scale=3):
            banner = gr.Markdown(elem_id="scope-banner")  # the one warning, where the answers appear
            with gr.Row(equal_height=False):
                for kind in KINDS:
                    with gr.Column(min_width=240, elem_classes=["result-side"]):
                        info[kind] = gr.Markdown(handlers.header(kind), elem_id=f"info-{kind}")
                        labels[kind] = gr.Label(
                            num_top_classes=5,
                            label=f"{views.side_title(kind)}: how sure",
                            show_label=False,
                            elem_id=f"label-{kind}",
                            elem_classes=["result-label"],
                        )
            # Their own row, so the two pictures line up whatever the headers above them say.
            with gr.Row(equal_height=True):
                for kind in KINDS:
                    heatmaps[kind] = gr.Image(
                        type="filepath",
                        visible=False,
                        interactive=False,
                        elem_id=f"heatmap-{kind}",
                        elem_classes=["heatmap"],
                        buttons=["fullscreen"],
                        min_width=200,
                    )
            verdict = gr.Markdown(elem_id="verdict")
            scope_verdict = gr.JSON(visible=False, label="none-of-the-five verdict", elem_id="scope-verdict")
    outputs = [
        info["scratch"],
        labels["scratch"],
        info["transfer"],
        labels["transfer"],
        verdict,
        banner,
        scope_verdict,
        heatmaps["scratch"],
        heatmaps["transfer"],
    ]
    events = dict(
        fn=handlers.classify,
        inputs=[image, show_heatmaps, session],
        outputs=outputs,
        concurrency_id="classify",
        concurrency_limit=2,
    )
    # After an upload, a model swap or the heatmap toggle: the photo (cleared when unusable) and its results, or none.
    refresh = {**events, "fn": handlers.classify_new, "outputs": [image, *outputs]}
    # A missing photo is one message by the photo (the validator), not an error on every output.
    # The page scrolls to the answers (and the warning above them) when they come: on a phone
    # they are below the photo and the examples.
    button.click(api_name="classify", validator=handlers.validate_photo, **events)
    button.click(None, js=SCROLL_TO_ANSWERS_JS, api_name="show_answers", api_visibility="private")
    # Turning the heatmaps on or off answers the photo on the page again.
    show_heatmaps.change(api_name="reclassify_heatmaps", api_visibility="undocumented", **refresh)
    # A new photo first clears the previous answer (so an error never sits above stale
    # results), then is classified; removing the photo just clears.
    gr.on(
        [image.upload, image.clear],
        handlers.clear_results,
        session,
        outputs,
        api_name="clear_results",
        api_visibility="undocumented",
        queue=False,
        show_progress="hidden",
    ).then(api_name="classify_upload", api_visibility="undocumented", **refresh)
    test_photos, user_photos = handlers.example_photos()
    galleries = (
        # The shipped photos first: on a Space (no dataset) they are the only ones. Thumbnails,
        # captioned by the page's style (views.page_css) from their file names.
        (user_photos, "user", "Examples: click one (freely licensed photos, credited in the app's files)"),
        (test_photos, "test", "Photos from the test split of the models' dataset (never used in training)"),
    )
    for photos, name, label in galleries:
        if photos:
            examples = checked_examples(
                gr.Examples(
                    [[p] for p in photos],
                    inputs=image,
                    label=label,
                    examples_per_page=20,
                    cache_examples=False,
                    api_name=f"load_{name}_example",
                    api_visibility="undocumented",
                    elem_id=f"examples-{name}",
                )
            )
            # Clicking a photo loads it, then classifies it (in the same concurrency group).
            examples.load_input_event.then(api_name=f"classify_{name}_example", api_visibility="undocumented", **events)
            examples.dataset.click(
                None, js=SCROLL_TO_ANSWERS_JS, api_name=f"show_{name}_answers", api_visibility="private"
            )
    return {
        "image": image,
        "info": info,
        "labels": labels,
        "verdict": verdict,
        "banner": banner,
        "heatmaps": heatmaps,
        "refresh": refresh,
    }


def _lesson_section(lesson: dict[str, Any] | None) -> None:
    """What transfer learning buys, at the top of the Training tab (bundled pair only)."""
    if lesson is None:
        return
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=320):
            gr.Markdown(lesson_markdown(lesson), elem_id="lesson")
        with gr.Column(scale=2, min_width=320):
            gr.Plot(lesson_figure(lesson), show_label=False, format="png", elem_id="lesson-chart")


def _training_tab() -> list[Any]:
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
                history = gr.Image(
                    type="filepath",
                    label="Training vs validation, per metric",
                    show_label=False,
                    interactive=False,
                    elem_id=f"history-{kind}",
                    buttons=["download", "fullscreen"],
                )
                gr.Markdown("**Confusion matrix (test split)**")
                confusion = gr.Image(
                    type="filepath",
                    label="Confusion matrix (test split)",
                    show_label=False,
                    interactive=False,
                    elem_id=f"confusion-{kind}",
                    buttons=["download", "fullscreen"],
                )
                report = gr.Dataframe(
                    headers=REPORT_HEADERS,
                    label="Classification report (test split)",
                    interactive=False,
                    elem_id=f"report-{kind}",
                )
                parts[kind] = [facts, history, confusion, report]
    return [*parts["scratch"], *parts["transfer"]]
