"""A disk cache of pooled backbone features, so a frozen-backbone fine-tune runs the backbone
once per image instead of once per image per epoch.

Features are the transfer model's `avg_pool` output (backbone in inference mode, then global
average pooling), for each image and for its horizontally flipped copy (the study's only
augmentation). They are keyed by

* the backbone: its name, the image size, a fingerprint of ALL its weights (BatchNorm statistics
  included) and FEATURES_VERSION, so another checkpoint with other frozen weights, or a change
  in how images are decoded, never reuses features it should not; and
* the image: the sha1 of the file's bytes, so renaming or moving a photo still hits, while
  editing it in place misses.

Layout: `<root>/<backbone-key>/<sha1[:2]>/<sha1>.npy` and `<sha1>-flip.npy`. One small file per
(image, flip) because entries are immutable and independent: each is written atomically (temp
file + os.replace) right after its batch, so a cancelled or crashed extraction keeps what it
finished, two processes can fill one cache without locking, and a new image never rewrites a
shard. Loading ~50 000 files of 5 KB takes a few seconds, small next to extracting them.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomic, write_json
from .errors import Cancelled, DataError
from .settings import BACKBONE_LAYER, POOL_LAYER, feature_cache_root

# Bump when decoding, resizing or pooling change: every old entry then stops matching.
FEATURES_VERSION = 1
INFO_FILE = "info.json"

ProgressHook = Callable[[int, int], None]


class FeatureExtractionCancelled(Cancelled):
    """The cancel event was set during feature extraction; finished batches stay cached."""


def feature_model(model: Any) -> Any:
    """image -> pooled features, sharing `model`'s backbone and pooling layers (no copy)."""
    import keras

    return keras.Model(model.inputs, model.get_layer(POOL_LAYER).output, name=f"{model.name}_features")


