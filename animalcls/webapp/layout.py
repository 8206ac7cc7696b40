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
from animalcls.webapp.handlers import AnimalApp
from animalcls.webapp.inputs import CheckedNumber, UploadedImage
from animalcls.webapp.lesson import lesson_figure, lesson_for, lesson_markdown
from animalcls.webapp.sessions import new_session
from animalcls.webapp.teach_session import TeachLimits
from animalcls.webapp.teach_tab import API_NAMES as TEACH_API_NAMES
from animalcls.webapp.teach_tab import build_teach_section
from animalcls.webapp.trust_view import build_cells_section
from animalcls.webapp.views import example_caption

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
    *TEACH_API_NAMES,
)


def _report_column(title: str, elem_prefix: str) -> tuple[gr.Dataframe, gr.Image]:
    """A column with a model's test-split report table and confusion matrix."""
    with gr.Column():
        gr.Markdown(f"### {title}")
        report = gr.Dataframe(
            headers=REPORT_HEADERS,
            label="Classification report (test split)",
            interactive=False,
            elem_id=f"{elem_prefix}-report",
        )
        confusion = gr.Image(
            type="filepath",
            label="Confusion matrix",
            show_label=False,
            interactive=False,
            elem_id=f"{elem_prefix}-confusion",
            buttons=["download", "fullscreen"],
        )
    return report, confusion


def checked_examples(examples: gr.Examples) -> gr.Examples:
    """An example gallery whose load endpoint answers an index it does not have with a message."""
    dataset = examples.dataset
    original = dataset.preprocess

    def preprocess(payload: Any) -> Any:
        count = len(dataset.raw_samples)
        if payload is not None and (type(payload) is not int or not 0 <= payload < count):
            raise gr.Error(
                f"No example {str(payload)[:40]!r}: choose a whole number from 0 to {count - 1}.",
                title="No such example",
                print_exception=False,
            )
        return original(payload)

    dataset.preprocess = preprocess  # type: ignore[method-assign]
    return examples


def build_layout(handlers: AnimalApp, teach_limits: TeachLimits | None = None) -> gr.Blocks:
    """The Blocks: a notice, then the Classify, Training and Fine-tune tabs, wired to `handlers`."""
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        # This visitor's model choices and fine-tunes (animalcls.webapp.sessions): per browser
        # session or gradio_client Client, never shared.
        session = gr.State(new_session(), delete_callback=handlers.forget_session)
        gr.Markdown(f"# {TITLE}")
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
                _finetune_tab(handlers, session, classify_parts, training_parts)
                teach_panel = build_teach_section(handlers, teach_limits)
        view_outputs = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"], *training_parts]
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


def _classify_tab(handlers: AnimalApp, session: gr.State) -> dict[str, Any]:
    info, labels, heatmaps = {}, {}, {}
    gr.Markdown(handlers.known_classes(), elem_id="known-classes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            image = UploadedImage(
                sources=["upload", "webcam", "clipboard"],
                type="filepath",
                image_mode=None,
                label="Photo (JPEG, PNG, GIF, BMP, WebP, TIFF; up to 50 MB)",
                elem_id="classify-image",
                height=320,
            )
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            show_heatmaps = gr.Checkbox(
                False, label="Show where each model looked (Grad-CAM heatmaps)", elem_id="heatmap-toggle"
            )
        with gr.Column(scale=3):
            banner = gr.Markdown(elem_id="scope-banner")
            with gr.Row(equal_height=False):
                for kind in KINDS:
                    with gr.Column(min_width=240):
                        info[kind] = gr.Markdown(handlers.header(kind), elem_id=f"info-{kind}")
                        labels[kind] = gr.Label(
                            num_top_classes=5, label=f"{kind} model: top 5", elem_id=f"label-{kind}"
                        )
                        heatmaps[kind] = gr.Image(
                            type="filepath",
                            visible=False,
                            interactive=False,
                            elem_id=f"heatmap-{kind}",
                            buttons=["fullscreen"],
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
    button.click(api_name="classify", **events)
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
        (test_photos, "test", "Photos from the test split of the models' dataset (never used in training)", None),
        # Thumbnails, not text captions (Gradio shows one or the other); the file names sort the
        # "none-*" photos last, as the label says.
        (
            user_photos,
            "user",
            "Example photos (freely licensed, see examples/CREDITS.md): " + ", ".join(_caption_groups(user_photos)),
            None,
        ),
    )
    for photos, name, label, captions in galleries:
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
                    example_labels=captions,
                )
            )
            # Clicking a photo loads it, then classifies it (in the same concurrency group).
            examples.load_input_event.then(api_name=f"classify_{name}_example", api_visibility="undocumented", **events)
    return {
        "image": image,
        "info": info,
        "labels": labels,
        "verdict": verdict,
        "banner": banner,
        "heatmaps": heatmaps,
        "refresh": refresh,
    }


