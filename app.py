"""Web app: classify a photo with the scratch and the transfer model side by side, look at how
each was trained, and fine-tune one on the configured dataset.

    python app.py [--host 127.0.0.1] [--port 7860] [--data DIR] [--scratch DIR] [--transfer DIR]

Importing this module starts nothing and loads no model; `build_demo()` builds the Blocks
without launching them, and `python app.py` launches. See README.md, "The web app".
"""

from __future__ import annotations

import argparse
import errno
import html
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.app_sessions import StoreLimits, new_session
from animalcls.app_views import example_caption
from animalcls.checkpoints import KINDS
from animalcls.inference import MAX_FILE_BYTES
from animalcls.reports import REPORT_HEADERS
from animalcls.teach_session import TeachLimits
from app_handlers import AnimalApp, UnusableUpload, why_unusable
from app_teach import API_NAMES as TEACH_API_NAMES
from app_teach import build_teach_section
from app_trust import build_cells_section

TITLE = "Animal classifier: trained from scratch vs transfer learning"
# Passed to launch() by main() and the tests: uploads over the limit are refused before the
# handler runs; server-side rendering stays off (it needs Node and slows startup).
LAUNCH_OPTIONS: dict[str, Any] = {"max_file_size": MAX_FILE_BYTES, "ssr_mode": False}
# Every event's api_name. Public (in the API docs): classify, model_info, finetune,
# cancel_finetune, use_model, restore_models and the Teach panel's teach_*; the others are UI
# plumbing, callable but undocumented.
API_NAMES = (
    "classify", "clear_results", "classify_upload", "load_test_example", "classify_test_example", "load_user_example",
    "classify_user_example", "model_info", "finetune", "cancel_finetune", "use_model", "restore_models",
    "classify_after_use", "classify_after_restore",
    "reclassify_heatmaps", "cell_tables", "cell_photos_scratch", "cell_photos_transfer", "disagreements",
    *TEACH_API_NAMES,
)


def _report_column(title: str, elem_prefix: str) -> tuple[gr.Dataframe, gr.Image]:
    """A column with a model's test-split report table and confusion matrix."""
    with gr.Column():
        gr.Markdown(f"### {title}")
        report = gr.Dataframe(headers=REPORT_HEADERS, label="Classification report (test split)",
                              interactive=False, elem_id=f"{elem_prefix}-report")
        confusion = gr.Image(type="filepath", label="Confusion matrix", show_label=False, interactive=False,
                             elem_id=f"{elem_prefix}-confusion", buttons=["download", "fullscreen"])
    return report, confusion


def checked_image(**kwargs: Any) -> gr.Image:
    """gr.Image that passes an upload Gradio cannot open on as an `UnusableUpload` (the reason).

    A plain gr.Image fails in its own preprocessing on a non-image: the user sees Gradio's
    generic "error" text and red badges on every output. The handlers instead show the reason
    from `inference.load_image` (and API callers get it as the error). (An instance attribute,
    not a subclass: Gradio writes a .pyi file next to the module of every Component subclass.)
    """
    image = gr.Image(**kwargs)
    original = image.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - anything PIL or Gradio raises on a bad file
            return UnusableUpload(why_unusable(payload))

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def checked_number(**kwargs: Any) -> gr.Number:
    """gr.Number that answers a non-numeric API value with a message, not Gradio's empty error."""
    number = gr.Number(**kwargs)
    original = number.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            raise gr.Error(f"{number.label} must be a number, got {str(payload)[:40]!r}.", title="Bad settings",
                           print_exception=False)
        return original(payload)

    number.preprocess = preprocess  # type: ignore[method-assign]
    return number


def checked_examples(examples: gr.Examples) -> gr.Examples:
    """An example gallery whose load endpoint answers an index it does not have with a message."""
    dataset = examples.dataset
    original = dataset.preprocess

    def preprocess(payload: Any) -> Any:
        count = len(dataset.raw_samples)
        if payload is not None and (type(payload) is not int or not 0 <= payload < count):
            raise gr.Error(f"No example {str(payload)[:40]!r}: choose a whole number from 0 to {count - 1}.",
                           title="No such example", print_exception=False)
        return original(payload)

    dataset.preprocess = preprocess  # type: ignore[method-assign]
    return examples


