"""The "none of the five" detector: scores, threshold rule, builder and file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_checkpoint, make_image

from animalcls.trust import scope
from animalcls.trust.scope_build import ScopeArrays, choose_threshold, half_split


def test_knn_score_is_zero_for_a_training_photo_and_grows_with_distance() -> None:
    rng = np.random.default_rng(0)
    reference = scope.unit_rows(np.abs(rng.normal(size=(50, 8))))  # like ReLU features
    near = reference[:1] * 3.0  # same direction, other length: cosine ignores scale
    far = -reference[:1]
    assert scope.knn_score(near, reference, k=1)[0] == pytest.approx(0.0, abs=1e-6)
    assert scope.knn_score(far, reference, k=1)[0] > 1.0
    # skip_self leaves out the photo's own row when scoring the reference itself.
    assert scope.knn_score(reference[:5], reference, k=1, skip_self=True).min() > 1e-3


def test_imagenet_log_odds_weigh_other_animals_against_the_classes_synsets() -> None:
    kernel = np.zeros((3, 1000), np.float32)
    kernel[0, 281] = 20.0  # feature 0 -> "tabby cat"
    kernel[1, 207] = 20.0  # feature 1 -> "golden retriever"
    kernel[2, 900] = 20.0  # feature 2 -> "water tower": no animal at all
    bias = np.zeros(1000, np.float32)
    features = np.eye(3, dtype=np.float32)
    cat, dog, tower = scope.imagenet_score(features, kernel, bias, scope.IMAGENET_SYNSETS["cat"])
    assert cat < -10 and dog > 10
    # Neither animal group gets mass: the odds are those of the synset counts (393 vs 5).
    assert tower == pytest.approx(np.log(393 / 5), abs=1e-3)


def test_threshold_flags_at_most_the_allowed_rate_of_each_in_scope_set() -> None:
    rng = np.random.default_rng(1)
    val, cross = rng.normal(size=1000), rng.normal(1.0, 1.0, size=500)
    threshold = choose_threshold([(val, 0.01), (cross, 0.02)])
    assert np.mean(val > threshold) <= 0.01
    assert np.mean(cross > threshold) <= 0.02
    assert np.mean(cross > threshold) > 0.015  # the binding set sits at its rate: not overly strict


def test_half_split_is_fixed_stratified_and_disjoint() -> None:
    groups = {"a": [f"a{i}" for i in range(11)], "b": [f"b{i}" for i in range(6)]}
    calibration, held_out = half_split(groups)
    assert (calibration, held_out) == half_split({k: v[::-1] for k, v in groups.items()})
    assert not set(calibration) & set(held_out)
    assert sorted(calibration + held_out) == sorted(groups["a"] + groups["b"])
    assert sum(f.startswith("a") for f in calibration) == 5 and sum(f.startswith("b") for f in calibration) == 3
    assert half_split(groups, seed=1) != (calibration, held_out)


def _arrays(rng: np.random.Generator, n: int, centre: float, classes: int = 5) -> ScopeArrays:
    features = np.abs(rng.normal(centre, 1.0, size=(n, 6))).astype(np.float32)
    logits = rng.normal(size=(n, classes)) * (3.0 if centre == 0 else 0.3)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return ScopeArrays(probabilities, features, features)


def test_combined_detector_with_imagenet_head_separates_and_round_trips(tmp_path: Path) -> None:
    from animalcls.trust.scope_build import Calibration, fit_detector

    rng = np.random.default_rng(2)
    names = ["cat", "spider", "butterfly", "elephant", "chicken"]
    kernel = rng.normal(size=(6, 1000)).astype(np.float32)
    kernel[:, scope.IMAGENET_SYNSETS["cat"]] += 2.0  # in-scope-like features land on cat synsets
    bias = np.zeros(1000, np.float32)
    train = _arrays(rng, 200, 0.0)
    calibration = Calibration(
        names,
        train,
        rng.integers(0, 5, 200),
        [f"gatto/{i}.jpg" for i in range(200)],
        val=_arrays(rng, 100, 0.0),
        cross_source=_arrays(rng, 60, 0.0),
        out_of_scope=_arrays(rng, 100, -3.0),
    )
    detector = fit_detector(calibration, "combined", imagenet_from_pool=True, head=(kernel, bias))
    assert detector.combiner.names == ["imagenet", "knn", "maxprob"]
    inside, outside = _arrays(rng, 200, 0.0), _arrays(rng, 200, -3.0)
    flagged_in, _ = detector.decide(inside.probabilities, inside.features)
    flagged_out, _ = detector.decide(outside.probabilities, outside.features)
    assert flagged_in.mean() < 0.05 and flagged_out.mean() > 0.9
    scope.save_scope(tmp_path, detector)
    loaded = scope.load_scope(tmp_path)
    assert loaded.imagenet_from_pool and not loaded.needs_imagenet_features
    np.testing.assert_array_equal(loaded.decide(outside.probabilities, outside.features)[0], flagged_out)
    np.testing.assert_allclose(
        loaded.score(inside.probabilities, inside.features),
        detector.score(inside.probabilities, inside.features),
        rtol=1e-3,
        atol=1e-3,
    )


def _small_detector(files: list[str]) -> scope.ScopeDetector:
    features = np.random.default_rng(4).uniform(size=(len(files), 4))
    return scope.ScopeDetector(
        ["cat", "dog"],
        "knn",
        0.5,
        features,
        np.arange(len(files)) % 2,
        files,
        k=1,
        knn=scope.KnnReference.fit(features),
    )


def test_a_written_scope_reads_back(tmp_path: Path) -> None:
    detector = _small_detector(["gatto/a.jpg", "cane/b.jpg", "cane/c.jpg"])
    scope.save_scope(tmp_path, detector)
    loaded = scope.load_scope(tmp_path)
    assert loaded.train_files == detector.train_files and loaded.method == "knn" and loaded.k == 1
    features = np.random.default_rng(5).uniform(size=(6, 4))
    np.testing.assert_allclose(
        loaded.score(np.ones((6, 2)) / 2, features), detector.score(np.ones((6, 2)) / 2, features), atol=2e-3
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [scope.SCOPE_JSON, scope.SCOPE_NPZ]


def _write_broken(folder: Path, detector: scope.ScopeDetector, how: str) -> None:
    scope.save_scope(folder, detector)
    if how == "npz-bytes":
        data = bytearray((folder / scope.SCOPE_NPZ).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / scope.SCOPE_NPZ).write_bytes(bytes(data))
    elif how == "json-truncated":
        text = (folder / scope.SCOPE_JSON).read_text()
        (folder / scope.SCOPE_JSON).write_text(text[: len(text) // 2])
    elif how == "npz-missing":
        (folder / scope.SCOPE_NPZ).unlink()
    elif how == "json-key-missing":
        meta = json.loads((folder / scope.SCOPE_JSON).read_text())
        del meta["threshold"]
        (folder / scope.SCOPE_JSON).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "how, message",
    [
        ("npz-bytes", "does not match"),
        ("json-truncated", "Corrupt scope.json"),
        ("npz-missing", "no scope.npz"),
        ("json-key-missing", "lacks: threshold"),
    ],
)
def test_a_broken_scope_file_is_refused_with_a_clear_error(tmp_path: Path, how: str, message: str) -> None:
    detector = _small_detector(["gatto/a.jpg", "cane/b.jpg", "cane/c.jpg"])
    _write_broken(tmp_path, detector, how)
    with pytest.raises(scope.ScopeError, match=message):
        scope.load_scope(tmp_path)


def test_absolute_train_paths_are_refused(tmp_path: Path) -> None:
    detector = _small_detector(["gatto/a.jpg", "/home/me/gatto/b.jpg", "cane/c.jpg"])
    scope.save_scope(tmp_path, detector)
    with pytest.raises(scope.ScopeError, match="relative"):
        scope.load_scope(tmp_path)


def test_build_scope_on_a_tiny_checkpoint(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from animalcls.data.dataset import Split
    from animalcls.trust.scope_build import build_scope

    checkpoint = copy_checkpoint(tiny_checkpoints["scratch"], tmp_path / "scratch-tiny")
    split = Split.load(checkpoint / "split.json")
    root = split.locate_root(checkpoint)
    out_dir, cross_dir = tmp_path / "out", tmp_path / "cross"
    out_dir.mkdir()
    cross_dir.mkdir()
    out = [str(make_image(out_dir / f"{i}.png", (128, 0, 128), seed=9000 + i)) for i in range(8)]
    out += sorted(str(p) for p in (root / "cane").iterdir())
    cross = [str(make_image(cross_dir / f"{i}.png", (220, 40, 40), seed=7000 + i)) for i in range(6)]

    detector = build_scope(checkpoint, out, cross, method="combined", imagenet=False)
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith(".")) == []  # no temp leftovers
    meta = json.loads((checkpoint / scope.SCOPE_JSON).read_text())
    assert meta["method"] == "combined" and meta["calibration"]["out_of_scope"] == len(out)
    assert str(tmp_path) not in (checkpoint / scope.SCOPE_JSON).read_text()
    with np.load(checkpoint / scope.SCOPE_NPZ) as data:
        assert data["train_features"].dtype == np.float16
        assert data["train_features"].shape == (len(split.train), 16)
        assert data["train_files"].tolist() == [rel for rel, _ in split.train]
        assert data["train_labels"].tolist() == [label for _, label in split.train]
        assert "imagenet_kernel" not in data.files

    loaded = scope.load_scope(checkpoint)
    scope.check_matches(loaded, json.loads((checkpoint / "manifest.json").read_text()), checkpoint)
    assert loaded.threshold == pytest.approx(detector.threshold)
    assert loaded.combiner.names == ["knn", "maxprob"] and not loaded.needs_imagenet_features
    with pytest.raises(scope.ScopeError, match="already has"):
        build_scope(checkpoint, out, cross, method="combined", imagenet=False)
    (checkpoint / "model.keras").write_bytes((tiny_checkpoints["transfer"] / "model.keras").read_bytes())
    with pytest.raises(scope.ScopeError, match="another model.keras"):
        scope.check_matches(loaded, json.loads((checkpoint / "manifest.json").read_text()), checkpoint)


def test_scope_arrays_come_from_one_forward_pass(tiny_checkpoints: dict[str, Path]) -> None:
    from animalcls.serving.forward import outputs_model
    from animalcls.store.checkpoints import load_checkpoint

    loaded = load_checkpoint(tiny_checkpoints["transfer"])
    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    outputs = outputs_model(loaded.model, ("probabilities", "pooled"))(images, training=False)
    probabilities, features = outputs["probabilities"], outputs["pooled"]
    np.testing.assert_allclose(np.asarray(probabilities), np.asarray(loaded.model(images, training=False)), atol=1e-6)
    assert np.asarray(features).shape == (4, 16)


@pytest.mark.slow
def test_bundled_detectors_flag_other_animals_and_pass_the_five(shared_raw: Path) -> None:
    """On a sample of the held-out halves (never used for fitting) and of the test split."""
    from animalcls.data.dataset import Split
    from animalcls.serving.inference import load_image, to_model_input
    from animalcls.store import checkpoints
    from animalcls.trust.scope_build import ScopePredictor, shared_calibration_sets

    pair = checkpoints.default_pair()
    if set(pair) != {"scratch", "transfer"} or not all(scope.has_scope(p) for p in pair.values()):
        pytest.skip("bundled checkpoints without scope files")
    held = {name: halves[1] for name, halves in shared_calibration_sets(shared_raw.parent.parent).items()}
    split = Split.load(pair["transfer"] / "split.json")
    samples = {
        "other": held["other"][::15],
        "cane": held["cane"][::15],
        "cross": held["cross"][::10],
        "test": split.paths("test", split.locate_root(pair["transfer"]))[0][::25],
    }
    transfer, scratch = ScopePredictor(pair["transfer"]), ScopePredictor(pair["scratch"])
    rates: dict[tuple[str, str], float] = {}
    for name, paths in samples.items():
        batch = np.stack([to_model_input(load_image(p), transfer.predictor.image_size) for p in paths])
        _, imagenet_features = transfer.arrays(batch)  # the frozen ImageNet base: reused by scratch
        for kind, predictor in (("transfer", transfer), ("scratch", scratch)):
            verdicts = predictor.predict(paths, imagenet_features=imagenet_features)
            rates[kind, name] = float(np.mean([v["out_of_scope"] for v in verdicts]))
    for kind in ("transfer", "scratch"):
        assert rates[kind, "other"] >= 0.75, rates
        assert rates[kind, "cane"] >= 0.8, rates
        assert rates[kind, "test"] <= 0.07, rates
        assert rates[kind, "cross"] <= 0.1, rates


def test_a_calibration_head_gives_the_maxprob_score_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    features = rng.normal(size=(8, 4))
    head = [(rng.normal(size=(4, 3)), rng.normal(size=3)), (rng.normal(size=(3, 2)), rng.normal(size=2))]
    detector = scope.ScopeDetector(
        ["cat", "dog"],
        "maxprob",
        0.3,
        features,
        np.arange(8) % 2,
        [f"cat/{i}.jpg" for i in range(8)],
        calibration_head=head,
    )
    hidden = np.maximum(features @ head[0][0] + head[0][1], 0.0) @ head[1][0] + head[1][1]
    expected = 1.0 - (np.exp(hidden) / np.exp(hidden).sum(axis=1, keepdims=True)).max(axis=1)
    anything = np.full((8, 2), 0.5)  # the model's own probabilities are not what it scores
    np.testing.assert_allclose(detector.score(anything, features), expected, atol=1e-9)
    scope.save_scope(tmp_path, detector)
    loaded = scope.load_scope(tmp_path)
    assert len(loaded.calibration_head) == 2
    np.testing.assert_allclose(loaded.score(anything, features), expected, atol=1e-5)
    plain = scope.ScopeDetector(["cat", "dog"], "maxprob", 0.3, features, np.arange(8) % 2, detector.train_files)
    np.testing.assert_allclose(plain.score(anything, features), 0.5)