def backbone_fingerprint(model: Any) -> str:
    """sha1 over the backbone's weight shapes and values, in order: the features depend on
    every one of them, BatchNorm moving statistics included. Variable names are left out, so
    the same weights loaded under other auto-generated layer names still match."""
    digest = hashlib.sha1()
    for weight in model.get_layer(BACKBONE_LAYER).weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy(), dtype=np.float32))
        digest.update(f"{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def backbone_key(model: Any) -> str:
    """The cache folder name for `model`'s frozen backbone: `<backbone>-<size>px-<hash>`, the
    hash covering FEATURES_VERSION, backbone name, image size and weight fingerprint."""
    # build_transfer names the model "transfer_<backbone>", and checkpoints keep that name.
    name = model.name.removeprefix("transfer_")
    size = int(model.input_shape[1])
    recipe = f"v{FEATURES_VERSION}:{name}:{size}:{backbone_fingerprint(model)}"
    return f"{name}-{size}px-{hashlib.sha1(recipe.encode()).hexdigest()[:16]}"


def file_digests(paths: Sequence[str], workers: int = 4) -> list[str]:
    """sha1 of each file's bytes; a missing or unreadable file is a DataError."""

    def one(path: str) -> str:
        try:
            return hashlib.sha1(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise DataError(f"Cannot read image {path}: {exc.strerror or exc}") from None

    if len(paths) < 64:
        return [one(p) for p in paths]
    # Reading and hashing release the GIL, so a few threads overlap disk and CPU.
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


@dataclass
class FeatureCache:
    """Per-(backbone, image content, flip) feature vectors on disk, with hit/miss counters
    over the (image, flip) entries requested since creation."""

    root: Path = field(default_factory=feature_cache_root)
    hits: int = 0
    misses: int = 0
    extract_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    def entry(self, key: str, sha1: str, flip: bool) -> Path:
        return self.root / key / sha1[:2] / f"{sha1}{'-flip' if flip else ''}.npy"

    def load(self, key: str, sha1: str, flip: bool) -> np.ndarray | None:
        """The cached vector, or None when absent or unreadable (a torn file is a miss)."""
        try:
            return np.load(self.entry(key, sha1, flip), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def save(self, key: str, sha1: str, flip: bool, vector: np.ndarray) -> None:
        """Write atomically: readers see the whole entry or none."""
        array = np.asarray(vector, dtype=np.float32)
        write_atomic(self.entry(key, sha1, flip), lambda handle: np.save(handle, array, allow_pickle=False))

    def describe(self, key: str, info: dict[str, Any]) -> None:
        """Record what a backbone key stands for, for people browsing the cache."""
        path = self.root / key / INFO_FILE
        if not path.is_file():
            write_json(path, info)

    def stats(self) -> dict[str, Any]:
        return {  # recorded in manifests: no path (the cache root is this machine's)
            "hits": self.hits,
            "misses": self.misses,
            "extract_seconds": round(self.extract_seconds, 2),
        }


def cached_features(
    model: Any,
    paths: Sequence[str],
    flip: bool = False,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    on_progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Pooled features of `paths` (flipped copies when `flip`), shape (len(paths), dim),
    extracting and caching the ones not cached yet."""
    return cached_feature_groups(model, [(paths, flip)], cache, batch_size, on_progress, cancel)[0]


def cached_feature_groups(
    model: Any,
    groups: Sequence[tuple[Sequence[str], bool]],
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    on_progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
) -> list[np.ndarray]:
    """Features for several (paths, flip) groups in ONE extraction pass: each image is read
    and decoded once even when both of its variants are missing, and an (image, flip) shared
    by groups (or duplicated content) is extracted once.

    `on_progress(done, total)` counts (image, flip) entries, cached ones counting as done from
    the start. With `cancel` set, raises FeatureExtractionCancelled before the next batch.
    """
    cache = cache if cache is not None else FeatureCache()
    model_key = backbone_key(model)
    distinct = sorted({p for paths, _ in groups for p in paths})
    digest_of = dict(zip(distinct, file_digests(distinct)))
    wanted = {(digest_of[p], flip) for paths, flip in groups for p in paths}
    found = _load_many(cache, model_key, wanted, _feature_dim(model))
    missing = sorted(wanted - found.keys())
    cache.hits += len(found)
    cache.misses += len(missing)
    if missing:
        cache.describe(model_key, _key_info(model, model_key))
        path_of = {digest_of[p]: p for p in distinct}
        start = time.perf_counter()
        found.update(_extract(model, cache, model_key, missing, path_of, batch_size, on_progress, cancel, len(wanted)))
        cache.extract_seconds += time.perf_counter() - start
    elif on_progress:
        on_progress(len(wanted), len(wanted))
    dim = _feature_dim(model)
    return [
        np.stack([found[(digest_of[p], flip)] for p in paths]) if len(paths) else np.zeros((0, dim), np.float32)
        for paths, flip in groups
    ]


def _feature_dim(model: Any) -> int:
    return int(model.get_layer(POOL_LAYER).output.shape[-1])


def _key_info(model: Any, key: str) -> dict[str, Any]:
    from .checkpoints import now_iso

    return {
        "key": key,
        "model": model.name,
        "image_size": int(model.input_shape[1]),
        "feature_dim": _feature_dim(model),
        "features_version": FEATURES_VERSION,
        "created": now_iso(),
    }


def _load_many(
    cache: FeatureCache, key: str, wanted: set[tuple[str, bool]], dim: int
) -> dict[tuple[str, bool], np.ndarray]:
    """Load every cached entry of `wanted` (a wrong-shaped one counts as missing); threads
    overlap the many small reads."""
    entries = sorted(wanted)
    with ThreadPoolExecutor(8) as pool:
        vectors = list(pool.map(lambda e: cache.load(key, *e), entries))
    return {e: v for e, v in zip(entries, vectors) if v is not None and v.shape == (dim,)}


def _extract(
    model: Any,
    cache: FeatureCache,
    key: str,
    missing: list[tuple[str, bool]],
    path_of: dict[str, str],
    batch_size: int,
    on_progress: ProgressHook | None,
    cancel: threading.Event | None,
    total: int,
) -> dict[tuple[str, bool], np.ndarray]:
    """Run the feature model over the missing (image, flip) entries, caching every batch."""
    import tensorflow as tf

    flips_of: dict[str, set[bool]] = {}
    for sha1, flip in missing:
        flips_of.setdefault(sha1, set()).add(flip)
    digests = sorted(flips_of)
    dataset = _variant_dataset(
        [path_of[d] for d in digests],
        [False in flips_of[d] for d in digests],
        [True in flips_of[d] for d in digests],
        int(model.input_shape[1]),
        batch_size,
    )
    extractor = feature_model(model)
    # Compiled once; reduce_retracing keeps the smaller last batch from compiling a second graph.
    forward = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    done = total - len(missing)
    if on_progress:
        on_progress(done, total)
    out: dict[tuple[str, bool], np.ndarray] = {}
    for images, index, flipped in dataset:
        if cancel is not None and cancel.is_set():
            raise FeatureExtractionCancelled(
                f"Feature extraction cancelled after {done} of {total} images; the finished ones are cached."
            )
        vectors = forward(images).numpy()
        for vector, i, flip in zip(vectors, index.numpy(), flipped.numpy()):
            entry = (digests[int(i)], bool(flip))
            cache.save(key, *entry, vector)
            out[entry] = vector
        done += len(vectors)
        if on_progress:
            on_progress(done, total)
    return out


def _variant_dataset(
    paths: list[str], plain: list[bool], flipped: list[bool], image_size: int, batch_size: int
) -> Any:
    """Batches of (image, index into paths, is_flipped) for the wanted variants, each file
    decoded once with the training pipeline's decode_resize; flipped after resizing, as there."""
    import tensorflow as tf

    from .data import decode_resize

    def load(path, want_plain, want_flip, index):
        image = decode_resize(tf.io.read_file(path), image_size)
        images = tf.stack([image, tf.image.flip_left_right(image)])
        return tf.data.Dataset.from_tensor_slices(
            (images, tf.stack([index, index]), tf.constant([False, True]), tf.stack([want_plain, want_flip]))
        )

    ds = tf.data.Dataset.from_tensor_slices((paths, plain, flipped, list(range(len(paths)))))
    # interleave parallelises decoding; deterministic order keeps runs reproducible.
    ds = ds.interleave(load, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda image, index, flip, wanted: wanted)
    ds = ds.map(lambda image, index, flip, wanted: (image, index, flip))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