def build_layout(handlers: AnimalApp, teach_limits: TeachLimits | None = None) -> gr.Blocks:
    """The Blocks: a notice, then the Classify, Training and Fine-tune tabs, wired to `handlers`."""
    with gr.Blocks(title=TITLE) as demo:
        # This visitor's model choices and fine-tunes (animalcls.app_sessions): per browser
        # session or gradio_client Client, never shared.
        session = gr.State(new_session())
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(
            "\n\n".join(f"**Note:** {html.escape(n)}" for n in handlers.notices),
            visible=bool(handlers.notices), elem_id="notice",
        )
        with gr.Tabs():
            with gr.Tab("Classify", id="classify", elem_id="tab-classify"):
                classify_parts = _classify_tab(handlers, session)
            with gr.Tab("Training", id="training", elem_id="tab-training"):
                training_parts = _training_tab()
                build_cells_section(handlers.cells, demo)
            with gr.Tab("Fine-tune", id="finetune", elem_id="tab-finetune"):
                _finetune_tab(handlers, session, classify_parts, training_parts)
                teach_panel = build_teach_section(handlers, teach_limits)
        view_outputs = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"], *training_parts]
        demo.load(handlers.model_views, session, view_outputs, api_name="model_info", concurrency_limit=None,
                  show_progress="hidden")
    demo.animalcls_app = handlers  # for tests and embedding
    demo.animalcls_teach = teach_panel
    return demo


def _classify_tab(handlers: AnimalApp, session: gr.State) -> dict[str, Any]:
    info, labels, heatmaps = {}, {}, {}
    gr.Markdown(handlers.known_classes(), elem_id="known-classes")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            image = checked_image(
                sources=["upload", "webcam", "clipboard"], type="filepath", image_mode=None,
                label="Photo (JPEG, PNG, GIF, BMP, WebP, TIFF; up to 50 MB)", elem_id="classify-image", height=320,
            )
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            show_heatmaps = gr.Checkbox(False, label="Show where each model looked (Grad-CAM heatmaps)",
                                        elem_id="heatmap-toggle")
        with gr.Column(scale=3):
            banner = gr.Markdown(elem_id="scope-banner")
            with gr.Row(equal_height=False):
                for kind in KINDS:
                    with gr.Column(min_width=240):
                        info[kind] = gr.Markdown(handlers.header(kind), elem_id=f"info-{kind}")
                        labels[kind] = gr.Label(num_top_classes=5, label=f"{kind} model: top 5",
                                                elem_id=f"label-{kind}")
                        heatmaps[kind] = gr.Image(type="filepath", visible=False, interactive=False,
                                                  elem_id=f"heatmap-{kind}", buttons=["fullscreen"])
            verdict = gr.Markdown(elem_id="verdict")
            scope_verdict = gr.JSON(visible=False, label="none-of-the-five verdict", elem_id="scope-verdict")
    outputs = [info["scratch"], labels["scratch"], info["transfer"], labels["transfer"], verdict,
               banner, scope_verdict, heatmaps["scratch"], heatmaps["transfer"]]
    events = dict(fn=handlers.classify, inputs=[image, show_heatmaps, session], outputs=outputs, concurrency_id="classify",
                  concurrency_limit=2)
    # After an upload, a model swap or the heatmap toggle: the photo (cleared when unusable) and its results, or none.
    refresh = {**events, "fn": handlers.classify_new, "outputs": [image, *outputs]}
    button.click(api_name="classify", **events)
    # Turning the heatmaps on or off answers the photo on the page again.
    show_heatmaps.change(api_name="reclassify_heatmaps", api_visibility="undocumented", **refresh)
    # A new photo first clears the previous answer (so an error never sits above stale
    # results), then is classified; removing the photo just clears.
    gr.on([image.upload, image.clear], handlers.clear_results, session, outputs, api_name="clear_results",
          api_visibility="undocumented", queue=False, show_progress="hidden",
          ).then(api_name="classify_upload", api_visibility="undocumented", **refresh)
    test_photos, user_photos = handlers.example_photos()
    galleries = (
        (test_photos, "test", "Photos from the test split of the models' dataset (never used in training)", None),
        # Thumbnails, not text captions (Gradio shows one or the other); the file names sort the
        # "none-*" photos last, as the label says.
        (user_photos, "user", "Example photos (freely licensed, see examples/CREDITS.md): "
         + ", ".join(_caption_groups(user_photos)), None),
    )
    for photos, name, label, captions in galleries:
        if photos:
            examples = checked_examples(gr.Examples(
                [[p] for p in photos], inputs=image, label=label, examples_per_page=20, cache_examples=False,
                api_name=f"load_{name}_example", api_visibility="undocumented", elem_id=f"examples-{name}",
                example_labels=captions,
            ))
            # Clicking a photo loads it, then classifies it (in the same concurrency group).
            examples.load_input_event.then(api_name=f"classify_{name}_example", api_visibility="undocumented",
                                           **events)
    return {"image": image, "info": info, "labels": labels, "verdict": verdict, "banner": banner,
            "heatmaps": heatmaps, "refresh": refresh}


