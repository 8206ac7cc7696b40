"""A checkpoint's head (every layer after the pooling layer) as NumPy arrays, widened for new
classes and trained on pooled features in NumPy: no TensorFlow graph to trace, so a few-shot
teach trains in about a second on a CPU, and a browser session can keep its own head.

Heads this project builds: transfer `Dense 512 ReLU -> Dense N softmax`; scratch
`[Dropout] -> Dense N softmax`. Widening keeps the hidden layers and the old classes' output
columns as they are and adds one column per new class, initialised by *weight imprinting*
(Qi et al., 2018), centred on the old photos' mean activation (see `Head._imprint`). Training
then updates the output layer (Adam, class-balanced cross-entropy, the last Dropout applied as
in Keras); `TrainSettings.train_hidden` trains the hidden layers too. Last, `limit_new_classes`
lowers a new class's bias until it claims at most a small share of the original classes' photos
(see there why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

EpochHook = Callable[[int, dict[str, list[float]]], None]


@dataclass
class Head:
    """Dense layers after the pooling layer: hidden ones ReLU, the last softmax. `dropout` is the
    rate of a Dropout layer right before the last Dense (0 when none)."""

    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    dropout: float = 0.0
    hidden_names: list[str] = field(default_factory=list)  # Keras names of the hidden Dense layers

    @property
    def num_classes(self) -> int:
        return int(self.kernels[-1].shape[1])

    def penultimate(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        for kernel, bias in zip(self.kernels[:-1], self.biases[:-1]):
            x = np.maximum(x @ kernel + bias, 0.0)
        return x

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.penultimate(features) @ self.kernels[-1] + self.biases[-1])

    def copy(self) -> Head:
        return Head(
            [k.copy() for k in self.kernels], [b.copy() for b in self.biases], self.dropout, list(self.hidden_names)
        )

    def widened(self, num_classes: int, new_features: dict[int, np.ndarray], centre: np.ndarray) -> Head:
        """A copy with `num_classes` outputs; columns beyond the old ones are imprinted from
        `new_features` (output index -> that class's pooled features), relative to `centre`
        (the old classes' photos' mean penultimate activation): see `_imprint`."""
        head = self.copy()
        old = self.num_classes
        if num_classes < old:
            raise ValueError(f"Cannot shrink a head from {old} to {num_classes} classes.")
        pairs = [self._imprint(head.penultimate(new_features[i]), centre) for i in range(old, num_classes)]
        if pairs:
            columns = np.stack([column for column, _ in pairs], axis=1)
            head.kernels[-1] = np.concatenate([head.kernels[-1], columns], axis=1).astype(np.float32)
            head.biases[-1] = np.concatenate([head.biases[-1], np.asarray([b for _, b in pairs], np.float32)])
        return head

    def _imprint(self, activations: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, float]:
        """Weight imprinting, centred: the direction from the old photos' mean activation to the
        new class's, at the old columns' mean norm, with a bias that gives a typical old photo
        the old classes' mean bias. (Plain imprinting of ReLU activations points where every
        photo points, and would first claim every photo for the new class.)"""
        kernel, bias = self.kernels[-1], self.biases[-1]
        direction = activations.mean(axis=0) - centre
        column = direction / max(float(np.linalg.norm(direction)), 1e-12) * float(np.linalg.norm(kernel, axis=0).mean())
        return column.astype(np.float32), float(bias.mean() - centre @ column)


def limit_new_classes(head: Head, old_hidden: np.ndarray, old_classes: int, share: float) -> tuple[Head, list[float]]:
    """A copy of `head` whose new output columns (from `old_classes` on) win on at most `share`
    of `old_hidden` (the original classes' training photos, penultimate activations), by
    lowering each new column's bias; returns it and the amounts lowered.

    Why: the class-balanced loss gives a few new photos the weight of a whole class, so the new
    class's region grows until it holds all of them, and the stored photos of the old classes
    do not push back, because their features are those the model was trained on, more
    separable than a new photo's. On features that do not tell the new animal from the old
    ones (a model trained from scratch on five classes), the new class then claims many old
    photos at test time. The share is read on the training photos, so it is a floor: at test
    time a new class claims somewhat more.
    """
    head = head.copy()
    logits = old_hidden @ head.kernels[-1] + head.biases[-1]
    best_old = logits[:, :old_classes].max(axis=1)
    lowered = []
    for column in range(old_classes, head.num_classes):
        margin = logits[:, column] - best_old  # > 0: the new class wins that photo
        shift = max(0.0, float(np.quantile(margin, 1.0 - share))) if len(margin) else 0.0
        head.biases[-1][column] -= shift
        lowered.append(shift)
    return head, lowered


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights n / (classes present * n_class): 10 dog photos count as much as 480 cats."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = int((counts > 0).sum())
    per_class = np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)
    return per_class[labels].astype(np.float32)


@dataclass
class TrainSettings:
    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 42
    # Train the hidden layers (transfer: Dense 512) too. Off by default: on 2 shared CPU cores a
    # 2-epoch teach of the bundled transfer model took 13.8 s with them, 0.7-1.0 s without
    # (the output layer trains on penultimate activations computed once).
    train_hidden: bool = False
    # The most a new class may claim of the original classes' stored training photos: see limit_new_classes.
    max_claimed: float = 0.01


def train_head(
    head: Head,
    features: np.ndarray,
    labels: np.ndarray,
    settings: TrainSettings,
    on_epoch: EpochHook | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Head, dict[str, list[float]], bool]:
    """Adam on class-balanced cross-entropy over shuffled mini-batches; returns the trained
    copy, the history (loss, accuracy per epoch) and whether `cancel` stopped it early.
    Without `settings.train_hidden` only the output layer trains, on activations computed once."""
    head = head.copy()
    if not settings.train_hidden and len(head.kernels) > 1:
        return train_output_layer(head, head.penultimate(features), labels, settings, on_epoch, cancel)
    from threadpoolctl import threadpool_limits

    # Mini-batch matrices are small: one BLAS thread. Two threads on a busy 2-core machine
    # made such products 6x slower (head_fit.py measured it).
    with threadpool_limits(1, user_api="blas"):
        return _train_all_layers(head, features, labels, settings, on_epoch, cancel)


def _train_all_layers(
    head: Head,
    features: np.ndarray,
    labels: np.ndarray,
    settings: TrainSettings,
    on_epoch: EpochHook | None,
    cancel: threading.Event | None,
) -> tuple[Head, dict[str, list[float]], bool]:
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    weights = balanced_weights(y, head.num_classes)
    params = [*head.kernels, *head.biases]
    adam = Adam(params, settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for epoch in range(1, settings.epochs + 1):
        if cancel is not None and cancel.is_set():
            return head, history, True
        order = rng.permutation(len(x))
        loss_sum = correct = 0.0
        for start in range(0, len(x), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            loss, hits, grads = _gradients(head, x[batch], y[batch], weights[batch], rng)
            adam.step(params, grads)
            loss_sum, correct = loss_sum + loss, correct + hits
        history["loss"].append(loss_sum / float(weights.sum()))
        history["accuracy"].append(correct / len(x))
        if on_epoch:
            on_epoch(epoch, history)
    return head, history, False


def train_output_layer(
    head: Head,
    hidden: np.ndarray,
    labels: np.ndarray,
    settings: TrainSettings,
    on_epoch: EpochHook | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Head, dict[str, list[float]], bool]:
    """`train_head` of the output layer only, given the penultimate activations `hidden`."""
    last = Head(head.kernels[-1:], head.biases[-1:], head.dropout)
    trained, history, cancelled = train_head(last, hidden, labels, settings, on_epoch, cancel)
    head = head.copy()
    head.kernels[-1], head.biases[-1] = trained.kernels[0], trained.biases[0]
    return head, history, cancelled


def _gradients(head: Head, x: np.ndarray, y: np.ndarray, w: np.ndarray, rng: np.random.Generator):
    """(weighted loss sum, correct count, grads in [kernels..., biases...] order) of one batch's
    weighted mean cross-entropy."""
    probs, grads = backprop(head, x, y, rng, weights=w)
    picked = probs[np.arange(len(y)), y]
    loss = float(-(w * np.log(np.maximum(picked, 1e-12))).sum())
    hits = float((probs.argmax(axis=1) == y).sum())
    return loss, hits, grads


def backprop(
    head: Head,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    clip: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities, grads in [kernels..., biases...] order) of one batch's cross-entropy,
    averaged with `weights` (None: the plain mean). Dropout draws its mask from `rng`; `clip`
    keeps the probabilities inside [clip, 1 - clip] for the gradient, as Keras's loss does."""
    activations, pre = [x], []
    for kernel, bias in zip(head.kernels[:-1], head.biases[:-1]):
        pre.append(activations[-1] @ kernel + bias)
        activations.append(np.maximum(pre[-1], 0.0))
    last = activations[-1]
    mask = None
    if head.dropout > 0:
        mask = (rng.random(last.shape) >= head.dropout).astype(np.float32) / (1.0 - head.dropout)
        last = last * mask
    probs = softmax(last @ head.kernels[-1] + head.biases[-1])
    delta = np.clip(probs, clip, 1 - clip) if clip else probs.copy()
    delta[np.arange(len(y)), y] -= 1.0
    if weights is None:
        delta /= len(y)
    else:
        delta *= (weights / max(float(weights.sum()), 1e-12))[:, None]
    kernel_grads = [last.T @ delta]
    bias_grads = [delta.sum(axis=0)]
    back = delta @ head.kernels[-1].T
    if mask is not None:
        back = back * mask
    for i in range(len(head.kernels) - 2, -1, -1):
        back = back * (pre[i] > 0)
        kernel_grads.insert(0, activations[i].T @ back)
        bias_grads.insert(0, back.sum(axis=0))
        if i:  # the pooled features themselves need no gradient
            back = back @ head.kernels[i].T
    return probs, [*kernel_grads, *bias_grads]


class Adam:
    """Keras's Adam (beta 0.9 / 0.999, epsilon 1e-7) updating the arrays in place, through
    preallocated buffers: allocating temporaries made each step of the 655k-weight head 2x slower."""

    def __init__(self, params: list[np.ndarray], learning_rate: float) -> None:
        self.lr, self.t = learning_rate, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self._buffers = [np.empty_like(p) for p in params]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        rate = self.lr * np.sqrt(1 - 0.999**self.t) / (1 - 0.9**self.t)
        for p, g, m, v, tmp in zip(params, grads, self.m, self.v, self._buffers):
            np.multiply(g, 0.1, out=tmp)
            m *= 0.9
            m += tmp
            np.multiply(g, g, out=tmp)
            tmp *= 0.001
            v *= 0.999
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += 1e-7
            np.divide(m, tmp, out=tmp)
            tmp *= rate
            p -= tmp
