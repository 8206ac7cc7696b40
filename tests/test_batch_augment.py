"""The in-graph batch augmentation: labels stay right under MixUp/CutMix, a seed fixes every batch,
and a resumed stream starts with the batch an uninterrupted one would have drawn next."""

from __future__ import annotations

import numpy as np
import pytest

from animalcls.data.batch_augment import BatchAugment, decode_once, training_dataset

# Everything off but mixing, so that a photo's brightness tells which class it came from.
MIX_ONLY = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip=False,
    colour_p=0.0,
    grey_p=0.0,
    blur_p=0.0,
    downscale_p=0.0,
    jpeg_p=0.0,
    mix_p=1.0,
)


def _black_and_white(n: int = 32, side: int = 18) -> tuple[np.ndarray, list[int]]:
    labels = [i % 2 for i in range(n)]
    photos = np.stack([np.full((side, side, 3), 255 * label, np.uint8) for label in labels])
    return photos, labels


def _batches(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_mixed_targets_are_the_share_of_each_class_in_the_pixels():
    photos, labels = _black_and_white()
    dataset, _ = training_dataset(photos, labels, 2, BatchAugment(16, cache_margin=1.125, **MIX_ONLY), 8, seed=3)
    soft_seen = False
    for images, targets in _batches(dataset, 12):
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
        # White pixels come from class 1: their share is class 1's target, MixUp or CutMix alike.
        np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) / 255.0, targets[:, 1], atol=0.02)
        soft_seen |= bool(((targets > 0.01) & (targets < 0.99)).any())
    assert soft_seen, "mix_p=1 never mixed a batch"


def test_no_mixing_keeps_one_hot_targets():
    photos, labels = _black_and_white()
    recipe = BatchAugment(16, **{**MIX_ONLY, "mix_p": 0.0})
    for images, targets in _batches(training_dataset(photos, labels, 2, recipe, 8)[0], 4):
        assert set(np.unique(targets)) <= {0.0, 1.0}
        np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) / 255.0, targets[:, 1], atol=1e-3)


def _photos(n: int = 24, side: int = 27) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), [i % 3 for i in range(n)]


def test_a_seed_fixes_every_batch_and_another_seed_changes_them():
    photos, labels = _photos()
    recipe = BatchAugment(24, mix_p=0.5)
    first = _batches(training_dataset(photos, labels, 3, recipe, 8, seed=7)[0], 5)
    again = _batches(training_dataset(photos, labels, 3, recipe, 8, seed=7)[0], 5)
    other = _batches(training_dataset(photos, labels, 3, recipe, 8, seed=8)[0], 5)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_a_resumed_stream_continues_with_the_next_epochs_batches():
    photos, labels = _photos()
    recipe = BatchAugment(24)
    dataset, steps = training_dataset(photos, labels, 3, recipe, 8, seed=1)
    assert steps == 3
    straight = _batches(dataset, 2 * steps)
    resumed = _batches(training_dataset(photos, labels, 3, recipe, 8, seed=1, start_epoch=1)[0], steps)
    for (x1, y1), (x2, y2) in zip(straight[steps:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_every_epoch_shows_each_photo_once():
    photos = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 9, 9, 3), np.uint8) * 20
    recipe = BatchAugment(8, **{**MIX_ONLY, "mix_p": 0.0})
    dataset, steps = training_dataset(photos, list(range(12)), 12, recipe, 4, seed=5)
    epochs = _batches(dataset, 2 * steps)
    for epoch in (epochs[:steps], epochs[steps:]):
        seen = sorted(int(t.argmax()) for _, targets in epoch for t in targets)
        assert seen == list(range(12))
    assert [t.argmax() for t in epochs[0][1]] != [t.argmax() for t in epochs[steps][1]]


def test_views_are_the_training_size_in_range_and_vary():
    photos, labels = _photos(side=40)
    recipe = BatchAugment(32, mix_p=0.0, blur_p=1.0, downscale_p=0.5, jpeg_p=0.5, grey_p=0.5)
    images, _ = _batches(training_dataset(photos, labels, 3, recipe, 8)[0], 1)[0]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 255.0
    assert len({round(float(v), 3) for v in images.std(axis=(1, 2, 3))}) > 1


def test_too_large_a_batch_is_refused():
    photos, labels = _photos(n=5)
    with pytest.raises(ValueError, match="exceeds the 5 training photos"):
        training_dataset(photos, labels, 3, BatchAugment(24), 8)


def test_decode_once_resizes_every_photo(tmp_path):
    from PIL import Image

    paths = []
    for index, size in enumerate([(30, 20), (64, 64)]):
        path = tmp_path / f"{index}.png"
        Image.new("L" if index else "RGB", size, 90).save(path)
        paths.append(str(path))
    photos = decode_once(paths, 16)
    assert photos.shape == (2, 16, 16, 3) and photos.dtype == np.uint8
