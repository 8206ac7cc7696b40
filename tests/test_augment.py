"""The robust augmentation, MixUp/CutMix, the endless batch stream and the scratch-robust recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from animalcls.data import augment


def _photo(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _detail(array: np.ndarray) -> float:
    """Mean absolute difference of neighbouring pixels: high for sharp noise, low when blurred."""
    grey = array.astype(np.float32).mean(-1)
    return float(np.abs(np.diff(grey, axis=1)).mean())


def test_views_have_the_model_size_and_repeat_for_a_seed():
    recipe = augment.RobustAugment(image_size=40)
    first = recipe(_photo(), np.random.default_rng(3))
    assert first.shape == (40, 40, 3) and first.dtype == np.uint8
    assert np.array_equal(first, recipe(_photo(), np.random.default_rng(3)))
    assert not np.array_equal(first, recipe(_photo(), np.random.default_rng(4)))


def test_degradations_remove_detail_and_can_be_turned_off():
    keep_all = dict(crop_scale=(1.0, 1.0), colour_p=0.0, grey_p=0.0, flip=False)
    plain = augment.RobustAugment(image_size=64, degrade=False, **keep_all)(_photo(), np.random.default_rng(0))
    assert np.array_equal(plain, np.asarray(_photo()))  # full crop at the same size, nothing else
    blurred = augment.RobustAugment(image_size=64, blur_p=1.0, downscale_p=0.0, jpeg_p=0.0, **keep_all)
    low_res = augment.RobustAugment(image_size=64, blur_p=0.0, downscale_p=1.0, jpeg_p=0.0, **keep_all)
    for recipe in (blurred, low_res):
        assert _detail(recipe(_photo(), np.random.default_rng(0))) < 0.7 * _detail(plain)


def test_greyscale_view_has_equal_channels():
    recipe = augment.RobustAugment(image_size=32, grey_p=1.0, colour_p=0.0, degrade=False)
    view = recipe(_photo(), np.random.default_rng(0)).astype(int)
    assert np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 1], view[..., 2])


def test_mix_batch_keeps_targets_normalised_and_p_zero_is_identity():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    targets = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)]
    same_images, same_targets = augment.mix_batch(images, targets, rng, p=0.0)
    assert same_images is images and same_targets is targets
    for seed in range(6):  # both MixUp and CutMix get drawn
        mixed, soft = augment.mix_batch(images, targets, np.random.default_rng(seed), p=1.0)
        assert mixed.shape == images.shape
        np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
        assert not np.array_equal(mixed, images)


def test_batch_stream_covers_every_photo_once_per_epoch():
    photos = [Image.new("RGB", (20, 20), (i * 10, 0, 0)) for i in range(10)]
    labels = [i % 2 for i in range(10)]
    recipe = augment.RobustAugment(
        image_size=20, crop_scale=(1.0, 1.0), colour_p=0.0, grey_p=0.0, degrade=False, flip=False
    )
    stream = augment.batch_stream(photos, labels, 2, recipe, batch_size=5, workers=2, prefetch=3)
    epoch = [next(stream) for _ in range(augment.steps_per_epoch(10, 5))]
    reds = sorted(int(round(v)) for images, _ in epoch for v in images[:, 0, 0, 0])
    assert reds == [i * 10 for i in range(10)]
    for images, targets in epoch:
        assert images.dtype == np.float32 and targets.shape == (5, 2)
        assert all(targets[j].argmax() == int(round(images[j, 0, 0, 0])) // 10 % 2 for j in range(5))
    with pytest.raises(ValueError, match="exceeds"):
        next(augment.batch_stream(photos, labels, 2, recipe, batch_size=11))


def test_cosine_warmup_rises_then_falls_to_zero():
    from animalcls.training.train import CosineWarmup

    schedule = CosineWarmup(peak=1.0, total_epochs=10, warmup_epochs=2)
    rates = [schedule.rate(e) for e in range(11)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    assert rates[10] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_robust_recipe_trains_a_checkpoint(tmp_path, synthetic_data):
    from animalcls.training.train import PRESETS
    from animalcls.training.workflows import train_checkpoint

    config = PRESETS["scratch-robust"].replace(backbone="tiny", image_size=32, epochs=3, batch_size=8, warmup_epochs=1)
    path, _, result, evaluation = train_checkpoint(synthetic_data, config, tmp_path / "robust")
    assert len(result.history["loss"]) == 3
    rates = result.history["learning_rate"]
    assert rates[0] < rates[1] and rates[2] < rates[1]  # warm-up, then cosine decay
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["training"]["robust_augment"] and manifest["training"]["weight_decay"] == 0.05
    assert 0.0 <= evaluation["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "flag,value", [("--mix", "1.5"), ("--label-smoothing", "-0.1"), ("--weight-decay", "-1"), ("--warmup-epochs", "-2")]
)
def test_robust_flags_reject_nonsense_before_any_work(flag, value, capsys):
    from animalcls.cli import main as cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", "/nonexistent", "--model", "scratch", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
