"""Backend-agnostic "robust" augmentation in numpy/PIL: wide random crops, colour jitter and the
degradations a photo from elsewhere brings (blur, low resolution, heavy JPEG, greyscale), plus
MixUp/CutMix on whole batches.

Each class of the development photos comes from one source, so a network trained from scratch
can separate the classes by resolution, sharpness or colour grading. Showing it the animals
under those changes takes the shortcut away (README, "The bundled checkpoints"). Nothing here
imports TensorFlow or JAX: the same batches feed `model.fit` under any Keras backend.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# The development photos are 192 px; degradation strengths are given for that size and scaled.
REFERENCE_SIZE = 192


@dataclass(frozen=True)
class RobustAugment:
    """Per-photo augmentation; probabilities are independent, strengths drawn uniformly."""

    image_size: int
    crop_scale: tuple[float, float] = (0.25, 1.0)  # share of the photo's area kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    colour_p: float = 0.8  # brightness, contrast, saturation each in 1 +- colour_strength
    colour_strength: float = 0.3
    grey_p: float = 0.15
    blur_p: float = 0.25
    blur_radius: tuple[float, float] = (0.4, 3.0)  # Gaussian radius at REFERENCE_SIZE px
    downscale_p: float = 0.25
    downscale_px: tuple[int, int] = (24, 112)  # side at REFERENCE_SIZE px before scaling back
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (8, 60)
    degrade: bool = True  # False keeps crops, flips and colour only (for measuring what helps)

    def to_json(self) -> dict:
        return asdict(self)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """One augmented view of `image` as uint8 (image_size, image_size, 3)."""
        image = self._crop(image.convert("RGB"), rng)
        if self.flip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if rng.random() < self.colour_p:
            image = self._colour(image, rng)
        if rng.random() < self.grey_p:
            image = ImageOps.grayscale(image).convert("RGB")
        if self.degrade:
            image = self._degrade(image, rng)
        return np.asarray(image, dtype=np.uint8)

    def _crop(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        for _ in range(10):
            area = w * h * rng.uniform(*self.crop_scale)
            ratio = np.exp(rng.uniform(np.log(self.crop_ratio[0]), np.log(self.crop_ratio[1])))
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                box = (left, top, left + cw, top + ch)
                break
        else:
            box = (0, 0, w, h)
        size = (self.image_size, self.image_size)
        return image.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)

    def _colour(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        s = self.colour_strength
        for enhancer in rng.permutation([ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]):
            image = enhancer(image).enhance(rng.uniform(1 - s, 1 + s))
        return image

    def _degrade(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        scale = self.image_size / REFERENCE_SIZE
        if rng.random() < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*self.blur_radius) * scale))
        if rng.random() < self.downscale_p:
            side = max(4, int(rng.uniform(*self.downscale_px) * scale))
            image = image.resize((side, side), Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)
        if rng.random() < self.jpeg_p:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image


def mix_batch(
    images: np.ndarray, targets: np.ndarray, rng: np.random.Generator, p: float, alpha: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """With probability `p`, MixUp or CutMix (half each) the batch with a shuffled copy of itself;
    the soft targets follow the mixed share. `images` float32, `targets` one-hot float32."""
    if p <= 0 or rng.random() >= p or len(images) < 2:
        return images, targets
    order = rng.permutation(len(images))
    lam = float(rng.beta(alpha, alpha))
    if rng.random() < 0.5:
        return lam * images + (1 - lam) * images[order], lam * targets + (1 - lam) * targets[order]
    h, w = images.shape[1:3]
    ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    mixed = images.copy()
    mixed[:, top : top + ch, left : left + cw] = images[order, top : top + ch, left : left + cw]
    kept = 1 - (ch * cw) / (h * w)
    return mixed, kept * targets + (1 - kept) * targets[order]


def batch_stream(
    photos: Sequence[Image.Image],
    labels: Sequence[int],
    num_classes: int,
    augment: RobustAugment,
    batch_size: int,
    seed: int = 42,
    mix_p: float = 0.0,
    workers: int = 4,
    prefetch: int = 8,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (float32 images 0-255, soft targets) batches: each epoch a fresh permutation,
    the last partial batch dropped, augmentation in `workers` threads (PIL releases the GIL).
    Deterministic for a seed: every batch draws from its own generator."""
    labels_arr = np.asarray(labels)
    eye = np.eye(num_classes, dtype=np.float32)
    per_epoch = len(photos) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(photos)} training photos")

    def make(epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([seed, epoch]).permutation(len(photos))
        picked = order[index * batch_size : (index + 1) * batch_size]
        rng = np.random.default_rng([seed, epoch, index])
        images = np.stack([augment(photos[i], rng) for i in picked]).astype(np.float32)
        return mix_batch(images, eye[labels_arr[picked]], rng, mix_p)

    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        step = 0
        while True:
            while len(pending) < prefetch:
                pending.append(pool.submit(make, *divmod(step, per_epoch)))
                step += 1
            yield pending.popleft().result()


def steps_per_epoch(n_photos: int, batch_size: int) -> int:
    return n_photos // batch_size


def load_photos(paths: Sequence[str]) -> list[Image.Image]:
    """Decode every photo once (a few thousand 192 px photos hold about 100 MB)."""
    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(image.convert("RGB"))
    return photos
