"""Server-side state of the web app: which checkpoint serves each side of the Classify tab,
and one fine-tune job at a time, run in a worker thread that the UI polls.

Both objects belong to one `build_demo()` call and are shared by every browser session and
API client of that server. `ModelRegistry` holds the server's DEFAULT models: a visitor's
"Use this model" changes it only when the operator allows it (--use-for-everyone); otherwise
choices live in the visitor's session (app_sessions). Nothing here imports Gradio or TensorFlow.
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.core.hooks import TrainHooks
from animalcls.store.checkpoints import KINDS, read_manifest


class BusyError(AnimalclsError):
    """A fine-tune is already running on this server."""


class ModelRegistry:
    """The checkpoint folder each side ("scratch", "transfer") uses, plus why a side is empty."""

    def __init__(self, paths: dict[str, Path | None], notes: dict[str, str] | None = None) -> None:
        self._original = {kind: (Path(paths[kind]) if paths.get(kind) else None) for kind in KINDS}
        self._paths = dict(self._original)
        self.notes = dict(notes or {})
        self._lock = threading.Lock()

    def path(self, kind: str) -> Path | None:
        with self._lock:
            return self._paths.get(kind)

    def paths(self) -> dict[str, Path | None]:
        with self._lock:
            return dict(self._paths)

    def snapshot(self) -> dict[str, tuple[Path | None, bool]]:
        """Each side's folder and whether it is swapped in, in one read: a request that uses
        this never shows one model's header above another model's answer."""
        with self._lock:
            return {kind: (self._paths.get(kind), self._paths.get(kind) != self._original.get(kind)) for kind in KINDS}

    def available(self) -> list[str]:
        return [kind for kind, path in self.paths().items() if path is not None]

    def use(self, folder: Path, kind: str | None = None) -> str:
        """Serve `folder` on the side of its manifest's kind (or `kind`); returns that kind."""
        kind = kind or read_manifest(folder)["kind"]
        if kind not in KINDS:
            raise AnimalclsError(f"Unknown model kind {kind!r}.")
        with self._lock:
            self._paths[kind] = Path(folder)
        return kind

    def reset(self) -> None:
        with self._lock:
            self._paths = dict(self._original)

    def predictor(self, kind: str) -> Any | None:
        """The loaded Predictor of a side (cached per process), or None when the side is empty."""
        from animalcls.serving.inference import load_predictor

        path = self.path(kind)
        return load_predictor(path) if path is not None else None

    def warm_up(self) -> None:
        """Load every model and trace its forward pass, so the first request is fast."""
        import numpy as np

        for kind in self.available():
            try:
                predictor = self.predictor(kind)
                predictor.forward(np.zeros((1, predictor.image_size, predictor.image_size, 3), np.float32))
            except Exception:  # noqa: BLE001 - a broken checkpoint is reported on first use instead
                traceback.print_exc()


class BackgroundWarmUp:
    """Loads and runs once the models of `paths` in a background thread: `python app.py` starts
    it before importing Gradio, so the models are ready before the page is. Only when
    `can_start_early`: loading must not import TensorFlow while another thread imports Gradio."""

    def __init__(self, paths: dict[str, Path | None], started: float) -> None:
        self._registry = ModelRegistry(paths)
        self._started = started
        self.ready_after: float | None = None  # seconds from `started` until the models were ready
        self._thread = threading.Thread(target=self._run, name="animalcls-warm-up", daemon=True)

    @staticmethod
    def can_start_early(paths: dict[str, Path | None]) -> bool:
        """True when every model loads through ONNX Runtime from a fresh graph, i.e. without
        TensorFlow (two threads importing one module tree can deadlock; seen with TensorFlow)."""
        from animalcls.serving.inference import requested_engine
        from animalcls.serving.onnx_engine import onnxruntime_available
        from animalcls.store import onnx_store
        from animalcls.store.checkpoints import MODEL_FILE

        try:
            if requested_engine() == "tf" or not onnxruntime_available():
                return False
            folders = [Path(folder) for folder in paths.values() if folder is not None]
            return all(onnx_store.find_fresh(f, onnx_store.file_sha256(f / MODEL_FILE))[0] for f in folders)
        except (OSError, ValueError):  # a broken checkpoint or engine name: reported when it is used
            return False

    def start(self) -> BackgroundWarmUp:
        from animalcls.serving.onnx_engine import onnxruntime_available

        if onnxruntime_available():
            import onnxruntime  # noqa: F401 - imported here, so that two threads never import one module at once
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._registry.warm_up()  # a broken checkpoint is printed there and reported on first use
        finally:
            self.ready_after = time.perf_counter() - self._started

    def wait(self) -> float:
        self._thread.join()
        return self.ready_after or 0.0


