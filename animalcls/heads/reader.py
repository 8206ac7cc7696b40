"""The one reader of a checkpoint's dense head: the layers after the pooling layer, as NumPy
arrays, from a loaded Keras model or from a checkpoint's `model.keras` on disk.

Every model this project builds ends in global average pooling (`POOL_LAYER`) and then Dense
layers, with at most Dropout between them (transfer: `Dense 512 ReLU -> Dense N softmax`;
scratch: `[Dropout] -> Dense N softmax`). `read_dense_head` checks that shape once and gives a
`DenseHead`; Grad-CAM (trust.cam) and the detector use it as is, and `DenseHead.as_head()` is
the trainable NumPy `Head` of teaching and fine-tuning.

From a file it reads the archive's config.json and model.weights.h5 with h5py, so serving
through ONNX Runtime reads heads without TensorFlow; file reads are cached per file version
and their arrays are read-only, as every caller shares them.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.errors import CheckpointError
from animalcls.core.settings import POOL_LAYER
from animalcls.heads.numpy_head import Head
from animalcls.serving.model_cache import FileCache

ACTIVATIONS = ("relu", "linear", "softmax")  # softmax only on the last layer
KERAS_WEIGHTS = "model.weights.h5"  # the weights' member of a Keras 3 `.keras` archive


class HeadError(CheckpointError):
    """The model's head is not a chain of Dense layers on the pooled vector."""


@dataclass(frozen=True)
class DenseLayer:
    name: str  # the Keras layer's own name
    kernel: np.ndarray  # (inputs, outputs), float32 as stored
    bias: np.ndarray  # (outputs,)
    activation: str

    def activate(self, pre: np.ndarray) -> np.ndarray:
        """The layer's activation of its pre-activation values, softmax left out (callers use logits)."""
        return np.maximum(pre, 0.0) if self.activation == "relu" else pre


@dataclass(frozen=True)
class DenseHead:
    """The Dense layers after the pooling layer, in order; `dropout` is the rate of a Dropout
    layer right before the last Dense (0 when none); `source` names the model or file read."""

    layers: tuple[DenseLayer, ...]
    dropout: float = 0.0
    source: str = ""

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        """(N, D) pooled vectors -> (N, C) class logits (the last layer's pre-softmax output), in float64."""
        x = np.asarray(pooled, np.float64)
        for layer in self.layers[:-1]:
            x = layer.activate(x @ layer.kernel + layer.bias)
        return x @ self.layers[-1].kernel + self.layers[-1].bias

    def as_head(self) -> Head:
        """The trainable NumPy head (fresh, writable arrays); only ReLU layers then a softmax train."""
        activations = [layer.activation for layer in self.layers]
        if activations[-1] != "softmax" or any(a != "relu" for a in activations[:-1]):
            raise HeadError(f"{self.source}: only heads of ReLU Dense layers and a softmax Dense can be taught.")
        return Head(
            [np.array(layer.kernel, np.float32) for layer in self.layers],
            [np.array(layer.bias, np.float32) for layer in self.layers],
            self.dropout,
            [layer.name for layer in self.layers[:-1]],
        )


def read_dense_head(source: Any, pool_layer: str = POOL_LAYER) -> DenseHead:
    """The dense head of `source`: a Keras model (its current weights), a checkpoint folder or
    a `.keras` file (read with h5py, no TensorFlow; cached while the file is unchanged).
    HeadError when the head is not Dense layers (and Dropout) after `pool_layer`."""
    if hasattr(source, "layers"):
        return _from_model(source, pool_layer)
    from animalcls.store.checkpoints import MODEL_FILE

    path = Path(source).resolve()
    keras_file = path if path.is_file() else path / MODEL_FILE
    if not keras_file.is_file():
        raise CheckpointError(f"Missing {MODEL_FILE} in {source}")
    return _FILE_HEADS.get(keras_file, pool_layer, lambda: _from_file(keras_file, pool_layer))


