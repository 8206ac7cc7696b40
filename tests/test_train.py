import json
import threading

import numpy as np
import pytest

from animalcls.core.hooks import TrainHooks
from animalcls.data import dataset as data
from animalcls.models import builders as models
from animalcls.training import train
from animalcls.training.workflows import train_checkpoint


def _datasets(root, batch_size=8):
    split = data.split_scan(data.scan_folder(root))
    kwargs = dict(num_classes=5, image_size=32, batch_size=batch_size)
    train_ds = data.make_dataset(*split.paths("train"), training=True, **kwargs)
    val_ds = data.make_dataset(*split.paths("val"), **kwargs)
    return train_ds, val_ds, -(-len(split.train) // batch_size)


def test_presets_hold_the_study_configurations():
    scratch, sgd, transfer = train.PRESETS["scratch"], train.PRESETS["scratch-sgd"], train.PRESETS["transfer"]
    assert (scratch.optimizer, scratch.learning_rate, scratch.batch_size, scratch.epochs) == ("adam", 1e-3, 15, 20)
    assert sgd.optimizer == "sgd"
    assert (transfer.batch_size, transfer.epochs, transfer.learning_rate) == (64, 7, 1e-3)
    assert (transfer.early_stopping_patience, transfer.reduce_lr_patience, transfer.keep_best) == (4, 5, True)
    assert transfer.replace(epochs=2, batch_size=None).epochs == 2  # None keeps the preset value


def test_callbacks_follow_the_study(tmp_path):
    names = [type(c).__name__ for c in train.study_callbacks(train.PRESETS["transfer"], tmp_path)]
    assert names == ["EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"]
    assert train.study_callbacks(train.PRESETS["scratch"], tmp_path) == []


@pytest.mark.slow
def test_fit_records_metrics_every_epoch_and_saves_history(tmp_path, synthetic_data):
    train_ds, val_ds, steps = _datasets(synthetic_data)
    config = train.PRESETS["transfer"].replace(epochs=3, batch_size=8)
    batches, epochs_seen = [], []
    model = models.build_transfer("tiny", 5, 32, weights=None)
    result = train.fit(
        model,
        config,
        train_ds,
        val_ds,
        tmp_path / "work",
        steps,
        on_batch=lambda e, b, s, logs: batches.append((e, b, s)),
        on_epoch=lambda e, history: epochs_seen.append((e, dict(history))),
    )
    for key in ("loss", "accuracy", "precision", "recall", "val_loss", "val_accuracy", "val_precision", "val_recall"):
        assert len(result.history[key]) == 3, key
    saved = json.loads((tmp_path / "work" / "history.json").read_text())
    assert saved == result.history
    assert batches[0] == (1, 1, steps) and batches[-1] == (3, steps, steps)
    assert [e for e, _ in epochs_seen] == [1, 2, 3]
    assert len(epochs_seen[0][1]["loss"]) == 1  # the hook sees the history as it grows
    losses = result.history["val_loss"]
    assert result.best_epoch == int(np.argmin(losses)) + 1


@pytest.mark.slow
def test_cancel_keeps_only_finished_epochs(tmp_path, synthetic_data):
    """Cancelled in epoch 2, batch 2: the history lists epoch 1 only and the weights are those
    at the end of epoch 1 (the two batches of epoch 2 are undone)."""
    train_ds, val_ds, steps = _datasets(synthetic_data, batch_size=4)
    cancel = threading.Event()
    config = train.PRESETS["scratch"].replace(epochs=5, batch_size=4)
    model = models.build_scratch("tiny", 5, 32)
    at_epoch_end: list[list[np.ndarray]] = []

    def on_batch(epoch, batch, steps_, logs):
        if (epoch, batch) == (2, 2):
            cancel.set()

    def on_epoch(epoch, history):
        at_epoch_end.append(model.get_weights())

    result = train.fit(model, config, train_ds, val_ds, tmp_path / "w", steps, on_batch, on_epoch, cancel)
    assert result.cancelled
    assert len(result.history["loss"]) == 1 and len(at_epoch_end) == 1
    assert json.loads((tmp_path / "w" / "history.json").read_text())["loss"] == result.history["loss"]
    for saved, now in zip(at_epoch_end[0], model.get_weights()):
        np.testing.assert_array_equal(saved, now)


@pytest.mark.slow
def test_cancel_in_the_first_epoch_finishes_none(tmp_path, synthetic_data):
    train_ds, val_ds, steps = _datasets(synthetic_data, batch_size=4)
    cancel = threading.Event()
    config = train.PRESETS["transfer"].replace(epochs=5, batch_size=4)  # keep_best: no best file yet
    model = models.build_scratch("tiny", 5, 32)
    result = train.fit(
        model, config, train_ds, val_ds, tmp_path / "w", steps, on_batch=lambda *_: cancel.set(), cancel=cancel
    )
    assert result.cancelled and result.history == {} and result.best_epoch is None


@pytest.mark.slow
def test_train_checkpoint_cancelled_before_an_epoch_saves_nothing(tmp_path, synthetic_data):
    from animalcls.core.errors import Cancelled
    from animalcls.core.hooks import TrainHooks

    cancel = threading.Event()
    cancel.set()
    config = train.PRESETS["scratch"].replace(backbone="tiny", image_size=32, epochs=3, batch_size=8)
    with pytest.raises(Cancelled, match="nothing was saved"):
        train_checkpoint(synthetic_data, config, tmp_path / "out", hooks=TrainHooks(cancel=cancel))
    assert not [p for p in tmp_path.iterdir() if p.name != synthetic_data.name]  # no folder, no leftovers


@pytest.mark.slow
def test_seeded_runs_are_repeatable(tmp_path, synthetic_data):
    config = train.PRESETS["scratch"].replace(backbone="tiny", image_size=32, epochs=1, batch_size=8)
    first = train_checkpoint(synthetic_data, config, tmp_path / "a")[2].history["loss"]
    second = train_checkpoint(synthetic_data, config, tmp_path / "b")[2].history["loss"]
    np.testing.assert_allclose(first, second, rtol=5e-3)  # oneDNN reductions are not bit-exact


@pytest.mark.slow
def test_tiny_model_learns_colour_classes(tmp_path):
    from conftest import make_dataset

    root = make_dataset(tmp_path / "d", per_class=16)
    # The frozen random base gives fixed colour features; the study's head must learn them.
    config = train.PRESETS["transfer"].replace(backbone="tiny", image_size=32, epochs=10, batch_size=8)
    config.weights = None
    _, _, result, evaluation = train_checkpoint(root, config, tmp_path / "ckpt")
    assert evaluation["accuracy"] >= 0.8, (evaluation["accuracy"], result.history["val_accuracy"])


@pytest.mark.slow
def test_train_checkpoint_writes_a_complete_folder(tmp_path, synthetic_data):
    hooks = TrainHooks(on_scan=lambda d, t: None)
    config = train.PRESETS["transfer"].replace(backbone="tiny", image_size=32, epochs=1, batch_size=8)
    config.weights = None
    path, scan, result, evaluation = train_checkpoint(synthetic_data, config, tmp_path / "out" / "t", hooks=hooks)
    files = {p.name for p in path.iterdir()}
    assert {
        "model.keras",
        "manifest.json",
        "history.json",
        "eval.json",
        "split.json",
        "history.png",
        "confusion_matrix.png",
    } <= files
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "transfer" and manifest["backbone"] == "tiny"
    assert manifest["class_names"] == ["cat", "spider", "butterfly", "elephant", "chicken"]
    assert manifest["training"]["seconds"] > 0 and "keras" in manifest["versions"]
    assert manifest["dataset"]["sizes"]["test"] == 10
    assert not list((tmp_path / "out").glob(".*"))  # no temp or work folders left behind


@pytest.mark.parametrize("bad", ["rmsprop"])
def test_unknown_optimizer_is_rejected(bad):
    with pytest.raises(ValueError, match="Unknown optimizer"):
        train.make_optimizer(train.PRESETS["scratch"].replace(optimizer=bad))