@dataclass
class JobProgress:
    """A snapshot of a fine-tune's progress, safe to copy and show."""

    epochs: int
    phase: str = "starting"  # starting, features, training, evaluating, done, cancelled, failed
    epoch: int = 0
    batch: int = 0
    steps: int | None = None
    logs: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    features: tuple[int, int] = (0, 0)
    evaluation: tuple[int, int | None] = (0, None)
    started: float = field(default_factory=time.time)
    version: int = 0  # bumped on every change
    epochs_done: int = 0  # bumped at each finished epoch (the curves changed)

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def describe(self) -> str:
        """One line for a status box or a "busy" message."""
        elapsed = f"{self.elapsed:.0f} s elapsed"
        if self.phase in ("features", "checking images"):
            done, total = self.features
            what = "extracting backbone features" if self.phase == "features" else "checking images"
            return f"{what} {done}/{total} ({elapsed})"
        if self.phase == "training":
            batch = f"batch {self.batch}/{self.steps}" if self.steps else f"batch {self.batch}"
            metrics = ", ".join(f"{k} {self.logs[k]:.3f}" for k in ("loss", "accuracy") if k in self.logs)
            return f"epoch {self.epoch}/{self.epochs}, {batch}" + (f", {metrics}" if metrics else "") + f" ({elapsed})"
        if self.phase == "evaluating":
            done, total = self.evaluation
            return f"evaluating on the test split, batch {done}/{total or '?'} ({elapsed})"
        return f"{self.phase} ({elapsed})"

    def fraction(self) -> float | None:
        """Overall progress in [0, 1] for a progress bar, when known."""
        if self.phase in ("features", "checking images") and self.features[1]:
            return self.features[0] / self.features[1]
        if self.phase == "training" and self.steps:
            return min(1.0, ((self.epoch - 1) + self.batch / self.steps) / max(1, self.epochs))
        return None


class FinetuneJob:
    """One fine-tune running `target(hooks)` in a daemon thread; progress is polled with `watch()`."""

    def __init__(self, target: Callable[[TrainHooks], Any], epochs: int, meta: dict[str, Any] | None = None) -> None:
        self.target = target
        self.meta = dict(meta or {})
        self.cancel_event = threading.Event()
        self.abandoned = threading.Event()  # its page closed (or reloaded) while it ran
        self.finished = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._progress = JobProgress(epochs=epochs)
        self._last_working: JobProgress | None = None  # the snapshot just before the job ended
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="animalcls-finetune", daemon=True)

    # --- worker side ---
    def hooks(self) -> TrainHooks:
        return TrainHooks(
            on_batch=self._on_batch,
            on_epoch=self._on_epoch,
            on_eval=self._on_eval,
            on_scan=self._on_scan,
            on_features=self._on_features,
            cancel=self.cancel_event,
        )

    def _update(self, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(self._progress, key, value)
            self._progress.version += 1
            self._changed.notify_all()

    def _on_scan(self, done: int, total: int) -> None:
        self._update(phase="checking images", features=(done, total))

    def _on_features(self, done: int, total: int) -> None:
        self._update(phase="features", features=(done, total))

    def _on_batch(self, epoch: int, batch: int, steps: int | None, logs: dict[str, float]) -> None:
        self._update(phase="training", epoch=epoch, batch=batch, steps=steps, logs=dict(logs))

    def _on_epoch(self, epoch: int, history: dict[str, list[float]]) -> None:
        snapshot = {key: list(values) for key, values in history.items()}
        self._update(epoch=epoch, history=snapshot, epochs_done=len(snapshot.get("loss", [])))

    def _on_eval(self, done: int, total: int | None) -> None:
        self._update(phase="evaluating", evaluation=(done, total))

    def _run(self) -> None:
        try:
            self.result = self.target(self.hooks())
            self._keep_last_working()
            cancelled = bool(getattr(self.result, "cancelled", False))
            history = getattr(self.result, "history", None) or self._progress.history
            self._update(phase="cancelled" if cancelled else "done", history=dict(history))
        except BaseException as exc:  # noqa: BLE001 - reported to the UI, never kills the server
            self._keep_last_working()
            self.error = exc
            if not isinstance(exc, AnimalclsError):
                traceback.print_exc()
            self._update(phase="failed")
        finally:
            self.finished.set()
            with self._changed:
                self._changed.notify_all()

    def _keep_last_working(self) -> None:
        with self._changed:
            if self._progress.version > 0:
                self._last_working = copy.deepcopy(self._progress)

    # --- UI side ---
    def start(self) -> FinetuneJob:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def progress(self) -> JobProgress:
        with self._changed:
            return copy.deepcopy(self._progress)

    def cancel(self) -> None:
        self.cancel_event.set()

    def watch(self, interval: float = 0.5) -> Iterator[JobProgress]:
        """Yield a snapshot whenever progress changed (at most every `interval` s) until the
        job ends; the last snapshot is the final one. The last one of the work itself comes
        before it even when the whole job fits in one interval, so a watcher always sees what
        the job did (its features, its epochs) before "done"."""
        seen = -1
        while True:
            with self._changed:
                if self._progress.version == seen and not self.finished.is_set():
                    self._changed.wait(timeout=interval)
                done = self.finished.is_set()  # read before the snapshot: once set, the snapshot is the final one
                snapshot = copy.deepcopy(self._progress)
                last_working = self._last_working
            if done and last_working is not None and last_working.version > seen:
                yield copy.deepcopy(last_working)
            if snapshot.version != seen or done:
                seen = snapshot.version
                yield snapshot
            if done:
                return
            self.finished.wait(interval)  # coalesce bursts of batch updates; none once it ends

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)


