"""The one head trainer: a frozen-backbone checkpoint's head trained on pooled features in
NumPy, for fine-tuning (the study's transfer recipe, what train.fit does with Keras: Adam,
categorical cross-entropy, shuffled mini-batches, the flip augmentation drawn per sample and
epoch, EarlyStopping and ReduceLROnPlateau on val_loss, the best val_loss epoch kept) and for
teaching (class-balanced weights, the output layer alone: `fit_output_layer`).

Why not Keras: on 2 shared cores `model.fit` of a Dense 512 head spent 5.3 CPU s on 5 epochs
of 2,100 features, almost all of it tracing graphs and running callbacks; the arithmetic is
about 30 GFLOP, under a second for BLAS. The matrices are small (64 x 1280 @ 1280 x 512), so
BLAS runs on one thread: with two threads on a busy machine it ran 6x slower (measured).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from animalcls.heads.numpy_head import SGD, Adam, Head, backprop, balanced_weights
from animalcls.training.schedules import cosine_rate

BatchHook = Callable[[int, int, int | None, dict[str, float]], None]
EpochHook = Callable[[int, dict[str, list[float]]], None]
HeadHook = Callable[[int, Head], None]  # (epoch, the head after it): copy it to keep it
EPSILON = 1e-7  # Keras clips probabilities to [EPSILON, 1 - EPSILON] in its cross-entropy


@dataclass
class Recipe:
    """The parts of a TrainConfig this trainer follows (see `supports`)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int = 42
    early_stopping_patience: int | None = None
    reduce_lr_patience: int | None = None
    reduce_lr_factor: float = 0.2
    keep_best: bool = False
    balanced: bool = False  # weight each sample n / (classes * n_class): 10 new photos count as a class
    label_smoothing: float = 0.0
    optimizer: str = "adam"  # or "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # Adam only: AdamW
    cosine: bool = False  # per-epoch cosine decay after warmup_epochs (train.CosineWarmup's); no plateau then
    warmup_epochs: int = 0

    @classmethod
    def from_config(cls, config: Any) -> Recipe:
        """The recipe of a train.TrainConfig: every head setting it has, followed exactly."""
        if config.optimizer not in ("adam", "sgd"):
            raise ValueError(f"Unknown optimizer '{config.optimizer}': use 'adam' or 'sgd'.")
        names = [f.name for f in fields(cls) if f.name != "balanced"]
        return cls(**{name: getattr(config, name) for name in names})


@dataclass
class HeadFit:
    head: Head  # the trained head (the best val_loss epoch's with keep_best)
    history: dict[str, list[float]]  # Keras's keys: loss, accuracy, precision, recall, val_*, learning_rate
    seconds: float
    cancelled: bool
    best_epoch: int | None


def fit_output_layer(
    head: Head,
    hidden: tuple[np.ndarray, np.ndarray],
    recipe: Recipe,
    on_epoch: EpochHook | None = None,
    cancel: threading.Event | None = None,
) -> HeadFit:
    """`fit_head` of the output layer alone, on the penultimate activations `hidden` (features,
    labels) computed once: the hidden layers stay as they are."""
    last = Head(head.kernels[-1:], head.biases[-1:], head.dropout)
    fitted = fit_head(last, hidden, None, recipe, on_epoch=on_epoch, cancel=cancel)
    whole = head.copy()
    whole.kernels[-1], whole.biases[-1] = fitted.head.kernels[0], fitted.head.biases[0]
    fitted.head = whole
    return fitted


