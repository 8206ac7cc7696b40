"""Teaching a checkpoint new classes from a few photos (teach_data, teach_head, teach, the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_image

from animalcls.core.errors import DataError
from animalcls.data.teach_folders import plan_split, scan_teach_folder, union_classes
from animalcls.heads.head_fit import Recipe, fit_head
from animalcls.heads.numpy_head import Head, backprop
from animalcls.heads.teach import limit_new_classes

BASE = ["cat", "spider", "butterfly", "elephant", "chicken"]


def photos(folder: Path, n: int, colour: tuple[int, int, int] = (120, 120, 120), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_image(folder / f"{folder.name}_{i}.jpg", colour, seed=seed + i)
    return folder.parent


def test_union_keeps_the_checkpoint_order_then_new_classes_alphabetical_or_as_given() -> None:
    assert union_classes(BASE, ["dog", "cat", "bird"]) == [*BASE, "bird", "dog"]
    assert union_classes(BASE, ["dog", "cat", "bird"], ["dog", "bird"]) == [*BASE, "dog", "bird"]
    assert union_classes(BASE, ["cat"]) == BASE


def test_split_rule_holds_out_a_fifth_keeps_tiny_classes_whole_and_refuses_one_photo(tmp_path: Path) -> None:
    root = photos(tmp_path / "teach" / "dog", 10)
    photos(root / "gatto", 3, (220, 40, 40), seed=50)  # Italian folder: more photos of "cat"
    (root / "dog" / "notes.txt").write_text("not a photo")
    found = scan_teach_folder(root)
    assert found.counts() == {"cat": 3, "dog": 10}
    assert found.skipped == [("dog/notes.txt", "not an image file extension")]
    split = plan_split(found, seed=1)
    assert len(split.test["dog"]) == 2 and len(split.train["dog"]) == 8
    assert not set(split.test["dog"]) & set(split.train["dog"])
    assert split.tiny == ["cat"] and split.test["cat"] == [] and len(split.train["cat"]) == 3
    assert plan_split(found, seed=1).test == split.test  # seeded
    photos(root / "zebra", 1, (0, 0, 0), seed=90)
    with pytest.raises(DataError, match="zebra.{0,6} has one photo"):
        scan_teach_folder(root)
    with pytest.raises(DataError, match="No folder for class"):
        scan_teach_folder(root, ["dog", "horse"])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_head_gradients_match_finite_differences(smoothing: float) -> None:
    rng = np.random.default_rng(0)
    head = Head(
        [rng.normal(size=(6, 5)).astype(np.float64), rng.normal(size=(5, 3)).astype(np.float64)],
        [rng.normal(size=5).astype(np.float64), rng.normal(size=3).astype(np.float64)],
    )
    x, y, w = rng.normal(size=(7, 6)), rng.integers(0, 3, 7), rng.uniform(0.5, 2.0, 7)
    _, grads = backprop(head, x, y, rng, weights=w, smoothing=smoothing)

    def loss() -> float:  # the weighted mean cross-entropy against label-smoothed targets
        probs = head.probabilities(x)
        target = np.full(probs.shape, smoothing / 3)
        target[np.arange(7), y] += 1 - smoothing
        return float((w * -(target * np.log(probs)).sum(axis=1)).sum() / w.sum())

    for param, grad in zip([*head.kernels, *head.biases], grads):
        index = (0,) * param.ndim
        saved = param[index]
        param[index] = saved + 1e-5
        up = loss()
        param[index] = saved - 1e-5
        down = loss()
        param[index] = saved
        assert (up - down) / 2e-5 == pytest.approx(float(grad[index]), rel=1e-4, abs=1e-7)


def test_a_widened_head_learns_a_new_class_without_forgetting_the_old_ones() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (4, 16))
    old_x = np.concatenate([c + rng.normal(0, 1, (200, 16)) for c in centres[:3]]).astype(np.float32)
    old_y = np.repeat(np.arange(3), 200)
    head = Head([np.zeros((16, 3), np.float32)], [np.zeros(3, np.float32)])
    head = fit_head(head, (old_x, old_y), None, Recipe(20, 64, 1e-2, balanced=True)).head
    new_x = (centres[3] + rng.normal(0, 1, (5, 16))).astype(np.float32)  # five photos of a new class
    widened = head.widened(4, {3: new_x}, head.penultimate(old_x).mean(axis=0))
    np.testing.assert_allclose(widened.kernels[-1][:, :3], head.kernels[-1])
    fitted = fit_head(
        widened,
        (np.concatenate([old_x, new_x]), np.concatenate([old_y, [3] * 5])),
        None,
        Recipe(10, 64, 1e-2, balanced=True),
    )
    taught = fitted.head
    assert not fitted.cancelled and len(fitted.history["loss"]) == 10
    test_old = np.concatenate([c + rng.normal(0, 1, (50, 16)) for c in centres[:3]]).astype(np.float32)
    test_new = (centres[3] + rng.normal(0, 1, (50, 16))).astype(np.float32)
    assert (taught.probabilities(test_old).argmax(1) == np.repeat(np.arange(3), 50)).mean() > 0.9
    assert (taught.probabilities(test_new).argmax(1) == 3).mean() > 0.8


def test_a_new_class_that_overlaps_the_old_ones_claims_at_most_its_share_of_their_photos() -> None:
    rng = np.random.default_rng(2)
    old = rng.normal(0, 1, (1000, 8)).astype(np.float32)
    kernel = np.concatenate([rng.normal(0, 1, (8, 3)), old.mean(axis=0)[:, None] + 0.5], axis=1).astype(np.float32)
    head = Head([kernel], [np.asarray([0, 0, 0, 3.0], np.float32)])  # the new column wins almost everywhere
    assert (head.probabilities(old).argmax(1) == 3).mean() > 0.5
    limited, lowered = limit_new_classes(head, old, 3, 0.01)
    assert (limited.probabilities(old).argmax(1) == 3).mean() <= 0.01 and lowered[0] > 0
    np.testing.assert_array_equal(limited.kernels[-1], head.kernels[-1])
    np.testing.assert_array_equal(limited.biases[-1][:3], head.biases[-1][:3])
    apart = Head([kernel], [np.asarray([0, 0, 0, -50.0], np.float32)])  # claims nothing: left as it is
    assert limit_new_classes(apart, old, 3, 0.01)[1] == [0.0]


def test_bad_teaching_arguments_fail_with_one_error_line_before_tensorflow(
    taught_pair: dict[str, Path], tmp_path: Path
) -> None:
    one = photos(tmp_path / "one" / "dog", 1)
    ten = photos(tmp_path / "ten" / "dog", 10)
    checkpoint = str(taught_pair["scratch"])
    runs = [
        [checkpoint, "--data", str(one), "--classes", "dog"],
        [checkpoint, "--data", str(ten), "--unfreeze", "3"],
        [checkpoint, "--data", str(ten), "--epochs", "0"],
        [checkpoint, "--data", str(ten), "--classes", "cow"],
    ]
    code = (
        "import json, sys; from animalcls.cli.main import main; "
        "rcs = [main(['finetune', *args]) for args in json.loads(sys.argv[1])]; "
        "print(rcs, 'tensorflow' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(runs)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert run.stdout.strip() == "[2, 2, 2, 2] False", run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "Class 'dog' has one photo" in errors[0]
    assert "--unfreeze cannot be combined with teaching" in errors[1]
    assert "--epochs must be at least 1" in errors[2]
    assert "No folder for class(es) cow" in errors[3]


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_teaching_a_new_class_writes_the_union_and_records_what_trained(
    taught_pair: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    from animalcls.heads.reader import read_dense_head
    from animalcls.heads.teach import photo_batch, plan_teach, run_teach, stored_features
    from animalcls.store.checkpoints import load_checkpoint

    root = tmp_path / "mine"
    for i, name in enumerate(["dog", "zebra"]):
        photos(root / name, 10 if name == "dog" else 3, (120, 120, 120) if name == "dog" else (0, 0, 0), seed=500 * i)
    plan = plan_teach(taught_pair[kind], root, ["zebra", "dog"], tmp_path / "out", epochs=5)
    result = run_teach(plan)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["class_names"] == [*BASE, "zebra", "dog"]
    assert manifest["dataset"]["new_classes"] == ["zebra", "dog"]
    split = manifest["dataset"]["split"]
    assert split["tiny"] == ["zebra"] and len(split["train"]["dog"]) == 8 and len(split["test"]["dog"]) == 2
    assert manifest["dataset"]["stored_features"]["train"] > 0 and manifest["dataset"]["stored_features"]["test"] > 0
    assert set(manifest["dataset"]["scores"]) == {"original_classes", "dog"}
    assert str(tmp_path) not in (result.path / "manifest.json").read_text()  # no absolute paths
    loaded = load_checkpoint(result.path)
    assert loaded.model.output_shape[-1] == 7
    # The saved Keras model and the NumPy head agree, and the old classes did not collapse.
    held = photo_batch([root / rel for rel in split["test"]["dog"]], loaded.image_size)
    from animalcls.heads.teach import pooled
    from animalcls.serving.forward import Forward

    features = pooled(Forward(loaded.image_size, model=loaded.model))(held)
    np.testing.assert_allclose(
        loaded.model(held, training=False), read_dense_head(loaded.model).as_head().probabilities(features), atol=1e-5
    )
    from_file = read_dense_head(result.path).as_head()  # the TF-free reader the app uses
    assert from_file.dropout == read_dense_head(loaded.model).as_head().dropout
    np.testing.assert_allclose(
        from_file.probabilities(features), read_dense_head(loaded.model).as_head().probabilities(features), atol=1e-6
    )
    stored = stored_features(taught_pair[kind])
    test, truth = stored.parts["test"]
    before = (
        read_dense_head(load_checkpoint(taught_pair[kind]).model).as_head().probabilities(test).argmax(1) == truth
    ).mean()
    after = manifest["dataset"]["scores"]["original_classes"]["accuracy"]
    assert after >= before - 0.2, (before, after)


@pytest.mark.slow
def test_the_bundled_transfer_model_learns_dogs_from_ten_photos_and_keeps_its_classes(
    shared_raw: Path, tmp_path: Path
) -> None:
    from animalcls.heads.teach import plan_teach, run_teach

    mine = tmp_path / "mine" / "dog"
    mine.mkdir(parents=True)
    for photo in sorted((shared_raw / "cane").iterdir())[:13]:
        (mine / photo.name).symlink_to(photo)
    plan = plan_teach(REPO / "checkpoints" / "transfer-efficientnet_lite0", mine.parent, out_dir=tmp_path / "out")
    scores = json.loads((run_teach(plan).path / "manifest.json").read_text())["dataset"]["scores"]
    assert scores["original_classes"]["n"] == 600 and scores["original_classes"]["accuracy"] >= 0.97
    assert scores["dog"]["n"] == 3


def test_a_taught_session_is_saved_as_checkpoints_that_classify_check_and_teach_the_new_class(
    taught_pair: dict[str, Path], tmp_path: Path
) -> None:
    from animalcls.heads.teach import stored_features
    from animalcls.serving.inference import load_predictor
    from animalcls.store.checkpoints import read_manifest
    from animalcls.trust import scope
    from animalcls.webapp.tabs.teach_session import TeachLimits, TeachSession, classify, save_taught_sides, teach_sides

    folder = tmp_path / "uploads"
    folder.mkdir()
    dogs = [str(make_image(folder / f"dog{i}.png", (120, 120, 120), seed=800 + i)) for i in range(8)]
    session = TeachSession()
    session.add("dog", dogs, TeachLimits())
    teach_sides(session, dict(taught_pair), epochs=3)
    saved = save_taught_sides(session, tmp_path / "store", epochs=3)
    assert set(saved) == {"scratch", "transfer"}
    from PIL import Image

    in_session = classify(session, list(saved), Image.open(dogs[0]))
    for kind, path in saved.items():
        assert path.parent == tmp_path / "store" and session.saved[kind] == path.name
        manifest = read_manifest(path)
        assert manifest["class_names"] == [*BASE, "dog"] and manifest["dataset"]["photos"] == {"dog": 8}
        served = load_predictor(path).predict([dogs[0]])[0]
        assert served == pytest.approx(in_session[kind], abs=1e-4)  # the checkpoint is the session's taught model
        detector = scope.load_scope(path)
        scope.check_matches(detector, manifest, path)
        assert detector.class_names == [*BASE, "dog"] and int((detector.train_labels == 5).sum()) == 8
        assert stored_features(path).class_names == [*BASE, "dog"]  # it can be taught again


@pytest.mark.slow
def test_a_head_only_finetune_can_be_taught_from_its_inherited_stored_features(
    taught_pair: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from animalcls.heads.finetune import finetune
    from animalcls.heads.teach import plan_teach, run_teach

    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "cache"))
    tuned = finetune(taught_pair["transfer"], epochs=1, out_dir=tmp_path / "ft", batch_size=8).path
    photos(tmp_path / "mine" / "dog", 6, seed=77)
    result = run_teach(plan_teach(tuned, tmp_path / "mine", ["dog"], tmp_path / "taught", epochs=3))
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["class_names"] == [*BASE, "dog"]
    assert manifest["dataset"]["stored_features"]["train"] > 0 and manifest["dataset"]["stored_features"]["test"] > 0