class FinetuneRunner:
    """Allows one fine-tune at a time per server. Keeps the recent jobs (what became of a run
    whose page was reloaded) and the visitors whose fine-tune waits in Gradio's queue, in order
    (their place in line), each known by its owner (the Gradio session hash of its page)."""

    def __init__(self, keep: int = 16) -> None:
        self._lock = threading.Lock()
        self.current: FinetuneJob | None = None
        self._recent: deque[FinetuneJob] = deque(maxlen=keep)
        self._waiting: list[str] = []  # owners whose fine-tune waits behind the running one, oldest first
        self._withdrawn: set[str] = set()  # owners who cancelled while waiting: their turn ends at once

    def start(
        self, target: Callable[[TrainHooks], Any], epochs: int, meta: dict[str, Any] | None = None
    ) -> FinetuneJob:
        with self._lock:
            if self.current is not None and self.current.running:
                raise BusyError(
                    "A fine-tune is already running on this server "
                    f"({self.current.progress().describe()}). Wait for it to finish or press Cancel."
                )
            job = FinetuneJob(target, epochs, meta)
            self.current = job
            self._recent.append(job)
            return job.start()

    def join_queue(self, owner: str) -> int:
        """Note that `owner`'s fine-tune waits in the queue; returns its place in line (1: next)."""
        with self._lock:
            self._withdrawn.discard(owner)
            if owner not in self._waiting:
                self._waiting.append(owner)
            return self._waiting.index(owner) + 1

    def leave_queue(self, owner: str | None) -> bool:
        """`owner`'s turn came (or it never waited); True when it cancelled while waiting."""
        with self._lock:
            if owner in self._waiting:
                self._waiting.remove(owner)
            withdrawn = owner in self._withdrawn
            self._withdrawn.discard(owner)
            return withdrawn

    def withdraw(self, owner: str | None) -> bool:
        """`owner` cancels its waiting fine-tune (it will not run); False when it was not waiting."""
        with self._lock:
            if owner not in self._waiting:
                return False
            self._waiting.remove(owner)
            self._withdrawn.add(owner)
            return True

    def last_of(self, owner: str | None) -> FinetuneJob | None:
        """The newest recent job of `owner`, or None."""
        with self._lock:
            return next((job for job in reversed(self._recent) if owner and job.meta.get("owner") == owner), None)

    def abandon(self, owner: str | None) -> None:
        """`owner`'s page closed: its running fine-tune (if any) is cancelled, and remembered as
        abandoned so that a reload of that page can say what happened; it leaves the queue."""
        self.leave_queue(owner)
        job = self.last_of(owner)
        if job is not None and job.running:
            job.abandoned.set()
            job.cancel()

    def cancel(self) -> bool:
        """Ask the running fine-tune to stop after its current batch; False when none runs."""
        with self._lock:
            job = self.current
        if job is None or not job.running:
            return False
        job.cancel()
        return True

    @property
    def busy(self) -> bool:
        with self._lock:
            return self.current is not None and self.current.running
