"""The web app's layout: the gr.Blocks with the title, the notices and the Classify, Training and
Fine-tune tabs (each laid out by its module in animalcls/webapp/tabs/), and the events that span
tabs (page load, Use this model / Restore), each under an explicit api_name.

Imported by app.build_demo(), not at app.py's import: `python app.py` checks its arguments and
starts loading the models before Gradio (about 3 s to import) is loaded.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from animalcls.core.settings import BUNDLED_DIR
from animalcls.webapp import views
from animalcls.webapp.handlers import AnimalApp
from animalcls.webapp.lesson import lesson_for
from animalcls.webapp.sessions import new_session
from animalcls.webapp.tabs.cells import build_cells_section
from animalcls.webapp.tabs.classify import build_classify_tab
from animalcls.webapp.tabs.finetune import build_finetune_tab
from animalcls.webapp.tabs.teach import API_NAMES as TEACH_API_NAMES
from animalcls.webapp.tabs.teach import TeachPanel, build_teach_section
from animalcls.webapp.tabs.teach_session import TeachLimits
from animalcls.webapp.tabs.training import build_training_tab

TITLE = "Animal classifier: trained from scratch vs transfer learning"
# Gradio's (frequency, age) in seconds: every 15 minutes, uploads and outputs older than an hour
# are deleted from its cache; all of this server's are deleted when it stops.
DELETE_CACHE = (900, 3600)
# Every event's api_name. Public (in the API docs): classify, model_info, finetune,
# cancel_finetune, use_model, restore_models, the Teach panel's teach_* and use_taught; the others are UI
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
    "finetune_last_run",  # private, on page load: what became of the run the page before a reload left
    "cell_tables_after_use",  # private: the Training tab's cells follow the swapped models
    "cell_tables_after_restore",
    "use_taught",  # the Teach panel's "Use the taught models" (/use_model takes one name)
    "classify_after_use_taught",
    "cell_tables_after_use_taught",
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
    "classify_after_use_taught": lambda image: [image, False],
    "teach_add": lambda image: ["dog", None, image],
    "teach_classify": lambda image: [image],
    "teach_classify_new": lambda image: [image],
}


def build_layout(handlers: AnimalApp, teach_limits: TeachLimits | None = None) -> gr.Blocks:
    """The Blocks: a notice, then the Classify, Training and Fine-tune tabs, wired to `handlers`."""
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        # This visitor's model choices and fine-tunes (animalcls.webapp.sessions): per browser
        # session or gradio_client Client, never shared.
        session = gr.State(new_session(), delete_callback=handlers.forget_session)
        # This page's token, kept in the browser across a reload; outside the tabs, which are mounted
        # only when first shown, so that the page's load event reads it.
        page = gr.BrowserState(None, storage_key="animalcls-page")
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
                classify_parts = build_classify_tab(handlers.classify_tab, session)
            with gr.Tab("Training", id="training", elem_id="tab-training"):
                training_parts = build_training_tab(lesson_for(handlers.registry.paths(), BUNDLED_DIR))
                cell_outputs = build_cells_section(handlers.cells, demo, session)
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                finetune_parts = build_finetune_tab(handlers.finetune_tab, session, page, demo)
                panel = TeachPanel(
                    handlers.registry, handlers.sessions, handlers.wait_ready, teach_limits or TeachLimits()
                )
                teach_parts = build_teach_section(panel, session)
        headers = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"]]
        view_outputs = [*headers, *training_parts, classify_parts["known"]]
        refreshes = {"classify": classify_parts["refresh"], "cell_tables": cell_outputs}
        _model_choice_events(handlers, session, finetune_parts, teach_parts, view_outputs, refreshes)
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
    demo.animalcls_teach = teach_parts["panel"]
    return demo


def _model_choice_events(
    handlers: AnimalApp,
    session: gr.State,
    parts: dict[str, Any],
    teach: dict[str, Any],
    views_out: list[Any],
    refreshes: dict[str, Any],
) -> None:
    """Use this model / Restore (on the Fine-tune tab) and Use the taught models (its Teach
    panel): every view follows this session's models, the Classify tab's photo classified again
    and the Training tab's cells redrawn."""
    swaps = (
        (parts["use"], handlers.use_model, [parts["result"], session], parts["status"], "use_model", "use"),
        (parts["restore"], handlers.restore_models, [session], parts["status"], "restore_models", "restore"),
        (teach["use"], handlers.use_taught, [teach["state"], session], teach["status"], "use_taught", "use_taught"),
    )
    for button, handler, inputs, status, api_name, after in swaps:
        swapped = button.click(
            handler, inputs, [status, *views_out, session], api_name=api_name, concurrency_limit=None
        )
        swapped.success(api_name=f"classify_after_{after}", api_visibility="undocumented", **refreshes["classify"])
        swapped.success(
            handlers.cells.refresh,
            session,
            refreshes["cell_tables"],
            api_name=f"cell_tables_after_{after}",
            api_visibility="private",
            show_progress="hidden",
        )