def _caption_groups(photos: list[str]) -> list[str]:
    """"2 cats", "3 none of the five"... in file-name order, for the examples' label."""
    counts: dict[str, int] = {}
    for photo in photos:
        answer = example_caption(photo).split(" (")[0]
        counts[answer] = counts.get(answer, 0) + 1
    return [f"{n} {answer}" for answer, n in counts.items()]


def _training_tab() -> list[Any]:
    parts: dict[str, list[Any]] = {}
    gr.Markdown("How each model was trained: curves per metric (training vs validation), the confusion matrix "
                "and classification report on the held-out test split, and the facts from its manifest.")
    with gr.Row(equal_height=False):
        for kind in KINDS:
            with gr.Column(min_width=320):
                gr.Markdown(f"## {kind.capitalize()} model")
                facts = gr.Markdown(elem_id=f"facts-{kind}")
                # Captions as Markdown: an image's own label would cover the top of the plot.
                gr.Markdown("**Training vs validation, per metric**")
                history = gr.Image(type="filepath", label="Training vs validation, per metric", show_label=False,
                                   interactive=False, elem_id=f"history-{kind}", buttons=["download", "fullscreen"])
                gr.Markdown("**Confusion matrix (test split)**")
                confusion = gr.Image(type="filepath", label="Confusion matrix (test split)", show_label=False,
                                     interactive=False, elem_id=f"confusion-{kind}",
                                     buttons=["download", "fullscreen"])
                report = gr.Dataframe(headers=REPORT_HEADERS, label="Classification report (test split)",
                                      interactive=False, elem_id=f"report-{kind}")
                parts[kind] = [facts, history, confusion, report]
    return [*parts["scratch"], *parts["transfer"]]


