"""The Fine-tune tab: its handlers (`FinetuneTab`, given the services they use) and its layout
(`build_finetune_section`). One fine-tune at a time per server (Gradio's queue with
concurrency_limit=1 makes the others wait and shows them their place), capped epochs and
unfrozen layers, results owned by the session that made them, the oldest stored fine-tunes
removed past the caps."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from animalcls.core import errors
from animalcls.core.errors import AnimalclsError
from animalcls.core.settings import finetune_folder
from animalcls.store.checkpoints import read_manifest
from animalcls.webapp import views
from animalcls.webapp.inputs import CheckedNumber, user_error
from animalcls.webapp.sessions import PageTokens, SessionModels, session_hash, session_key, session_of
from animalcls.webapp.state import BusyError, FinetuneRunner, ModelRegistry
from animalcls.webapp.tabs.finetune_status import (
    SETTINGS,
    FinetuneSettings,
    cancelled_status,
    curves_figure,
    failure_text,
    final_status,
    kept_text,
    reload_status,
    running_status,
    waiting_status,
)
from animalcls.webapp.tabs.training import figure_image, report_table

LIVE_PLOT_SECONDS = 1.0
RELOAD_WAIT_S = 10  # how long a reloaded page waits for its old page's run to be abandoned, then to stop


class FinetuneTab:
    """The Fine-tune tab's handlers. `registry` holds the server's default models, `sessions`
    each visitor's (and, as `sessions.store`, the stored fine-tunes), `runner` the one job a
    server runs at a time; `wait_ready` blocks until TensorFlow is imported."""

    def __init__(
        self,
        registry: ModelRegistry,
        sessions: SessionModels,
        runner: FinetuneRunner,
        wait_ready: Callable[[], None],
        render_dir: Path,
        settings: FinetuneSettings,
    ) -> None:
        self.registry, self.sessions, self.store, self.runner = registry, sessions, sessions.store, runner
        self.wait_ready, self.render_dir, self.settings = wait_ready, render_dir, settings
        self.pages = PageTokens()  # which page a browser had before a reload

    def finetune_data(self) -> Path | None:
        """The configured dataset, else the one the transfer model was trained on, if on this machine."""
        data_dir = self.settings.data_dir
        return data_dir if data_dir is not None else views.dataset_root_of(self.registry.path("transfer"))

    def stored_features(self, source: Path | None) -> Any:
        """Features stored with `source` (or the checkpoint it was fine-tuned from), or None."""
        from animalcls.store.stored_features import find_features

        if source is None:
            return None
        try:
            roots = [self.settings.checkpoints_root, self.store.root, Path(source).parent]
            return find_features(source, [root for root in roots if root is not None])
        except AnimalclsError:
            return None

    def finetune_intro(self) -> str:
        source = self.registry.path("transfer")
        if source is None:
            return "**Fine-tuning needs a transfer checkpoint**, and this server has none (see the notice at the top)."
        if self.finetune_data() is not None:
            where = f"the photos it was trained on ({views.dataset_description(source)})"
        elif self.stored_features(source) is not None:
            where = (
                f"what it saw in its training photos, stored with it ({views.dataset_description(source)}; "
                "the photos themselves are not on this server, so only its last layers learn)"
            )
        else:
            where = "**no data**: neither its photos nor what it saw in them are on this server, so fine-tuning is off"
        return (
            f"Fine-tunes the transfer model you are using on {where}, then evaluates it on the test split. "
            f"Up to {self.settings.max_epochs} epochs"
            + (
                f"; besides its last layers, up to {self.settings.max_unfreeze} layers below them may learn"
                if self.settings.max_unfreeze
                else "; only its last layers learn"
            )
            + " on this server. One fine-tune runs at a time: if another visitor's is running, yours waits in the "
            "queue and shows its place. The result is yours: other visitors do not see it, and *Use this model* "
            f"changes the model for this browser session only. {kept_text(self.store, source)}"
        )

    def finetune(
        self,
        epochs: float,
        learning_rate: float,
        unfreeze_layers: float,
        session: Any = None,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        """Generator: fine-tune this session's transfer model in a worker thread; yields the
        status, live curves, both reports and confusion matrices, the result's name, the
        "Use this model" button's state and the session (which then owns the result). A refusal
        (no data, server full, the run failed...) is said in the status, then raised for API
        callers with no toast: Gradio 6 heads every error toast just "Error", whatever its title."""
        try:
            yield from self._start_and_follow(epochs, learning_rate, unfreeze_layers, session, request, progress)
        except gr.Error as refusal:
            yield (f"**Not fine-tuned.** {html.escape(refusal.message)}", *[gr.skip()] * 8)
            refusal.visible = False  # the status says it; the failure event clears the bar's badge
            raise refusal

    def _start_and_follow(
        self, epochs: Any, learning_rate: Any, unfreeze_layers: Any, session: Any, request: Any, progress: Any
    ) -> Iterator[tuple[Any, ...]]:
        if self.runner.leave_queue(session_hash(request)):  # cancelled while it waited: nothing runs
            yield (
                "**Cancelled** while waiting in the queue: nothing ran.",
                *[gr.skip()] * 5,
                None,
                gr.update(),
                gr.skip(),
            )
            return
        problems = self.settings.problems(epochs, learning_rate, unfreeze_layers)
        if problems:
            raise user_error(" ".join(problems.values()), "Bad settings")
        epochs, learning_rate, unfreeze = int(epochs), float(learning_rate), int(unfreeze_layers or 0)
        state = session_of(session)
        source = self.sessions.paths(state)["transfer"]
        if source is None:
            raise user_error("There is no transfer model to fine-tune on this server.", "No model")
        data_dir = self.finetune_data()
        stored = None if data_dir is not None else self.stored_features(source)
        if data_dir is None and stored is None:
            raise user_error(
                "No data to fine-tune on: neither the photos nor stored features are on this server.", "No data"
            )
        if stored is not None and unfreeze:
            raise user_error(
                "Unfreezing backbone layers needs the photos, which are not on this server: use 0 (head only).",
                "Bad settings",
            )
        crowded = self.store.crowded()
        if crowded is not None:
            raise user_error(crowded, "Server full")
        out_dir = finetune_folder(source, self.store.root)
        self.wait_ready()

        def target(hooks: Any) -> Any:
            from animalcls.heads.finetune import finetune

            # No PNGs in the folder: the page draws the confusion matrix (and the curves when
            # the Training tab shows them) itself, off the path to the saved checkpoint.
            return finetune(
                source,
                data_dir=self.settings.data_dir,
                epochs=epochs,
                learning_rate=learning_rate,
                unfreeze_layers=unfreeze,
                out_dir=out_dir,
                hooks=hooks,
                stored=stored,
                figures=False,
            )

        try:
            job = self.runner.start(target, epochs, meta={"source": source, "owner": session_hash(request)})
        except BusyError as exc:
            raise user_error(str(exc), "Busy") from None
        try:
            yield from self._follow(job, source, {**state, "pin": state.get("pin") or session_key(request)}, progress)
        finally:
            if job.running:  # the visitor left (closed or reloaded the page): do not train for nobody
                job.abandoned.set()
                job.cancel()

    def _follow(self, job: Any, source: Path, state: dict[str, Any], progress: gr.Progress) -> Iterator[tuple]:
        name, skip = read_manifest(source)["name"], gr.skip()
        yield (
            f"**Fine-tuning {name}**: starting…",
            curves_figure({}, name),
            views.report_frame(views.evaluation_of(source)),
            views.confusion_file(source, self.render_dir),
            views.report_frame(None),
            None,
            "",
            gr.update(interactive=False),
            skip,
        )
        drawn, drawn_at = 0, 0.0
        for snapshot in job.watch():
            curves = skip
            # At most one live redraw a second: a figure costs about 0.5 CPU s, taken from training.
            if snapshot.epochs_done != drawn and time.monotonic() - drawn_at >= LIVE_PLOT_SECONDS:
                drawn, drawn_at, curves = snapshot.epochs_done, time.monotonic(), curves_figure(snapshot.history, name)
            # The bar and the status tell the same moment: both after the drawing, one right after the other
            # (the bar ran a drawing ahead: "epoch 2/2" over a status still "starting").
            fraction = snapshot.fraction()
            progress(fraction if fraction is not None else 0.0, desc=snapshot.describe())
            yield (running_status(name, snapshot, job.cancel_event.is_set()), curves, *[skip] * 7)
        if job.error is not None:
            if isinstance(job.error, errors.Cancelled):  # stopped before an epoch finished: nothing saved
                # The result (7th) as None, not a skip: an API caller would read {'__type__': 'update'}.
                yield (cancelled_status(job.error), *[skip] * 5, None, gr.update(interactive=False), skip)
                return
            raise user_error(failure_text(job.error), "Fine-tune failed")
        result = job.result
        new = Path(result.path)
        state = self.store.pin({**state, "owned": [*state["owned"], new.name]}, state["pin"])
        self.store.prune(keep=[new, *(p for p in self.registry.paths().values() if p is not None)])
        yield (
            final_status(name, result, source),
            curves_figure(result.history or {}, f"{name} fine-tuned"),
            skip,
            skip,
            views.report_frame(result.evaluation),
            views.confusion_file(new, self.render_dir),
            new.name,
            gr.update(interactive=True),
            state,
        )

    def validate_settings(
        self, epochs: Any, learning_rate: Any, unfreeze_layers: Any, session: Any = None
    ) -> list[dict[str, Any]]:
        """Start's validator: a bad setting is one sentence by its field, before anything runs or
        queues (finetune itself still refuses, for API callers)."""
        problems = self.settings.problems(epochs, learning_rate, unfreeze_layers)
        return [
            *(gr.validate(name not in problems, problems.get(name, "")) for name in SETTINGS),
            gr.validate(True, ""),
        ]

    def finetune_waiting(
        self, epochs: Any, learning_rate: Any, unfreeze_layers: Any, request: gr.Request = None
    ) -> tuple[Any, Any]:
        """What the page says the moment Start is pressed, with Cancel shown: starting, or waiting
        in the queue behind another visitor's fine-tune and its place in line. Nothing when the
        validator refuses the settings (nothing runs, so no Cancel)."""
        if self.settings.problems(epochs, learning_rate, unfreeze_layers):
            return gr.skip(), gr.skip()
        owner, job = session_hash(request), self.runner.current
        if owner and job is not None and job.running and job.meta.get("owner") != owner:
            return waiting_status(self.runner.join_queue(owner)), gr.update(visible=True)
        return "**Starting…**", gr.update(visible=True)

    def cancel_finetune(self, request: gr.Request = None) -> str:
        """Cancel this session's own fine-tune, running or waiting in the queue (never another visitor's)."""
        owner, job = session_hash(request), self.runner.current
        if job is not None and job.running and job.meta.get("owner") == owner:
            job.cancel()
            return (
                "**Cancelling:** the fine-tune stops after the current batch and keeps only the epochs that finished."
            )
        if self.runner.withdraw(owner):
            return "**Cancelled:** your fine-tune left the queue; it will not run."
        return "No fine-tune of yours is running."

    def last_run(self, token: Any = None, session: Any = None, request: gr.Request = None) -> tuple[Any, ...]:
        """Page load: a new token for this page (kept in the browser), and what became of the
        fine-tune the page before a reload left running. A result it saved becomes this session's."""
        owner, skip = session_hash(request), gr.skip()
        new_token = self.pages.issue(owner)
        job = self.runner.last_of(self.pages.owner(token))
        # The old page's unload (or its closed event stream) marks the run abandoned; a run another
        # open page of this browser follows never is, and is not this page's to report.
        if job is None or not job.abandoned.wait(RELOAD_WAIT_S if job.running else 0):
            return skip, skip, skip, skip, new_token
        job.join(RELOAD_WAIT_S)
        saved = Path(job.result.path).name if not job.running and job.result is not None else None
        if saved is None or self.store.folder(saved) is None:
            return reload_status(job, None), skip, skip, skip, new_token
        state = session_of(session)
        state = self.store.pin({**state, "owned": [*state["owned"], saved]}, state.get("pin") or session_key(request))
        return reload_status(job, saved), saved, gr.update(interactive=True), state, new_token


