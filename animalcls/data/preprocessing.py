"""How an image becomes model input, for every backbone: resize to size x size with an
antialiased bilinear filter, keep raw RGB 0-255; the scaling (x * scale + offset) happens inside
the model. Needs only numpy and PIL, so the serving path never loads TensorFlow.

Training and evaluation decode and resize in tf.data (`data.decode_resize`, parallel and in
graph); `to_model_input` is the same resize in PIL: PIL's BILINEAR on a float ("F") image is a
triangle filter widened by the scale factor when shrinking, which is exactly TensorFlow's
`tf.image.resize(method="bilinear", antialias=True)`; on real photos the two agree to about
0.003 of 255 (tests/test_preprocessing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESIZE_FILTERS = {"bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """A backbone's input spec: the model takes raw RGB 0-255 resized with `resize`
    (antialiased when shrinking) and computes `x * scale + offset` in its first layer."""

    scale: float
    offset: float = 0.0
    resize: str = "bilinear"
    antialias: bool = True

    def describe(self) -> str:
        """One line for manifests and model cards."""
        smooth = "antialiased " if self.antialias else ""
        return (
            f"raw RGB 0-255, {smooth}{self.resize} resize; inside the model: x * {self.scale:.6g} + {self.offset:.6g}"
        )


DEFAULT = Preprocessing(scale=1.0 / 255.0)


def to_model_input(image: Image.Image, image_size: int, spec: Preprocessing = DEFAULT) -> np.ndarray:
    """RGB PIL image -> float32 array (size, size, 3) of raw 0-255 values, resized as in
    training. Each channel is resized as a float image, so nothing is rounded to 8 bits."""
    if spec.resize not in RESIZE_FILTERS or not spec.antialias:
        raise ValueError(f"Only antialiased {', '.join(RESIZE_FILTERS)} resizing is supported, got {spec}.")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F").resize(
                (image_size, image_size), RESIZE_FILTERS[spec.resize]
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=-1)
