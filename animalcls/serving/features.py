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

Layout: `<root>/<backbone-key>/<sha1[:2]>/<sha1>.npy` and `<sha1>-flip.npy`, one small file
per (image, flip): entries are immutable and independent, each written atomically (temp file +
os.replace) right after its batch, so a cancelled or crashed extraction keeps what it finished,
two processes can fill one cache without locking, and a new image never rewrites a shard.

Reading thousands of small files is slow, though (3,000 of them: 2.3-3.1 s, against 0.2 s for
one array), so a request for many entries also finds them packed: `<backbone-key>/packs/
<sha1 of the sorted (image, flip) entries>.npy`, one float32 array in that order, written
atomically once every entry is at hand and read instead of the small files the next time the
same set is asked for (a fine-tune of the same split). Packs are derived: a missing, torn or
wrong-shaped one is ignored and rebuilt from the small files; the newest PACKS_KEPT per
backbone are kept. A cache from before packs existed is read as is and gains its packs on use.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import write_atomic, write_json
from animalcls.core.errors import Cancelled, DataError
from animalcls.core.settings import BACKBONE_LAYER, POOL_LAYER, feature_cache_root
from animalcls.serving.forward import Forward
from animalcls.serving.onnx_engine import onnx_forward

# Bump when decoding, resizing or pooling change: every old entry then stops matching.
FEATURES_VERSION = 1
INFO_FILE = "info.json"
PACKS_DIR = "packs"
PACKS_KEPT = 8
PACK_MIN = 64  # fewer entries load fast enough one by one

ProgressHook = Callable[[int, int], None]
PooledForward = Callable[[np.ndarray], np.ndarray]  # model-input batch -> pooled features


class FeatureExtractionCancelled(Cancelled):
    """The cancel event was set during feature extraction; finished batches stay cached."""


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


_DIGESTS: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha1, this process


def file_digests(paths: Sequence[str], workers: int = 4) -> list[str]:
    """sha1 of each file's bytes; a missing or unreadable file is a DataError. A file whose
    inode, size and modification time are unchanged since this process hashed it is not read
    again (a warm fine-tune re-hashed 3,000 photos in 0.3-0.5 s)."""

    def stamp(path: str) -> tuple[str, int, int, int]:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"Cannot read image {path}: {exc.strerror or exc}") from None
        return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def one(path: str) -> str:
        try:
            return hashlib.sha1(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise DataError(f"Cannot read image {path}: {exc.strerror or exc}") from None

    stamps = [stamp(p) for p in paths]  # one stat each, no thread: 3,000 take milliseconds
    unknown = [s for s in dict.fromkeys(stamps) if s not in _DIGESTS]
    if len(_DIGESTS) + len(unknown) > 500_000:  # bounded: a long-running server sees many uploads
        _DIGESTS.clear()
        unknown = list(dict.fromkeys(stamps))
    if len(unknown) < 64:
        digests = [one(s[0]) for s in unknown]
    else:  # reading and hashing release the GIL, so a few threads overlap disk and CPU
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(one, [s[0] for s in unknown]))
    _DIGESTS.update(zip(unknown, digests))
    return [_DIGESTS[s] for s in stamps]


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

    def pack_path(self, key: str, entries: Sequence[tuple[str, bool]]) -> Path:
        digest = hashlib.sha1("".join(f"{sha1}:{int(flip)};" for sha1, flip in entries).encode()).hexdigest()
        return self.root / key / PACKS_DIR / f"{digest}.npy"

    def load_pack(self, key: str, entries: Sequence[tuple[str, bool]], dim: int) -> np.ndarray | None:
        """The packed array of `entries` (sorted), or None when absent, torn or wrong-shaped."""
        path = self.pack_path(key, entries)
        try:
            array = np.load(path, allow_pickle=False)
            os.utime(path)  # most recently used: kept longest
        except (OSError, ValueError):
            return None
        return array if array.shape == (len(entries), dim) and array.dtype == np.float32 else None

    def save_pack(self, key: str, entries: Sequence[tuple[str, bool]], array: np.ndarray) -> None:
        """Write the pack atomically, then drop the least recently used beyond PACKS_KEPT."""
        path = self.pack_path(key, entries)
        write_atomic(path, lambda handle: np.save(handle, np.asarray(array, np.float32), allow_pickle=False))
        packs = sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in packs[PACKS_KEPT:]:
            old.unlink(missing_ok=True)

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
    forward: Callable[[], PooledForward | None] | None = None,
) -> np.ndarray:
    """Pooled features of `paths` (flipped copies when `flip`), shape (len(paths), dim),
    extracting and caching the ones not cached yet."""
    return cached_feature_groups(model, [(paths, flip)], cache, batch_size, on_progress, cancel, forward=forward)[0]


