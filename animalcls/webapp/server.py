"""Web app: classify a photo with the scratch and the transfer model side by side, look at how
each was trained, and fine-tune one on the configured dataset.

    python app.py [--host 127.0.0.1] [--port 7860] [--data DIR] [--scratch DIR] [--transfer DIR]

Importing this module starts nothing, loads no model and does not import Gradio: `build_demo()`
builds the Blocks (webapp/layout.py) without launching them, and `python app.py` checks its
arguments, starts loading the models, then imports Gradio and launches. See docs/web-app-and-space.md.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animalcls.core.settings import BUNDLED_DIR
from animalcls.serving.inference import MAX_FILE_BYTES
from animalcls.serving.onnx_engine import share_thread_pool
from animalcls.webapp.checkpoints import resolve_checkpoints
from animalcls.webapp.sessions import StoreLimits
from animalcls.webapp.state import BackgroundWarmUp
from animalcls.webapp.tabs.teach_session import TeachLimits
from animalcls.webapp.views import EXAMPLES_DIR, folder_photos, page_css

if TYPE_CHECKING:
    import gradio as gr

# Passed to launch() by main() and the tests: uploads over the limit are refused before the
# handler runs; server-side rendering stays off (it needs Node and slows startup).
# The page's style (with the shipped examples' captions) goes with them.
LAUNCH_OPTIONS: dict[str, Any] = {
    "max_file_size": MAX_FILE_BYTES,
    "ssr_mode": False,
    "css": page_css(folder_photos(EXAMPLES_DIR)),
}


def build_demo(
    scratch_dir: str | Path | None = None,
    transfer_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    **options: Any,
) -> gr.Blocks:
    """Build the app without launching it. Options: checkpoints_root, finetune_root, use_hub,
    hub_repo, examples_dir, limits, max_epochs, max_unfreeze, use_for_everyone, served (see AnimalApp), teach_limits
    (the Teach panel's caps). Checkpoints not given come from the Hub when ANIMALCLS_HUB_REPO is set, else from
    checkpoints/defaults.json; `served` (app_checkpoints.resolve_checkpoints) skips that lookup."""
    from animalcls.webapp.handlers import AnimalApp  # Gradio is imported here, not at this module's import
    from animalcls.webapp.layout import build_layout

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
            f"the port (--port, ANIMALCLS_PORT or GRADIO_SERVER_PORT) must be a number from 1 to 65535, got {text!r}"
        )
    return int(text)


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any slow work, when the address cannot be listened on."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise SystemExit(
            f"error: cannot listen on {host}:{port}: {reason} (choose another with --port or "
            "ANIMALCLS_PORT, or --host)."
        ) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--host",
        default=_env("ANIMALCLS_HOST", "GRADIO_SERVER_NAME", default="127.0.0.1"),
        help="address to listen on (env ANIMALCLS_HOST or GRADIO_SERVER_NAME; default 127.0.0.1; "
        "0.0.0.0 for all interfaces)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=_env("ANIMALCLS_PORT", "GRADIO_SERVER_PORT", default="7860"),
        help="port (env ANIMALCLS_PORT or GRADIO_SERVER_PORT; default 7860)",
    )
    parser.add_argument(
        "--scratch",
        default=_env("ANIMALCLS_SCRATCH"),
        metavar="DIR",
        help="scratch checkpoint folder (env ANIMALCLS_SCRATCH; default: checkpoints/defaults.json)",
    )
    parser.add_argument(
        "--transfer",
        default=_env("ANIMALCLS_TRANSFER"),
        metavar="DIR",
        help="transfer checkpoint folder (env ANIMALCLS_TRANSFER; default: checkpoints/defaults.json)",
    )
    parser.add_argument(
        "--data",
        default=_env("ANIMALCLS_DATA"),
        metavar="DIR",
        help="dataset for the Fine-tune tab (env ANIMALCLS_DATA; default: the dataset recorded in "
        "the checkpoint, when it is on this machine)",
    )
    parser.add_argument(
        "--finetune-out",
        default=_env("ANIMALCLS_FINETUNE_OUT"),
        metavar="DIR",
        help="where fine-tuned checkpoints go (env ANIMALCLS_FINETUNE_OUT; default runs/finetunes)",
    )
    parser.add_argument(
        "--hub-repo",
        default=None,
        metavar="ORG/NAME",
        help="Hugging Face model repo to pull checkpoints from (default: env ANIMALCLS_HUB_REPO)",
    )
    parser.add_argument("--no-hub", action="store_true", help="never contact the Hub; use local checkpoints only")
    parser.add_argument(
        "--teach-max-photos",
        type=int,
        default=TeachLimits.max_photos,
        metavar="N",
        help=f"Teach panel: photos per browser session (default {TeachLimits.max_photos})",
    )
    parser.add_argument(
        "--teach-max-mb",
        type=float,
        default=TeachLimits.max_mb,
        metavar="MB",
        help=f"Teach panel: largest photo file accepted (default {TeachLimits.max_mb:g} MB)",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="load the models on the first request instead of in the background at startup",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=_env("ANIMALCLS_MAX_EPOCHS", default="20"),
        help="most epochs a visitor may fine-tune (env ANIMALCLS_MAX_EPOCHS; default 20)",
    )
    parser.add_argument(
        "--max-unfreeze",
        type=int,
        default=_env("ANIMALCLS_MAX_UNFREEZE", default="0"),
        help="most backbone layers a visitor may unfreeze (env ANIMALCLS_MAX_UNFREEZE; default 0: "
        "head only, which is what a CPU-basic Space can afford)",
    )
    parser.add_argument(
        "--max-finetunes",
        type=int,
        default=_env("ANIMALCLS_MAX_FINETUNES", default="5"),
        help="fine-tunes kept on disk, the oldest removed first (env ANIMALCLS_MAX_FINETUNES; default 5)",
    )
    parser.add_argument(
        "--max-finetune-mb",
        type=int,
        default=_env("ANIMALCLS_MAX_FINETUNE_MB", default="200"),
        help="total MB of kept fine-tunes (env ANIMALCLS_MAX_FINETUNE_MB; default 200)",
    )
    parser.add_argument(
        "--use-for-everyone",
        action="store_true",
        default=_env("ANIMALCLS_USE_FOR_EVERYONE", default="") in ("1", "true", "yes"),
        help="'Use this model' changes the model for EVERY visitor (env ANIMALCLS_USE_FOR_EVERYONE=1; "
        "default off: for that browser session only)",
    )
    args = parser.parse_args(argv)
    if args.teach_max_photos < 1 or not args.teach_max_mb > 0:
        parser.error("--teach-max-photos must be at least 1 and --teach-max-mb above 0")
    if args.max_epochs < 1 or args.max_unfreeze < 0 or args.max_finetunes < 1 or args.max_finetune_mb < 1:
        parser.error(
            "--max-epochs, --max-finetunes and --max-finetune-mb must be at least 1, --max-unfreeze at least 0"
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Check the arguments, start loading the models in the background (through ONNX Runtime when
    installed), import Gradio and serve, then import TensorFlow for fine-tuning: a request that
    needs something before it is ready waits for it. The library's notes reach stderr, one line each."""
    from animalcls.core import logs

    with logs.library_logs_to_stderr():
        _serve(argv, time.perf_counter())


def _serve(argv: Sequence[str] | None, started: float) -> None:
    from animalcls.core import logs

    args = parse_args(argv)
    _check_port_free(args.host, args.port)
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())  # a clean stop: see _serve_until_stopped
    logs.quiet_tensorflow()  # filters TensorFlow's C++ start-up noise from stderr
    served = resolve_checkpoints(args.scratch, args.transfer, BUNDLED_DIR, not args.no_hub, args.hub_repo)
    share_thread_pool()  # this process is the app's: both models run on one pool of threads (if onnxruntime is here)
    early = not args.no_warm_up and BackgroundWarmUp.can_start_early(served.paths)
    warm_up = BackgroundWarmUp(served.paths, started).start() if early else None
    demo = build_demo(
        data_dir=args.data,
        served=served,
        finetune_root=args.finetune_out,
        max_epochs=args.max_epochs,
        max_unfreeze=args.max_unfreeze,
        use_for_everyone=args.use_for_everyone,
        limits=StoreLimits(args.max_finetunes, args.max_finetune_mb * 2**20),
        teach_limits=TeachLimits(args.teach_max_photos, args.teach_max_mb),
    )
    app = demo.animalcls_app
    app.ready.clear()
    app.models_ready.clear()
    import_pyplot()
    try:
        demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **LAUNCH_OPTIONS)
    except OSError as exc:  # taken between the check and now
        logs.restore_stderr()
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port}: {exc}") from None
    try:
        _finish_start(app, args, warm_up, started)
        _serve_until_stopped(demo)
    except KeyboardInterrupt:  # Ctrl-C
        demo.close()
    finally:
        logs.restore_stderr()


