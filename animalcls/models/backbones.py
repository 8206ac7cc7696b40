"""Backbone registry: each entry builds a feature extractor that takes raw RGB 0-255 and
records its input spec (`preprocessing.Preprocessing`: default size, resize, scale, offset).

The scaling lives inside every backbone (a Rescaling layer built from the spec), so no caller
can get it wrong; the resize is `preprocessing.to_model_input` / `data.decode_resize`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from animalcls.core.errors import WeightsUnavailableError
from animalcls.core.settings import (
    BACKBONE_IMAGE_SIZES,
    BACKBONE_LAYER,
    INCEPTION_NOTOP_FILE,
    INPUT_LAYER,
    PREPROCESS_LAYER,
    keras_models_dir,
)
from animalcls.core.settings import default_backbone as default_backbone
from animalcls.data.preprocessing import Preprocessing
from animalcls.models.efficientnet_lite import architecture as efficientnet_lite
from animalcls.models.efficientnet_lite import converter as convert_efficientnet_lite

# Keras's own download has no timeout of its own; this bounds every socket it opens.
DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone. `build(image_size, weights)` returns a keras.Model named
    "backbone" mapping (size, size, 3) raw RGB 0-255 to a 4-D feature map."""

    name: str
    default_image_size: int
    min_image_size: int
    preprocessing: Preprocessing
    build: Callable[[int, str | None], keras.Model]
    has_imagenet_weights: bool = True


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown backbone '{name}'. Choose one of: {', '.join(list_backbones())}.") from None


def build_backbone(name: str, image_size: int | None = None, weights: str | None = None) -> keras.Model:
    """Build a registered backbone.

    `weights` is None (random initialisation), "imagenet" (Keras's download and cache, or
    the package-shipped weights for efficientnet_lite0) or a path to a Keras weights file.
    """
    spec = get_backbone(name)
    size = image_size or spec.default_image_size
    if size < spec.min_image_size:
        raise ValueError(f"Backbone '{name}' needs an image size of at least {spec.min_image_size}, got {size}.")
    if weights is None or weights == "imagenet":
        if weights == "imagenet" and not spec.has_imagenet_weights:
            raise WeightsUnavailableError(f"Backbone '{name}' has no ImageNet weights; use weights=None or a file.")
        return spec.build(size, weights)
    return _with_local_weights(spec, size, Path(weights))


def _with_local_weights(spec: BackboneSpec, size: int, path: Path) -> keras.Model:
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file not found: {path}")
    model = spec.build(size, None)
    try:
        model.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a mismatched file
        raise WeightsUnavailableError(f"Could not load weights for '{spec.name}' from {path}: {exc}") from exc
    return model


@contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _named(inputs, outputs, name: str = BACKBONE_LAYER) -> keras.Model:
    return keras.Model(inputs, outputs, name=name)


def _build_inception_v3(size: int, weights: str | None) -> keras.Model:
    inputs = keras.Input((size, size, 3), name=INPUT_LAYER)
    # InceptionV3 was trained on inputs scaled to [-1, 1].
    x = _rescaling(INCEPTION_V3)(inputs)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            base = keras.applications.InceptionV3(include_top=False, weights=weights, input_tensor=x)
    except Exception as exc:  # noqa: BLE001 - Keras raises a bare Exception on fetch failure
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"ImageNet weights for inception_v3 are not cached and could not be downloaded ({exc}). "
            f"Put {INCEPTION_NOTOP_FILE} in {keras_models_dir()} (set KERAS_HOME to move it), "
            "pass a local weights file, or use --backbone efficientnet_lite0, whose weights ship offline."
        ) from None
    return _named(inputs, base.output)


def _build_tiny(size: int, weights: str | None) -> keras.Model:
    """A few-thousand-parameter CNN for fast tests; not meant to classify anything well."""
    inputs = keras.Input((size, size, 3), name=INPUT_LAYER)
    x = _rescaling(TINY)(inputs)
    for i, filters in enumerate((8, 16)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    return _named(inputs, x)


def _rescaling(spec: Preprocessing) -> layers.Rescaling:
    # Rescaling (not a Lambda) so that checkpoints load in Keras safe_mode.
    return layers.Rescaling(spec.scale, offset=spec.offset, name=PREPROCESS_LAYER)


# InceptionV3 was trained on inputs scaled to [-1, 1]; EfficientNet-Lite on (x - 127) / 128.
INCEPTION_V3 = Preprocessing(scale=1.0 / 127.5, offset=-1.0)
EFFICIENTNET_LITE0 = Preprocessing(
    scale=1.0 / efficientnet_lite.INPUT_STD, offset=-efficientnet_lite.INPUT_MEAN / efficientnet_lite.INPUT_STD
)
TINY = Preprocessing(scale=1.0 / 255.0)

register_backbone(
    BackboneSpec("inception_v3", *BACKBONE_IMAGE_SIZES["inception_v3"], INCEPTION_V3, _build_inception_v3)
)
register_backbone(
    BackboneSpec(
        "efficientnet_lite0",
        *BACKBONE_IMAGE_SIZES["efficientnet_lite0"],
        EFFICIENTNET_LITE0,
        convert_efficientnet_lite.build_backbone,
    )
)
register_backbone(BackboneSpec("tiny", *BACKBONE_IMAGE_SIZES["tiny"], TINY, _build_tiny, has_imagenet_weights=False))


def imagenet_classifier(name: str = "efficientnet_lite0") -> keras.Model:
    """A full ImageNet classifier: raw RGB 0-255 in, 1000 probabilities (standard order) out."""
    if name != "efficientnet_lite0":
        raise ValueError(f"No ImageNet classifier for '{name}'; only efficientnet_lite0 has one.")
    return convert_efficientnet_lite.build_classifier()