def head_layers(model: Any, pool_layer: str = POOL_LAYER) -> list[Any]:
    """The Keras layers after the pooling layer that hold weights: what a head-only fine-tune
    trains, restores and writes back."""
    return [layer for layer in _layers_after_pool(model, pool_layer) if layer.weights]


def dense_weight_groups(config: dict) -> dict[str, str]:
    """Dense layer name -> its group in a `.keras` archive's model.weights.h5. Keras names each
    top-level layer's group after its class in model order (`dense`, `dense_1`, ...), not after
    the layer's own name, so the i-th Dense of config.json is the i-th `dense*` group."""
    names = [layer["config"]["name"] for layer in config["config"]["layers"] if layer["class_name"] == "Dense"]
    return {name: "dense" if i == 0 else f"dense_{i}" for i, name in enumerate(names)}


# Heads read from files, keyed by file and modification time (bounded like the loaded models).
_FILE_HEADS: FileCache[DenseHead] = FileCache()


def _layers_after_pool(model: Any, pool_layer: str) -> list[Any]:
    names = [layer.name for layer in model.layers]
    if pool_layer not in names:
        raise HeadError(f"No '{pool_layer}' layer in {model.name}: the head must follow global average pooling.")
    return model.layers[names.index(pool_layer) + 1 :]


def _from_model(model: Any, pool_layer: str) -> DenseHead:
    after = _layers_after_pool(model, pool_layer)
    dense, dropout = _checked([(type(layer).__name__, layer.get_config()) for layer in after], pool_layer)
    weights = {layer.name: layer for layer in after}
    layers = tuple(
        DenseLayer(
            config["name"],
            np.asarray(weights[config["name"]].kernel.numpy(), np.float32),
            np.asarray(weights[config["name"]].bias.numpy(), np.float32),
            config["activation"],
        )
        for config in dense
    )
    return DenseHead(layers, dropout, model.name)


def _from_file(keras_file: Path, pool_layer: str) -> DenseHead:
    import h5py

    try:
        with zipfile.ZipFile(keras_file) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read(KERAS_WEIGHTS)
        layers = config["config"]["layers"]
        names = [layer["config"]["name"] for layer in layers]
        if pool_layer not in names:
            raise HeadError(f"No '{pool_layer}' layer in {keras_file}: the head must follow global average pooling.")
        after = [(layer["class_name"], layer["config"]) for layer in layers[names.index(pool_layer) + 1 :]]
        dense, dropout = _checked(after, pool_layer)
        groups = dense_weight_groups(config)
        with h5py.File(io.BytesIO(weights), "r") as handle:
            arrays = [handle["layers"][groups[c["name"]]]["vars"] for c in dense]
            read = [(_frozen(group["0"]), _frozen(group["1"])) for group in arrays]
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise HeadError(f"Cannot read the head's weights from {keras_file} ({type(exc).__name__}: {exc}).") from None
    layers_read = tuple(DenseLayer(c["name"], k, b, c["activation"]) for c, (k, b) in zip(dense, read))
    return DenseHead(layers_read, dropout, str(keras_file))


def _frozen(dataset: Any) -> np.ndarray:
    array = np.asarray(dataset, np.float32)
    array.setflags(write=False)
    return array


def _checked(after: list[tuple[str, dict]], pool_layer: str) -> tuple[list[dict], float]:
    """(configs of the Dense layers, rate of a Dropout right before the last one) of the layers
    after the pooling layer, given as (class name, config) pairs; HeadError for any other head."""
    dense = []
    for kind, config in after:
        if kind == "Dropout":
            continue
        if kind != "Dense" or config.get("activation") not in ACTIVATIONS or not config.get("use_bias", True):
            raise HeadError(f"Unsupported head layer {config['name']} ({kind}) after '{pool_layer}'.")
        dense.append(config)
    if not dense or any(config["activation"] == "softmax" for config in dense[:-1]):
        raise HeadError("The head after the pooling layer must be Dense layers ending in the class layer.")
    dropout = float(after[-2][1]["rate"]) if len(after) > 1 and after[-2][0] == "Dropout" else 0.0
    return dense, dropout
