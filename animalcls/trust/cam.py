"""Class-activation maps from one forward pass, in numpy only (no TensorFlow, any engine).

Both model kinds end in global average pooling followed by a head that sees only the pooled
vector (Dense softmax, or Dense ReLU then Dense softmax). So the gradient of a class logit
with respect to the last feature map A (h, w, D) is the same at every position:
d logit / d A[i, j, k] = (1 / hw) * d logit / d pooled[k], and that gradient is a small matmul
through the head's Dense weights. Grad-CAM and Grad-CAM++ then need only the feature map and
the pooled vector that the serving graph already returns: no backward pass, no TF at serving.
"""

from __future__ import annotations

import numpy as np

from animalcls.heads.reader import DenseHead

METHODS = ("gradcam", "gradcam++")


def logit_gradient(head: DenseHead, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """d logit[class] / d pooled for each row: (N, D). ReLU masks come from the forward values;
    like TensorFlow, a unit at exactly zero passes no gradient."""
    x = np.asarray(pooled, np.float64)
    masks = []
    for layer in head.layers[:-1]:
        pre = x @ layer.kernel + layer.bias
        masks.append(pre > 0 if layer.activation == "relu" else np.ones_like(pre, bool))
        x = layer.activate(pre)
    last = np.asarray(head.layers[-1].kernel, np.float64)
    grad = last.T[np.asarray(classes)]  # (N, units of the last hidden layer)
    for layer, mask in zip(reversed(head.layers[:-1]), reversed(masks)):
        grad = (grad * mask) @ layer.kernel.T
    return grad


def channel_gradients(head: DenseHead, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """d logit / d A[i, j, k] (the same at every i, j): (N, D)."""
    height, width = feature_map.shape[1:3]
    return logit_gradient(head, pooled, classes) / (height * width)


def grad_cam(head: DenseHead, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.): ReLU(sum_k mean_ij(dy/dA_k) * A_k). Returns (N, h, w)."""
    weights = channel_gradients(head, feature_map, pooled, classes)
    return np.maximum(np.einsum("nhwd,nd->nhw", np.asarray(feature_map, np.float64), weights), 0.0)


def grad_cam_plus_plus(head: DenseHead, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al.) with the usual exponential-score closed form:
    alpha = g^2 / (2 g^2 + sum_ij A * g^3), w_k = sum_ij alpha * ReLU(g). g is uniform in i, j."""
    a = np.asarray(feature_map, np.float64)
    g = channel_gradients(head, a, pooled, classes)  # (N, D)
    height, width = a.shape[1:3]
    denominator = 2 * g**2 + a.sum(axis=(1, 2)) * g**3
    alpha = np.divide(g**2, denominator, out=np.zeros_like(g), where=np.abs(denominator) > 1e-30)
    weights = height * width * alpha * np.maximum(g, 0.0)
    return np.maximum(np.einsum("nhwd,nd->nhw", a, weights), 0.0)


def class_activation_map(
    method: str, head: DenseHead, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    if method == "gradcam":
        return grad_cam(head, feature_map, pooled, classes)
    if method == "gradcam++":
        return grad_cam_plus_plus(head, feature_map, pooled, classes)
    raise ValueError(f"Unknown CAM method '{method}': choose one of {', '.join(METHODS)}.")


def normalise(heatmap: np.ndarray) -> np.ndarray:
    """A non-negative map scaled to sum to 1; an all-zero map (nothing votes for the class)
    becomes uniform, so callers never divide by zero."""
    heatmap = np.maximum(np.asarray(heatmap, np.float64), 0.0)
    total = heatmap.sum()
    return heatmap / total if total > 0 else np.full_like(heatmap, 1.0 / heatmap.size)


def upsample(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear upsampling of a (h, w) map to (height, width), with PIL (no TF)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(heatmap, np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float64)


def quadrant_mass(heatmap: np.ndarray, quadrant: int, size: int = 224) -> float:
    """Share of a map's mass in one quadrant (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right), measured after upsampling so odd grids (7x7) split fairly."""
    full = np.maximum(upsample(heatmap, size, size), 0.0)
    half = size // 2
    rows = slice(0, half) if quadrant < 2 else slice(half, size)
    cols = slice(0, half) if quadrant % 2 == 0 else slice(half, size)
    total = full.sum()
    return float(full[rows, cols].sum() / total) if total > 0 else 0.25