def cached_feature_groups(
    model: Any,
    groups: Sequence[tuple[Sequence[str], bool]],
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    on_progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
    key: str | None = None,
    forward: Callable[[], PooledForward | None] | None = None,
) -> list[np.ndarray]:
    """Features for several (paths, flip) groups in ONE extraction pass: each image is read
    and decoded once even when both of its variants are missing, and an (image, flip) shared
    by groups (or duplicated content) is extracted once.

    `key` is backbone_key(model) when the caller has it. `forward()`, called only when some
    features are missing, may give a faster forward pass to pooled features (ONNX Runtime);
    None, or no `forward`, runs the Keras model. `on_progress(done, total)` counts (image,
    flip) entries, cached ones counting as done from the start. With `cancel` set, raises
    FeatureExtractionCancelled before the next batch.
    """
    cache = cache if cache is not None else FeatureCache()
    model_key = key or backbone_key(model)
    dim = _feature_dim(model)
    distinct = sorted({p for paths, _ in groups for p in paths})
    digest_of = dict(zip(distinct, file_digests(distinct)))
    entries = sorted({(digest_of[p], flip) for paths, flip in groups for p in paths})
    packed = cache.load_pack(model_key, entries, dim) if len(entries) >= PACK_MIN else None
    found = dict(zip(entries, packed)) if packed is not None else _load_many(cache, model_key, set(entries), dim)
    missing = sorted(set(entries) - found.keys())
    cache.hits += len(found)
    cache.misses += len(missing)
    if missing:
        cache.describe(model_key, _key_info(model, model_key))
        path_of = {digest_of[p]: p for p in distinct}
        start = time.perf_counter()
        pooled = forward() if forward is not None else None
        found.update(
            _extract(model, cache, model_key, missing, path_of, batch_size, on_progress, cancel, len(entries), pooled)
        )
        cache.extract_seconds += time.perf_counter() - start
    elif on_progress:
        on_progress(len(entries), len(entries))
    if packed is None and len(entries) >= PACK_MIN:
        cache.save_pack(model_key, entries, np.stack([found[e] for e in entries]))
    return [
        np.stack([found[(digest_of[p], flip)] for p in paths]) if len(paths) else np.zeros((0, dim), np.float32)
        for paths, flip in groups
    ]


def pooled_forward(folder: Path) -> PooledForward | None:
    """The pooled features through the checkpoint's fresh ONNX graph (`forward.onnx_forward`),
    or None when onnxruntime or a fresh graph is missing: the caller then runs Keras."""
    forward = onnx_forward(folder)
    return None if forward is None else lambda batch: forward(batch, ("pooled",))["pooled"]


def _feature_dim(model: Any) -> int:
    return int(model.get_layer(POOL_LAYER).output.shape[-1])


def _key_info(model: Any, key: str) -> dict[str, Any]:
    from animalcls.store.checkpoints import now_iso

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
    pooled: PooledForward | None = None,
) -> dict[tuple[str, bool], np.ndarray]:
    """Run `pooled` (else the Keras feature model) over the missing (image, flip) entries,
    caching every batch."""
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
    if pooled is None:
        keras = Forward(int(model.input_shape[1]), model=model)
        pooled = lambda batch: keras(batch, ("pooled",))["pooled"]  # noqa: E731
    done = total - len(missing)
    if on_progress:
        on_progress(done, total)
    out: dict[tuple[str, bool], np.ndarray] = {}
    for images, index, flipped in dataset:
        if cancel is not None and cancel.is_set():
            raise FeatureExtractionCancelled(
                f"Feature extraction cancelled after {done} of {total} images; the finished ones are cached."
            )
        vectors = np.asarray(pooled(images.numpy()), np.float32)
        for vector, i, flip in zip(vectors, index.numpy(), flipped.numpy()):
            entry = (digests[int(i)], bool(flip))
            cache.save(key, *entry, vector)
            out[entry] = vector
        done += len(vectors)
        if on_progress:
            on_progress(done, total)
    return out


def _variant_dataset(paths: list[str], plain: list[bool], flipped: list[bool], image_size: int, batch_size: int) -> Any:
    """Batches of (image, index into paths, is_flipped) for the wanted variants, each file
    decoded once with the training pipeline's decode_resize; flipped after resizing, as there."""
    import tensorflow as tf

    from animalcls.data.dataset import decode_resize

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