# ------------------------------------------------------------------------ layout


def _report_column(title: str, elem_prefix: str) -> tuple[gr.Dataframe, gr.Image]:
    """A column with a model's test-split report table and confusion matrix."""
    with gr.Column():
        gr.Markdown(f"### {title}")
        report = report_table(f"{elem_prefix}-report")
        confusion = figure_image("Confusion matrix (test split)", f"{elem_prefix}-confusion")
    return report, confusion


def build_finetune_tab(tab: FinetuneTab, session: gr.State, page: gr.BrowserState, demo: gr.Blocks) -> dict[str, Any]:
    """The tab's components and events, inside the current gr.Tab. Returns what the layout wires
    across tabs: the status, the result's name and the Use / Restore buttons."""
    limits = tab.settings
    gr.Markdown(tab.finetune_intro(), elem_id="ft-intro")
    with gr.Row():
        epochs = CheckedNumber(
            value=min(3, limits.max_epochs),
            label=f"Epochs (1-{limits.max_epochs})",
            minimum=1,
            maximum=limits.max_epochs,
            precision=0,
            elem_id="ft-epochs",
        )
        rate = CheckedNumber(value=1e-3, label="Learning rate", minimum=1e-7, maximum=1.0, elem_id="ft-lr")
        unfreeze = CheckedNumber(
            value=0,
            label=f"Unfreeze the top N backbone layers (0 = head only; at most {limits.max_unfreeze} here)",
            minimum=0,
            maximum=limits.max_unfreeze,
            precision=0,
            visible=limits.max_unfreeze > 0,  # a control that can only be 0 is no control
            elem_id="ft-unfreeze",
        )
    with gr.Row():
        run = gr.Button("Start fine-tune", variant="primary", elem_id="ft-start")
        cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="ft-cancel")  # shown while one is yours
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
    # At once: Cancel appears and the status says whether the run starts or waits in the queue.
    run.click(
        tab.finetune_waiting,
        [epochs, rate, unfreeze],
        [status, cancel],
        queue=False,
        api_name="finetune_waiting",
        api_visibility="private",
        show_progress="hidden",
    )
    finetune = run.click(
        tab.finetune,
        [epochs, rate, unfreeze, session],
        [status, curves, start_report, start_confusion, new_report, new_confusion, result, use, session],
        api_name="finetune",
        validator=tab.validate_settings,
        concurrency_id="finetune",
        concurrency_limit=1,
        show_progress_on=[bar],
    )
    finetune.success(
        lambda: gr.update(visible=False),
        None,
        cancel,
        api_name="finetune_ended",
        api_visibility="private",
        show_progress="hidden",
    )
    # The status already says why (finetune yields it before raising): hide Cancel, clear the bar's badge.
    finetune.failure(
        lambda: (gr.update(visible=False), ""),
        None,
        [cancel, bar],
        api_name="finetune_failed",
        api_visibility="private",
        show_progress="hidden",
    )
    cancel.click(
        tab.cancel_finetune,
        None,
        status,
        api_name="cancel_finetune",
        concurrency_limit=None,
        show_progress="hidden",
    )
    # After a reload: what became of the run the page before left (`page`: its token, kept in this browser).
    demo.load(
        tab.last_run,
        [page, session],
        [status, result, use, session, page],
        api_name="finetune_last_run",
        api_visibility="private",
        concurrency_limit=None,
        show_progress="hidden",
    )
    return {"status": status, "result": result, "use": use, "restore": restore}