def _finish_start(app: Any, args: argparse.Namespace, warm_up: BackgroundWarmUp | None, started: float) -> None:
    """Once serving: wait for the models, say when they were ready, then import TensorFlow."""
    serving_after = time.perf_counter() - started
    if args.no_warm_up:
        print(f"Serving {serving_after:.1f} s after start; the models load on the first request.", flush=True)
    else:
        ready_after = _models_ready_after(app, warm_up, started)
        print(f"Models ready {ready_after:.1f} s after start; serving {serving_after:.1f} s after start.", flush=True)
    # Imported here, in one thread, before a fine-tune may need them (see AnimalApp.ready).
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import animalcls.heads.finetune  # noqa: F401

    app.ready.set()
    app.models_ready.set()


# Set by SIGTERM (how a Space, Docker or systemd stops the app). A handler that raised instead
# was lost when the signal came during a weakref callback ("Exception ignored"): the app hung.
STOP = threading.Event()


def _serve_until_stopped(demo: Any) -> None:
    """Serve until SIGTERM, then close the server: Gradio deletes its cached files (delete_cache)
    and the exit handlers remove the temp folders."""
    while demo.is_running and not STOP.wait(0.2):
        pass
    demo.close()


def import_pyplot() -> None:
    """Import matplotlib.pyplot (Agg) now, before serving, in this one thread. TensorFlow imports it
    too; done after serving, a request coming meanwhile fails: Gradio's MatplotlibBackendMananger
    calls matplotlib.use(), which calls the half-imported pyplot's switch_backend."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot  # noqa: F401


def _models_ready_after(app: Any, warm_up: BackgroundWarmUp | None, started: float) -> float:
    """Seconds from `started` until the models were ready: loaded in the background while Gradio
    was imported, or (when that could need TensorFlow) only now that the server is up."""
    if warm_up is not None:
        ready_after = warm_up.wait()
    else:
        app.registry.warm_up()
        ready_after = time.perf_counter() - started
    app.models_ready.set()
    return ready_after


def _exit_now() -> None:
    """After the server closed: run the exit handlers (the temp folders) and leave, without
    waiting for worker threads parked in Gradio's pools (seen to hold a stopped app over 30 s)."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


def run(argv: Sequence[str] | None = None) -> None:
    """`python app.py`: serve until stopped, then leave at once (see `_exit_now`)."""
    main(argv)
    _exit_now()