def _caption_groups(photos: list[str]) -> list[str]:
    """ "2 cats", "3 none of the five"... in file-name order, for the examples' label."""
    counts: dict[str, int] = {}
    for photo in photos:
        answer = example_caption(photo).split(" (")[0]
        counts[answer] = counts.get(answer, 0) + 1
    return [f"{n} {answer}" for answer, n in counts.items()]


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


def _finetune_tab(
    handlers: AnimalApp, session: gr.State, classify_parts: dict[str, Any], training_parts: list[Any]
) -> None:
    gr.Markdown(handlers.finetune_intro(), elem_id="ft-intro")
    with gr.Row():
        epochs = CheckedNumber(
            value=min(3, handlers.max_epochs),
            label=f"Epochs (1-{handlers.max_epochs})",
            minimum=1,
            maximum=handlers.max_epochs,
            precision=0,
            elem_id="ft-epochs",
        )
        rate = CheckedNumber(value=1e-3, label="Learning rate", minimum=1e-7, maximum=1.0, elem_id="ft-lr")
        unfreeze = CheckedNumber(
            value=0,
            label=f"Unfreeze the top N backbone layers (0 = head only; at most {handlers.max_unfreeze} here)",
            minimum=0,
            maximum=handlers.max_unfreeze,
            precision=0,
            interactive=handlers.max_unfreeze > 0,
            elem_id="ft-unfreeze",
        )
    with gr.Row():
        run = gr.Button("Start fine-tune", variant="primary", elem_id="ft-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="ft-cancel")
        use = gr.Button("Use this model", interactive=False, elem_id="ft-use")
        restore = gr.Button("Restore original models", elem_id="ft-restore")
    status = gr.Markdown("Not running.", elem_id="ft-status")
    # The result this visitor is looking at: "Use this model" names it explicitly.
    result = gr.Textbox(label="Your fine-tuned model", interactive=False, elem_id="ft-result")
    # gr.Progress draws its bar over this strip, so it never hides the status text or the curves.
    bar = gr.HTML("", elem_id="ft-progress", min_height=72, padding=False)
    curves = gr.Plot(label="Training vs validation (updates after every epoch)", format="png", elem_id="ft-curves")
    with gr.Row(equal_height=False):
        start_report, start_confusion = _report_column("Starting model", "ft-start")
        new_report, new_confusion = _report_column("Fine-tuned model", "ft-new")
    # concurrency_limit=1: one fine-tune per server; Gradio's queue shows the others their place.
    run.click(
        handlers.finetune,
        [epochs, rate, unfreeze, session],
        [status, curves, start_report, start_confusion, new_report, new_confusion, result, use, session],
        api_name="finetune",
        concurrency_id="finetune",
        concurrency_limit=1,
        show_progress_on=[bar],
    )
    cancel.click(
        handlers.cancel_finetune,
        None,
        status,
        api_name="cancel_finetune",
        concurrency_limit=None,
        show_progress="hidden",
    )
    views_out = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"], *training_parts]
    use.click(
        handlers.use_model,
        [result, session],
        [status, *views_out, session],
        api_name="use_model",
        concurrency_limit=None,
    ).success(api_name="classify_after_use", api_visibility="undocumented", **classify_parts["refresh"])
    restore.click(
        handlers.restore_models,
        session,
        [status, *views_out, session],
        api_name="restore_models",
        concurrency_limit=None,
    ).success(api_name="classify_after_restore", api_visibility="undocumented", **classify_parts["refresh"])
