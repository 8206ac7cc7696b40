"""Robust augmentation of whole batches inside the TensorFlow graph, fed from photos decoded once.

The per-photo numpy/PIL recipe (`augment.RobustAugment`) keeps a small network waiting: its
Python loop is far slower than the training step on two CPU cores (benchmarks/bench_scratch_pipeline.py).
Here the photos are decoded and resized once into a uint8 array (the training size plus a margin
for crops), and every random view is drawn for a whole batch by TensorFlow ops in a `tf.data`
pipeline: random resized crops, flips, colour jitter, greyscale, Gaussian blur, downscale-and-back,
JPEG re-compression, then MixUp or CutMix on the batch. The same degradations as `RobustAugment`
(strengths given at the 192 px of the development photos and scaled), so a from-scratch network
cannot separate the classes by the sharpness, resolution or colour grading of their sources.

Randomness is stateless: batch `i` of epoch `e` draws from `(seed, e, i)` only, so a run is
reproducible and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

REFERENCE_SIZE = 192  # the development photos' side; degradation strengths are given at it


@dataclass(frozen=True)
class BatchAugment:
    """Augmentation of one batch; each probability is drawn independently per photo."""

    image_size: int
    cache_margin: float = 1.125  # cached side = image_size * cache_margin, so crops keep detail
    crop_scale: tuple[float, float] = (0.25, 1.0)  # share of the photo's area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    colour_p: float = 0.8  # brightness, contrast and saturation each in 1 +- colour_strength
    colour_strength: float = 0.3
    grey_p: float = 0.15
    blur_p: float = 0.25
    blur_sigma: tuple[float, float] = (0.4, 3.0)  # Gaussian sigma at REFERENCE_SIZE px
    downscale_p: float = 0.25
    downscale_px: tuple[int, int] = (24, 112)  # side at REFERENCE_SIZE px before scaling back
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (8, 60)
    mix_p: float = 0.5  # share of batches that get MixUp or CutMix (half each)
    mix_alpha: float = 0.4

    @property
    def cache_size(self) -> int:
        return int(round(self.image_size * self.cache_margin))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, images: Any, targets: Any, seed: Any) -> tuple[Any, Any]:
        """(uint8 (B, C, C, 3) cached photos, one-hot (B, K) float32, int32 (2,) seed) ->
        (float32 0-255 (B, S, S, 3) views, soft targets whose rows sum to 1)."""
        import tensorflow as tf

        seeds = _seed_stream(seed)
        x = self._crop(tf.cast(images, tf.float32), next(seeds))
        if self.flip:
            x = _where(_draw(x, 0.5, next(seeds)), tf.reverse(x, axis=[2]), x)
        x = self._colour(x, next(seeds))
        x = _where(_draw(x, self.grey_p, next(seeds)), _grey(x), x)
        x = self._blur(x, next(seeds))
        x = self._downscale(x, next(seeds))
        x = self._jpeg(x, next(seeds))
        return mix_batch(x, targets, next(seeds), self.mix_p, self.mix_alpha)

    def _scale(self) -> float:
        return self.image_size / REFERENCE_SIZE

    def _crop(self, x: Any, seed: Any) -> Any:
        import tensorflow as tf

        n = tf.shape(x)[0]
        u = tf.random.stateless_uniform((4, n), _fold(seed, 0))
        area = self.crop_scale[0] + u[0] * (self.crop_scale[1] - self.crop_scale[0])
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = tf.exp(log_lo + u[1] * (log_hi - log_lo))
        width = tf.minimum(1.0, tf.sqrt(area * ratio))
        height = tf.minimum(1.0, tf.sqrt(area / ratio))
        top, left = u[2] * (1.0 - height), u[3] * (1.0 - width)
        boxes = tf.stack([top, left, top + height, left + width], axis=1)
        size = (self.image_size, self.image_size)
        return tf.image.crop_and_resize(x, boxes, tf.range(n), size, method="bilinear")

    def _colour(self, x: Any, seed: Any) -> Any:
        import tensorflow as tf

        n, s = tf.shape(x)[0], self.colour_strength
        factors = tf.random.stateless_uniform((3, n, 1, 1, 1), _fold(seed, 0), 1 - s, 1 + s)
        jittered = x * factors[0]  # brightness, as PIL's ImageEnhance.Brightness
        mean = tf.reduce_mean(_grey(jittered), axis=[1, 2, 3], keepdims=True)
        jittered = mean + factors[1] * (jittered - mean)  # contrast around the mean grey
        grey = _grey(jittered)
        jittered = tf.clip_by_value(grey + factors[2] * (jittered - grey), 0.0, 255.0)  # saturation
        return _where(_draw(x, self.colour_p, _fold(seed, 1)), jittered, x)

    def _blur(self, x: Any, seed: Any) -> Any:
        import tensorflow as tf

        n = tf.shape(x)[0]
        lo, hi = (v * self._scale() for v in self.blur_sigma)
        sigma = tf.random.stateless_uniform((n,), _fold(seed, 0), lo, hi)
        radius = max(1, int(math.ceil(3 * hi)))
        taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
        kernel = tf.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
        kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)  # (n, taps)
        blurred = _separable_per_photo(x, kernel)
        return _where(_draw(x, self.blur_p, _fold(seed, 1)), blurred, x)

    def _downscale(self, x: Any, seed: Any) -> Any:
        import tensorflow as tf

        # One side per batch (resize takes one size); which photos get it is drawn per photo.
        lo, hi = (max(4, int(v * self._scale())) for v in self.downscale_px)
        side = tf.random.stateless_uniform((), _fold(seed, 0), lo, hi + 1, dtype=tf.int32)
        small = tf.image.resize(x, tf.stack([side, side]), method="bilinear", antialias=True)
        back = tf.image.resize(small, (self.image_size, self.image_size), method="bilinear")
        return _where(_draw(x, self.downscale_p, _fold(seed, 1)), back, x)

    def _jpeg(self, x: Any, seed: Any) -> Any:
        import tensorflow as tf

        n = tf.shape(x)[0]
        quality = tf.random.stateless_uniform(
            (n,), _fold(seed, 0), self.jpeg_quality[0], self.jpeg_quality[1] + 1, dtype=tf.int32
        )
        chosen = _draw(x, self.jpeg_p, _fold(seed, 1))[:, 0, 0, 0]

        def one(args: tuple[Any, Any, Any]) -> Any:
            image, q, pick = args
            return tf.cond(pick, lambda: tf.image.adjust_jpeg_quality(image / 255.0, q) * 255.0, lambda: image)

        return tf.map_fn(one, (x, quality, chosen), fn_output_signature=tf.float32)


def mix_batch(images: Any, targets: Any, seed: Any, p: float, alpha: float) -> tuple[Any, Any]:
    """With probability `p`, MixUp or CutMix (half each) the batch with a shuffled copy of
    itself; the soft targets follow the share of each photo that is kept."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    u = tf.random.stateless_uniform((4,), _fold(seed, 0))
    order = tf.argsort(tf.random.stateless_uniform((n,), _fold(seed, 1)))
    gammas = tf.random.stateless_gamma((2,), _fold(seed, 2), alpha=alpha)
    lam = gammas[0] / (gammas[0] + gammas[1] + 1e-12)
    other, other_targets = tf.gather(images, order), tf.gather(targets, order)
    mixup = (lam * images + (1 - lam) * other, lam * targets + (1 - lam) * other_targets)
    size = tf.cast(tf.shape(images)[1], tf.float32)
    side = tf.cast(size * tf.sqrt(1.0 - lam), tf.int32)
    top = tf.cast(u[2] * tf.cast(tf.shape(images)[1] - side, tf.float32), tf.int32)
    left = tf.cast(u[3] * tf.cast(tf.shape(images)[2] - side, tf.float32), tf.int32)
    rows = tf.range(tf.shape(images)[1])[:, None]
    cols = tf.range(tf.shape(images)[2])[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    inside = tf.cast(inside, tf.float32)[None, :, :, None]
    kept = 1.0 - tf.cast(side * side, tf.float32) / (size * size)
    cutmix = (images * (1 - inside) + other * inside, kept * targets + (1 - kept) * other_targets)
    mixed = tf.cond(u[1] < 0.5, lambda: mixup, lambda: cutmix)
    apply = (u[0] < p) & (n > 1)
    return tf.cond(apply, lambda: mixed, lambda: (images, targets))


def _seed_stream(seed: Any) -> Any:
    """Independent stateless seeds, one per augmentation stage."""
    index = 0
    while True:
        yield _fold(seed, 100 + index)
        index += 1


def _fold(seed: Any, salt: int) -> Any:
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), salt)


