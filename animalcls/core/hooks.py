"""Callbacks for long work (tqdm bars in the CLI, gr.Progress and live plots in the app).
A leaf with no Keras import, so the app's state and the CLI's bars stay light."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

# on_batch(epoch, batch, batches_per_epoch, logs); on_epoch(epoch, history_so_far)
BatchHook = Callable[[int, int, int | None, dict[str, float]], None]
EpochHook = Callable[[int, dict[str, list[float]]], None]
# on_progress(done, total), e.g. images scanned or features extracted
ProgressHook = Callable[[int, int], None]
# on_eval(batches_done, batches_total or None)
EvalHook = Callable[[int, int | None], None]


@dataclass
class TrainHooks:
    """Optional callbacks for training, fine-tuning and evaluation, plus a cancel event."""

    on_scan: ProgressHook | None = None
    on_batch: BatchHook | None = None
    on_epoch: EpochHook | None = None
    on_eval: EvalHook | None = None
    on_features: ProgressHook | None = None  # backbone feature extraction (done, total)
    cancel: threading.Event | None = None
