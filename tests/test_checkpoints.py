import json
import shutil

import numpy as np
import pytest

from animalcls.core.errors import CheckpointError
from animalcls.models import builders as models
from animalcls.store import checkpoints
from animalcls.training import plots


def _manifest(**changes):
    base = {
        "name": "m",
        "kind": "scratch",
        "backbone": "tiny",
        "image_size": 32,
        "class_names": ["cat", "spider", "butterfly"],
    }
    return {**base, **changes}


def test_save_and_load_round_trip_gives_identical_predictions(tmp_path):
    model = models.build_scratch("tiny", 3, 32)
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}
    evaluation = {
        "accuracy": 0.5,
        "class_names": ["cat", "spider", "butterfly"],
        "confusion_matrix": [[1, 0, 0], [0, 1, 1], [1, 0, 0]],
        "report": {},
    }
    figures = plots.checkpoint_figures(history, evaluation, "m")
    path = checkpoints.save_checkpoint(tmp_path / "ck", model, _manifest(), history, evaluation, figures=figures)
    loaded = checkpoints.load_checkpoint(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.model(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert loaded.history == history and loaded.evaluation == evaluation
    assert (path / "history.png").stat().st_size > 1000 and (path / "confusion_matrix.png").exists()
    assert loaded.manifest["files"][:2] == ["model.keras", "manifest.json"]


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    model = models.build_scratch("tiny", 3, 32)
    path = checkpoints.save_checkpoint(tmp_path / "ck", model, _manifest(name="first"))
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoints.save_checkpoint(path, model, _manifest(name="second"))
    checkpoints.save_checkpoint(path, model, _manifest(name="second"), overwrite=True)
    assert checkpoints.read_manifest(path)["name"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    class Broken:
        def save(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoints.save_checkpoint(tmp_path / "ck", Broken(), _manifest())
    assert list(tmp_path.iterdir()) == []


def test_class_count_mismatch_is_reported(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "ck", models.build_scratch("tiny", 3, 32), _manifest())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["class_names"] = ["cat", "spider"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outputs 3 classes but manifest.json lists 2"):
        checkpoints.load_checkpoint(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "manifest.json").write_text("{broken"), "Corrupt manifest.json"),
        (lambda p: (p / "manifest.json").unlink(), "Missing manifest.json"),
        (lambda p: (p / "model.keras").write_bytes(b"garbage"), "not a Keras archive"),
        (lambda p: (p / "model.keras").unlink(), "Missing model.keras"),
        (lambda p: (p / "manifest.json").write_text('{"name": "x"}'), "lacks: kind"),
    ],
)
def test_corrupt_checkpoints_give_clear_messages(tmp_path, damage, message):
    path = checkpoints.save_checkpoint(tmp_path / "ck", models.build_scratch("tiny", 3, 32), _manifest())
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        checkpoints.load_checkpoint(path)


def test_truncated_model_archive(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "ck", models.build_scratch("tiny", 3, 32), _manifest())
    data = (path / "model.keras").read_bytes()
    (path / "model.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoints.load_checkpoint(path)


def test_default_pair_uses_defaults_json_or_newest_per_kind(tmp_path, tiny_checkpoints):
    root = tmp_path / "root"
    for kind, folder in tiny_checkpoints.items():
        shutil.copytree(folder, root / f"{kind}-a")
    assert checkpoints.default_pair(root) == {"scratch": root / "scratch-a", "transfer": root / "transfer-a"}
    shutil.copytree(tiny_checkpoints["scratch"], root / "scratch-b")
    manifest = json.loads((root / "scratch-b" / "manifest.json").read_text())
    manifest["created"] = "2999-01-01T00:00:00+00:00"
    (root / "scratch-b" / "manifest.json").write_text(json.dumps(manifest))
    assert checkpoints.default_pair(root)["scratch"] == root / "scratch-b"
    (root / "defaults.json").write_text(json.dumps({"scratch": "scratch-a", "transfer": "transfer-a"}))
    assert checkpoints.default_pair(root)["scratch"] == root / "scratch-a"
    assert checkpoints.find_checkpoints(root) == sorted(p for p in root.iterdir() if p.is_dir())


@pytest.mark.slow
def test_bundled_checkpoints_load_if_present():
    pair = checkpoints.default_pair()
    if not pair:
        pytest.skip("no bundled checkpoints yet")
    for kind, folder in pair.items():
        loaded = checkpoints.load_checkpoint(folder)
        assert loaded.manifest["kind"] == kind
        assert loaded.evaluation["accuracy"] > 0.5


@pytest.mark.slow
def test_optimizer_state_is_not_saved(tmp_path):
    import zipfile

    from animalcls.training import train

    model = models.build_transfer("tiny", 3, 32, weights=None)
    train.compile_model(model, train.PRESETS["transfer"])
    model.fit(np.zeros((4, 32, 32, 3)), np.eye(3)[[0, 1, 2, 0]], verbose=0)
    path = checkpoints.save_checkpoint(tmp_path / "ck", model, _manifest(kind="transfer"))
    with zipfile.ZipFile(path / "model.keras") as archive:
        import io

        import h5py

        names = []
        h5py.File(io.BytesIO(archive.read("model.weights.h5"))).visit(names.append)
    assert not any("optimizer" in n for n in names)
    loaded = checkpoints.load_checkpoint(path)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.model(x).numpy(), model(x).numpy(), rtol=1e-6)
