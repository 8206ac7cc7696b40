"""Model builders following the study. Each returns an uncompiled keras.Model that takes
raw RGB 0-255 (preprocessing is inside the backbone) and outputs class probabilities."""

from __future__ import annotations

import keras
from keras import layers

from animalcls.core.settings import BACKBONE_LAYER, INPUT_LAYER, POOL_LAYER, PREDICTIONS_LAYER
from animalcls.models.backbones import build_backbone, get_backbone


def _input(image_size: int) -> keras.KerasTensor:
    return keras.Input((image_size, image_size, 3), name=INPUT_LAYER)


def _predictions(num_classes: int) -> layers.Dense:
    # float32 whatever the dtype policy: a softmax in float16/bfloat16 rounds small
    # probabilities to 0 and makes the cross-entropy unstable under mixed precision.
    return layers.Dense(num_classes, activation="softmax", name=PREDICTIONS_LAYER, dtype="float32")


def build_scratch(
    backbone: str,
    num_classes: int,
    image_size: int | None = None,
    dropout: float = 0.0,
    bn_momentum: float | None = None,
) -> keras.Model:
    """The study's scratch model: the whole backbone randomly initialised and trainable,
    then global average pooling and a softmax layer (Keras's own `include_top` head).

    `bn_momentum` overrides the BatchNorm moving-average momentum (Keras: 0.99). On a few
    thousand photos 0.99 lags the fast-changing activations of a net trained from scratch,
    so inference-mode predictions collapse to one class for many epochs; 0.9 tracks them.
    """
    size = image_size or get_backbone(backbone).default_image_size
    base = build_backbone(backbone, size, weights=None)
    if bn_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
    inputs = _input(size)
    x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(base(inputs))
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(num_classes)(x)
    return keras.Model(inputs, outputs, name=f"scratch_{backbone}")


def build_transfer(
    backbone: str,
    num_classes: int,
    image_size: int | None = None,
    weights: str | None = "imagenet",
    dropout: float = 0.0,
) -> keras.Model:
    """The study's transfer model: a frozen pretrained base run in inference mode, then
    GlobalAveragePooling, Dense 512 ReLU and Dense N softmax."""
    size = image_size or get_backbone(backbone).default_image_size
    base = build_backbone(backbone, size, weights=weights)
    base.trainable = False
    inputs = _input(size)
    # training=False keeps BatchNorm in inference mode even after unfreeze().
    x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(base(inputs, training=False))
    x = layers.Dense(512, activation="relu", name="fc512")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(num_classes)(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone}")


def unfreeze(model: keras.Model, n_layers: int) -> keras.Model:
    """Make the top `n_layers` layers of the backbone trainable for a second fine-tuning
    phase; BatchNorm layers stay frozen so their ImageNet statistics survive. Recompile after."""
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = n_layers > 0
    if n_layers <= 0:
        return model
    for index, layer in enumerate(base.layers):
        top = index >= len(base.layers) - n_layers
        layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
    return model
