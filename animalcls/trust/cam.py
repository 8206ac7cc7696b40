"""Class-activation maps from one forward pass, in numpy only (no TensorFlow, any engine).

Both model kinds end in global average pooling followed by a head that sees only the pooled
vector (Dense softmax, or Dense ReLU then Dense softmax). So the gradient of a class logit
with respect to the last feature map A (h, w, D) is the same at every position:
d logit / d A[i, j, k] = (1 / hw) * d logit / d pooled[k], and that gradient is a small matmul
through the head's Dense weights. Grad-CAM and Grad-CAM++ then need only the feature map and
the pooled vector that the serving graph already returns: no backward pass, no TF at serving.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animalcls.core.errors import CheckpointError

METHODS = ("gradcam", "gradcam++")
POOL_LAYER = "avg_pool"  # models.POOL_LAYER, repeated so that serving never imports Keras
_ACTIVATIONS = ("relu", "linear", "softmax")  # softmax only on the last layer: we use its logit


class HeadError(CheckpointError):
    """The model's head is not a chain of Dense layers on the pooled vector."""


@dataclass(frozen=True)
class DenseLayer:
    kernel: np.ndarray  # (inputs, outputs)
    bias: np.ndarray  # (outputs,)
    activation: str


@dataclass(frozen=True)
class HeadWeights:
    """The Dense layers after global average pooling, in order (Dropout is identity at inference)."""

    layers: tuple[DenseLayer, ...]

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """(N, D) pooled vectors -> (N, C) class logits (the last layer's pre-softmax output)."""
        x = np.asarray(pooled, np.float64)
        for layer in self.layers[:-1]:
            x = _activate(x @ layer.kernel + layer.bias, layer.activation)
        last = self.layers[-1]
        return x @ last.kernel + last.bias


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    return np.maximum(x, 0.0) if activation == "relu" else x


def logit_gradient(head: HeadWeights, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """d logit[class] / d pooled for each row: (N, D). ReLU masks come from the forward values;
    like TensorFlow, a unit at exactly zero passes no gradient."""
    x = np.asarray(pooled, np.float64)
    masks = []
    for layer in head.layers[:-1]:
        pre = x @ layer.kernel + layer.bias
        masks.append(pre > 0 if layer.activation == "relu" else np.ones_like(pre, bool))
        x = _activate(pre, layer.activation)
    grad = head.layers[-1].kernel.T[np.asarray(classes)]  # (N, units of the last hidden layer)
    for layer, mask in zip(reversed(head.layers[:-1]), reversed(masks)):
        grad = (grad * mask) @ layer.kernel.T
    return grad


def channel_gradients(
    head: HeadWeights, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """d logit / d A[i, j, k] (the same at every i, j): (N, D)."""
    height, width = feature_map.shape[1:3]
    return logit_gradient(head, pooled, classes) / (height * width)


def grad_cam(head: HeadWeights, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.): ReLU(sum_k mean_ij(dy/dA_k) * A_k). Returns (N, h, w)."""
    weights = channel_gradients(head, feature_map, pooled, classes)
    return np.maximum(np.einsum("nhwd,nd->nhw", np.asarray(feature_map, np.float64), weights), 0.0)


def grad_cam_plus_plus(
    head: HeadWeights, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray
) -> np.ndarray:
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
    method: str, head: HeadWeights, feature_map: np.ndarray, pooled: np.ndarray, classes: np.ndarray
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


# ------------------------------------------------------------- head weights from a .keras file


def load_head_weights(keras_file: str | Path, pool_layer: str = POOL_LAYER) -> HeadWeights:
    """Read the Dense layers after `pool_layer` straight from a Keras 3 `.keras` zip with h5py.

    Keras names each top-level layer's weight group after its class in model order
    (`dense`, `dense_1`, ...), not after the layer's own name, so the i-th Dense of
    config.json maps to the i-th `dense*` group.
    """
    import h5py

    try:
        with zipfile.ZipFile(keras_file) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
        head_configs = _head_layer_configs(config, pool_layer)
        dense_groups = _dense_group_names(config)
        layers = []
        with h5py.File(io.BytesIO(weights), "r") as handle:
            for layer_config in head_configs:
                group = handle["layers"][dense_groups[layer_config["name"]]]["vars"]
                kernel, bias = np.asarray(group["0"], np.float64), np.asarray(group["1"], np.float64)
                layers.append(DenseLayer(kernel, bias, layer_config["activation"]))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise HeadError(f"Cannot read the head's weights from {keras_file} ({type(exc).__name__}: {exc}).") from None
    return HeadWeights(tuple(layers))


def _head_layer_configs(config: dict, pool_layer: str) -> list[dict]:
    layers = config["config"]["layers"]
    names = [layer["config"]["name"] for layer in layers]
    if pool_layer not in names:
        raise HeadError(f"No '{pool_layer}' layer: heatmaps need a global-average-pooling head.")
    head = []
    for layer in layers[names.index(pool_layer) + 1 :]:
        kind, settings = layer["class_name"], layer["config"]
        if kind == "Dropout":
            continue
        if kind != "Dense" or settings.get("activation") not in _ACTIVATIONS or not settings.get("use_bias", True):
            raise HeadError(f"Unsupported head layer {settings['name']} ({kind}) after '{pool_layer}'.")
        head.append({"name": settings["name"], "activation": settings["activation"]})
    if not head or any(layer["activation"] == "softmax" for layer in head[:-1]):
        raise HeadError("The head after the pooling layer must be Dense layers ending in the class layer.")
    return head


def _dense_group_names(config: dict) -> dict[str, str]:
    names = [layer["config"]["name"] for layer in config["config"]["layers"] if layer["class_name"] == "Dense"]
    return {name: "dense" if i == 0 else f"dense_{i}" for i, name in enumerate(names)}