def _draw(x: Any, p: float, seed: Any) -> Any:
    """A per-photo coin with probability `p`, shaped to broadcast over (B, H, W, C)."""
    import tensorflow as tf

    return tf.random.stateless_uniform((tf.shape(x)[0], 1, 1, 1), seed) < p


def _where(mask: Any, yes: Any, no: Any) -> Any:
    import tensorflow as tf

    return tf.where(mask, yes, no)


def _grey(x: Any) -> Any:
    """ITU-R 601 luma (PIL's "L"), kept as three channels."""
    import tensorflow as tf

    luma = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
    return tf.broadcast_to(luma, tf.shape(x))


def _separable_per_photo(x: Any, kernel: Any) -> Any:
    """Blur each photo with its own 1-D kernel (n, taps) along both axes: the batch is folded
    into channels so that one depthwise convolution serves every photo."""
    import tensorflow as tf

    n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    taps = tf.shape(kernel)[1]
    folded = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h, w, n * 3])
    per_channel = tf.repeat(kernel, 3, axis=0)  # (n*3, taps)
    vertical = tf.reshape(tf.transpose(per_channel), [taps, 1, n * 3, 1])
    horizontal = tf.reshape(tf.transpose(per_channel), [1, taps, n * 3, 1])
    folded = tf.nn.depthwise_conv2d(_reflect(folded, taps // 2, 0), vertical, [1, 1, 1, 1], "VALID")
    folded = tf.nn.depthwise_conv2d(_reflect(folded, taps // 2, 1), horizontal, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(folded, [h, w, n, 3]), [2, 0, 1, 3])


def _reflect(x: Any, radius: Any, axis: int) -> Any:
    import tensorflow as tf

    pad = [[0, 0], [radius, radius], [0, 0], [0, 0]] if axis == 0 else [[0, 0], [0, 0], [radius, radius], [0, 0]]
    return tf.pad(x, pad, mode="SYMMETRIC")


# ---------------------------------------------------------------- the photos, decoded once


def decode_once(paths: Sequence[str], side: int, workers: int = 2) -> np.ndarray:
    """Every photo decoded, made RGB and resized (Lanczos) to `side` x `side`, as uint8
    (n, side, side, 3): 2,100 photos at 144 px hold 131 MB."""

    def load(path: str) -> np.ndarray:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        return np.asarray(resized, dtype=np.uint8)

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(load, paths)))


def training_dataset(
    photos: np.ndarray,
    labels: Sequence[int],
    num_classes: int,
    augment: BatchAugment,
    batch_size: int,
    seed: int = 42,
    start_epoch: int = 0,
) -> tuple[Any, int]:
    """An endless `tf.data` stream of augmented (images, soft targets) batches from the cached
    photos, and the steps per epoch. Each epoch is a fresh permutation drawn from
    (seed, epoch), the last partial batch dropped; `start_epoch` resumes exactly."""
    import tensorflow as tf

    n = len(photos)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training photos")
    cache = tf.constant(photos)
    onehot = tf.one_hot(tf.constant(np.asarray(labels), tf.int32), num_classes)

    def epoch_batches(epoch: Any) -> Any:
        order = tf.argsort(tf.random.stateless_uniform((n,), tf.stack([seed, tf.cast(epoch, tf.int32)])))
        batches = tf.reshape(order[: steps * batch_size], (steps, batch_size))
        return (
            tf.data.Dataset.from_tensor_slices(batches)
            .enumerate()
            .map(lambda index, picked: (tf.cast(epoch, tf.int32), tf.cast(index, tf.int32), picked))
        )

    def make(epoch: Any, index: Any, picked: Any) -> tuple[Any, Any]:
        batch_seed = tf.random.experimental.stateless_fold_in(tf.stack([seed, epoch]), index)
        return augment(tf.gather(cache, picked), tf.gather(onehot, picked), batch_seed)

    dataset = tf.data.Dataset.range(start_epoch, 1 << 30).flat_map(epoch_batches)
    dataset = dataset.map(make, num_parallel_calls=2, deterministic=True)
    return dataset.prefetch(2), steps