def _finetune_tab(
    handlers: AnimalApp, session: gr.State, classify_parts: dict[str, Any], training_parts: list[Any]
) -> None:
    gr.Markdown(handlers.finetune_intro(), elem_id="ft-intro")
    with gr.Row():
        epochs = checked_number(value=min(3, handlers.max_epochs), label=f"Epochs (1-{handlers.max_epochs})",
                                minimum=1, maximum=handlers.max_epochs, precision=0, elem_id="ft-epochs")
        rate = checked_number(value=1e-3, label="Learning rate", minimum=1e-7, maximum=1.0, elem_id="ft-lr")
        unfreeze = checked_number(value=0, label=f"Unfreeze the top N backbone layers (0 = head only; at most "
                                  f"{handlers.max_unfreeze} here)", minimum=0, maximum=handlers.max_unfreeze,
                                  precision=0, interactive=handlers.max_unfreeze > 0, elem_id="ft-unfreeze")
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
        handlers.finetune, [epochs, rate, unfreeze, session],
        [status, curves, start_report, start_confusion, new_report, new_confusion, result, use, session],
        api_name="finetune", concurrency_id="finetune", concurrency_limit=1, show_progress_on=[bar],
    )
    cancel.click(handlers.cancel_finetune, None, status, api_name="cancel_finetune", concurrency_limit=None,
                 show_progress="hidden")
    views_out = [classify_parts["info"]["scratch"], classify_parts["info"]["transfer"], *training_parts]
    use.click(handlers.use_model, [result, session], [status, *views_out, session], api_name="use_model",
              concurrency_limit=None,
              ).success(api_name="classify_after_use", api_visibility="undocumented", **classify_parts["refresh"])
    restore.click(handlers.restore_models, session, [status, *views_out, session], api_name="restore_models",
                  concurrency_limit=None,
                  ).success(api_name="classify_after_restore", api_visibility="undocumented", **classify_parts["refresh"])


def build_demo(
    scratch_dir: str | Path | None = None,
    transfer_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    **options: Any,
) -> gr.Blocks:
    """Build the app without launching it. Options: checkpoints_root, finetune_root, use_hub,
    hub_repo, examples_dir, limits, max_epochs, max_unfreeze, use_for_everyone (see AnimalApp), teach_limits
    (the Teach panel's caps). Checkpoints not given come from the Hub when ANIMALCLS_HUB_REPO is set, else from
    checkpoints/defaults.json."""
    teach_limits = options.pop("teach_limits", None)
    return build_layout(AnimalApp(scratch_dir, transfer_dir, data_dir, **options), teach_limits)


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


