"""The NumPy head every head trainer uses: the Dense layers after a checkpoint's pooling layer
as arrays (`Head`), widened for new classes, with the one `backprop` and the one `Adam` of the
project (heads.head_fit trains with them).

Heads this project builds: transfer `Dense 512 ReLU -> Dense N softmax`; scratch
`[Dropout] -> Dense N softmax`. Widening keeps the hidden layers and the old classes' output
columns as they are and adds one column per new class, initialised by *weight imprinting*
(Qi et al., 2018), centred on the old photos' mean activation (see `Head._imprint`).
No TensorFlow: a few-shot teach trains in about a second on a CPU, and a browser session can
keep its own head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


def fresh_head(sizes: list[int], rng: np.random.Generator, hidden_names: list[str] | None = None) -> Head:
    """A new head of Dense layers `sizes` (input, hidden..., classes) initialised as Keras's
    Dense is by default: Glorot-uniform kernels, zero biases."""
    kernels = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernels.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
    biases = [np.zeros(size, np.float32) for size in sizes[1:]]
    return Head(kernels, biases, 0.0, list(hidden_names or [f"dense_{i}" for i in range(len(sizes) - 2)]))


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


def backprop(
    head: Head,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    clip: float = 0.0,
    smoothing: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities, grads in [kernels..., biases...] order) of one batch's cross-entropy,
    averaged with `weights` (None: the plain mean), against targets with label `smoothing` (as
    Keras's). Dropout draws its mask from `rng`; `clip` keeps the probabilities inside
    [clip, 1 - clip] for the gradient, as Keras's loss does."""
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
    if smoothing:
        delta -= smoothing / probs.shape[1]
    delta[np.arange(len(y)), y] -= 1.0 - smoothing
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
    """Keras's Adam (beta 0.9 / 0.999, epsilon 1e-7), and AdamW with `weight_decay` (decoupled,
    as Keras's: the weights shrink by lr * weight_decay before each step), updating the arrays
    in place through preallocated buffers: allocating temporaries made each step of the
    655k-weight head 2x slower."""

    def __init__(self, params: list[np.ndarray], learning_rate: float, weight_decay: float = 0.0) -> None:
        self.lr, self.t, self.weight_decay = learning_rate, 0, weight_decay
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self._buffers = [np.empty_like(p) for p in params]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        rate = self.lr * np.sqrt(1 - 0.999**self.t) / (1 - 0.9**self.t)
        for p, g, m, v, tmp in zip(params, grads, self.m, self.v, self._buffers):
            if self.weight_decay:
                p -= (self.lr * self.weight_decay) * p
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

    def state(self) -> tuple:
        return self.t, [m.copy() for m in self.m], [v.copy() for v in self.v]

    def restore(self, state: tuple) -> None:
        self.t, self.m, self.v = state


class SGD:
    """Keras's SGD with momentum (not Nesterov): velocity = momentum * velocity - lr * grad."""

    def __init__(self, params: list[np.ndarray], learning_rate: float, momentum: float = 0.0) -> None:
        self.lr, self.momentum = learning_rate, momentum
        self.velocity = [np.zeros_like(p) for p in params]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        for p, g, velocity in zip(params, grads, self.velocity):
            velocity *= self.momentum
            velocity -= self.lr * g
            p += velocity

    def state(self) -> tuple:
        return ([v.copy() for v in self.velocity],)

    def restore(self, state: tuple) -> None:
        (self.velocity,) = state