def fit_head(
    head: Head,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    recipe: Recipe,
    flipped: np.ndarray | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    cancel: threading.Event | None = None,
    on_head: HeadHook | None = None,
) -> HeadFit:
    """Train a copy of `head` on (features, integer labels). Given `flipped` (the flipped
    photos' features, row for row), each sample uses them with probability 1/2 per epoch.
    A cancel stops after the current batch and keeps the last finished epoch. `on_head` sees
    the head after each epoch (a caller that picks the epoch its own way keeps a copy)."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        loop = _Loop(head.copy(), recipe, on_batch, cancel)
        loop.run(train, val, flipped, on_epoch, on_head)
    best = loop.best_epoch if recipe.keep_best and val is not None else None
    return HeadFit(
        loop.best_head if best else loop.head, loop.history, time.perf_counter() - start, loop.cancelled, best
    )


class _Loop:
    def __init__(self, head: Head, recipe: Recipe, on_batch: BatchHook | None, cancel: threading.Event | None) -> None:
        self.head, self.recipe, self.on_batch, self.cancel = head, recipe, on_batch, cancel
        self.params = [*head.kernels, *head.biases]  # trained in place
        self.optimizer = (
            SGD(self.params, recipe.learning_rate, recipe.momentum)
            if recipe.optimizer == "sgd"
            else Adam(self.params, recipe.learning_rate, recipe.weight_decay)
        )
        self.rng = np.random.default_rng(recipe.seed)
        self.history: dict[str, list[float]] = {}
        self.cancelled, self.best_head, self.best_epoch = False, head.copy(), None
        self.weights: np.ndarray | None = None

    def run(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray] | None,
        flipped: np.ndarray | None,
        on_epoch: EpochHook | None,
        on_head: HeadHook | None = None,
    ) -> None:
        x, y = np.asarray(train[0], np.float32), np.asarray(train[1], np.int64)
        self.weights = balanced_weights(y, self.head.num_classes) if self.recipe.balanced else None
        stop, plateau = (
            _Patience(self.recipe.early_stopping_patience, 0.0),
            _Patience(self.recipe.reduce_lr_patience, 1e-4),
        )
        best_loss = np.inf
        for epoch in range(1, self.recipe.epochs + 1):
            if self.recipe.cosine:
                self.optimizer.lr = cosine_rate(
                    self.recipe.learning_rate, self.recipe.epochs, self.recipe.warmup_epochs, epoch - 1
                )
            began, saved = time.perf_counter(), ([p.copy() for p in self.params], self.optimizer.state())
            logs = self._epoch(epoch, x, y, flipped)
            if logs is None:  # cancelled mid-epoch: undo its batches
                self._restore(*saved)
                return
            if val is not None:
                probs = self.head.probabilities(val[0])
                logs.update({f"val_{k}": v for k, v in _metrics(probs, np.asarray(val[1], np.int64)).items()})
            logs.update(epoch_seconds=time.perf_counter() - began, learning_rate=float(self.optimizer.lr))
            for key, value in logs.items():
                self.history.setdefault(key, []).append(float(value))
            if on_epoch:
                on_epoch(epoch, {k: list(v) for k, v in self.history.items()})
            if on_head:
                on_head(epoch, self.head)
            if val is None:
                continue
            if logs["val_loss"] < best_loss:
                best_loss, self.best_epoch, self.best_head = logs["val_loss"], epoch, self.head.copy()
            if plateau.exhausted(logs["val_loss"]) and not self.recipe.cosine:
                self.optimizer.lr *= self.recipe.reduce_lr_factor
                plateau.wait = 0
            if stop.exhausted(logs["val_loss"]):
                return

    def _epoch(self, epoch: int, x: np.ndarray, y: np.ndarray, flipped: np.ndarray | None) -> dict[str, float] | None:
        size = self.recipe.batch_size
        order = self.rng.permutation(len(x))
        coins = self.rng.random(len(x)) < 0.5 if flipped is not None else None
        steps, sums = -(-len(x) // size), np.zeros(5)  # loss, hits, true positives, predicted, actual
        for step, begin in enumerate(range(0, len(x), size), start=1):
            batch = order[begin : begin + size]
            features = x[batch] if coins is None else np.where(coins[batch, None], flipped[batch], x[batch])
            sums += self._step(features, y[batch], None if self.weights is None else self.weights[batch])
            if self.on_batch:
                seen = min(begin + size, len(x))
                self.on_batch(epoch, step, steps, {"loss": sums[0] / seen, "accuracy": sums[1] / seen})
            if self.cancel is not None and self.cancel.is_set():
                self.cancelled = True
                return None
        return _from_sums(sums, len(x))

    def _step(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """One Adam step on the batch's (weighted) mean cross-entropy; returns its metric sums."""
        smoothing = self.recipe.label_smoothing
        probs, grads = backprop(self.head, x, y, self.rng, weights=weights, clip=EPSILON, smoothing=smoothing)
        self.optimizer.step(self.params, grads)
        return _sums(probs, y, smoothing)

    def _restore(self, params: list[np.ndarray], state: tuple) -> None:
        for p, saved in zip(self.params, params):
            p[...] = saved
        self.optimizer.restore(state)


@dataclass
class _Patience:
    """Keras's wait counter: `exhausted` after `patience` epochs without an improvement of
    more than `min_delta` (EarlyStopping: 0; ReduceLROnPlateau: 1e-4)."""

    patience: int | None
    min_delta: float
    best: float = np.inf
    wait: int = 0

    def exhausted(self, value: float) -> bool:
        if self.patience is None:
            return False
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


def _sums(probs: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Cross-entropy sum (against label-smoothed targets, as Keras reports it), correct count,
    and Keras Precision/Recall counts (threshold 0.5 on every class column of the one-hot target)."""
    rows = np.arange(len(y))
    logs = np.log(np.clip(probs, EPSILON, 1 - EPSILON))
    loss = -(1 - smoothing) * logs[rows, y].sum() - smoothing / probs.shape[1] * logs.sum()
    predicted = probs > 0.5
    return np.array([loss, (probs.argmax(axis=1) == y).sum(), predicted[rows, y].sum(), predicted.sum(), len(y)], float)


def _from_sums(sums: np.ndarray, n: int) -> dict[str, float]:
    loss, hits, true_pos, predicted, actual = sums
    return {
        "loss": loss / n,
        "accuracy": hits / n,
        "precision": true_pos / predicted if predicted else 0.0,
        "recall": true_pos / actual if actual else 0.0,
    }


def _metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return _from_sums(_sums(probs, y), len(y))