class OneLineParser(argparse.ArgumentParser):
    """A bad flag or environment value is one `error: ...` line (exit status 2), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def _port(text: str) -> int:
    """argparse also applies this to the environment default, so ANIMALCLS_PORT=abc is caught too."""
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(
            f"the port (--port, ANIMALCLS_PORT or GRADIO_SERVER_PORT) must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any slow work, when the address cannot be listened on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise SystemExit(f"error: cannot listen on {host}:{port}: {reason} (choose another with --port or "
                         "ANIMALCLS_PORT, or --host).") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=_env("ANIMALCLS_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"),
                        help="address to listen on (env ANIMALCLS_HOST or GRADIO_SERVER_NAME; default 127.0.0.1; "
                        "0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=_port, default=_env("ANIMALCLS_PORT", "GRADIO_SERVER_PORT", default="7860"),
                        help="port (env ANIMALCLS_PORT or GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--scratch", default=_env("ANIMALCLS_SCRATCH"), metavar="DIR",
                        help="scratch checkpoint folder (env ANIMALCLS_SCRATCH; default: checkpoints/defaults.json)")
    parser.add_argument("--transfer", default=_env("ANIMALCLS_TRANSFER"), metavar="DIR",
                        help="transfer checkpoint folder (env ANIMALCLS_TRANSFER; default: checkpoints/defaults.json)")
    parser.add_argument("--data", default=_env("ANIMALCLS_DATA"), metavar="DIR",
                        help="dataset for the Fine-tune tab (env ANIMALCLS_DATA; default: the dataset recorded in "
                        "the checkpoint, when it is on this machine)")
    parser.add_argument("--finetune-out", default=_env("ANIMALCLS_FINETUNE_OUT"), metavar="DIR",
                        help="where fine-tuned checkpoints go (env ANIMALCLS_FINETUNE_OUT; default runs/finetunes)")
    parser.add_argument("--hub-repo", default=None, metavar="ORG/NAME",
                        help="Hugging Face model repo to pull checkpoints from (default: env ANIMALCLS_HUB_REPO)")
    parser.add_argument("--no-hub", action="store_true", help="never contact the Hub; use local checkpoints only")
    parser.add_argument("--teach-max-photos", type=int, default=TeachLimits.max_photos, metavar="N",
                        help=f"Teach panel: photos per browser session (default {TeachLimits.max_photos})")
    parser.add_argument("--teach-max-mb", type=float, default=TeachLimits.max_mb, metavar="MB",
                        help=f"Teach panel: largest photo file accepted (default {TeachLimits.max_mb:g} MB)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="load the models on the first request instead of in the background at startup")
    parser.add_argument("--max-epochs", type=int, default=_env("ANIMALCLS_MAX_EPOCHS", default="20"),
                        help="most epochs a visitor may fine-tune (env ANIMALCLS_MAX_EPOCHS; default 20)")
    parser.add_argument("--max-unfreeze", type=int, default=_env("ANIMALCLS_MAX_UNFREEZE", default="0"),
                        help="most backbone layers a visitor may unfreeze (env ANIMALCLS_MAX_UNFREEZE; default 0: "
                        "head only, which is what a CPU-basic Space can afford)")
    parser.add_argument("--max-finetunes", type=int, default=_env("ANIMALCLS_MAX_FINETUNES", default="5"),
                        help="fine-tunes kept on disk, the oldest removed first (env ANIMALCLS_MAX_FINETUNES; default 5)")
    parser.add_argument("--max-finetune-mb", type=int, default=_env("ANIMALCLS_MAX_FINETUNE_MB", default="200"),
                        help="total MB of kept fine-tunes (env ANIMALCLS_MAX_FINETUNE_MB; default 200)")
    parser.add_argument("--use-for-everyone", action="store_true",
                        default=_env("ANIMALCLS_USE_FOR_EVERYONE", default="") in ("1", "true", "yes"),
                        help="'Use this model' changes the model for EVERY visitor (env ANIMALCLS_USE_FOR_EVERYONE=1; "
                        "default off: for that browser session only)")
    args = parser.parse_args(argv)
    if args.teach_max_photos < 1 or not args.teach_max_mb > 0:
        parser.error("--teach-max-photos must be at least 1 and --teach-max-mb above 0")
    if args.max_epochs < 1 or args.max_unfreeze < 0 or args.max_finetunes < 1 or args.max_finetune_mb < 1:
        parser.error("--max-epochs, --max-finetunes and --max-finetune-mb must be at least 1, --max-unfreeze at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Serve first, then load the models (through ONNX Runtime when installed), then import
    TensorFlow for fine-tuning: a request that needs something before it is ready waits for it."""
    from animalcls import logs

    args = parse_args(argv)
    _check_port_free(args.host, args.port)
    logs.quiet_tensorflow()  # filters TensorFlow's C++ start-up noise from stderr
    demo = build_demo(args.scratch, args.transfer, args.data, finetune_root=args.finetune_out,
                      use_hub=not args.no_hub, hub_repo=args.hub_repo, max_epochs=args.max_epochs,
                      max_unfreeze=args.max_unfreeze, use_for_everyone=args.use_for_everyone,
                      limits=StoreLimits(args.max_finetunes, args.max_finetune_mb * 2**20),
                      teach_limits=TeachLimits(args.teach_max_photos, args.teach_max_mb))
    app = demo.animalcls_app
    app.ready.clear()
    app.models_ready.clear()
    try:
        demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **LAUNCH_OPTIONS)
    except OSError as exc:  # taken between the check and now
        logs.restore_stderr()
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port}: {exc}") from None
    started = time.perf_counter()
    if not args.no_warm_up:
        app.registry.warm_up()  # through ONNX Runtime when installed: no TensorFlow needed
        app.models_ready.set()
        print(f"Models ready {time.perf_counter() - started:.1f} s after the server started.", flush=True)
    # Imported here, in one thread, before a fine-tune may need them (see AnimalApp.ready).
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import animalcls.finetune  # noqa: F401
    app.ready.set()
    app.models_ready.set()
    try:
        demo.block_thread()
    finally:
        logs.restore_stderr()


if __name__ == "__main__":
    main()
