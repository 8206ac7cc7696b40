"""A resumable scratch run: an interrupted run continues from its last finished epoch, keeps the
history it had, and picks the epoch on the validation views."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import COLOURS, make_image

pytestmark = pytest.mark.slow


def _photos(folder, per_class: int = 8):
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for label, colour in enumerate(list(COLOURS.values())[:3]):
        for index in range(per_class):
            paths.append(str(make_image(folder / f"{label}-{index}.png", colour, size=40, seed=index)))
            labels.append(label)
    return paths, labels


class _Interrupted(Exception):
    pass


def _interrupt_after(epochs: int):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise _Interrupted

    return Interrupt()


def _config(epochs: int):
    from animalcls.training.scratch_run import RunConfig

    return RunConfig(
        backbone="tiny",
        image_size=32,
        epochs=epochs,
        batch_size=8,
        warmup_epochs=1,
        augment={"jpeg_p": 0.0},
        dropout=0.0,
    )


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    from animalcls.training.scratch_run import BEST_FILE, HISTORY_FILE, finished_epochs, run

    paths, labels = _photos(tmp_path / "photos")
    args = (paths, labels, paths[::4], labels[::4], 3)
    straight = run(_config(3), *args, tmp_path / "straight")
    with pytest.raises(_Interrupted):
        run(_config(3), *args, tmp_path / "resumed", extra_callbacks=[_interrupt_after(2)])
    before = json.loads((tmp_path / "resumed" / HISTORY_FILE).read_text())
    assert finished_epochs(tmp_path / "resumed") == 2
    resumed = run(_config(3), *args, tmp_path / "resumed")
    assert finished_epochs(tmp_path / "resumed") == 3
    assert len(resumed.history["loss"]) == 3
    assert resumed.history["loss"][:2] == before["loss"]
    # The third epoch starts from the backup's weights and optimizer state and draws the batches
    # the straight run drew, so it is the same epoch (no dropout: Keras backs up no seed state).
    np.testing.assert_allclose(resumed.history["loss"], straight.history["loss"], rtol=1e-6)
    best = json.loads((tmp_path / "resumed" / BEST_FILE).read_text())
    scores = resumed.history["val_selection_score"]
    assert best["epoch"] == 1 + int(np.argmax(scores)) and best["score"] == max(scores)
    assert (tmp_path / "resumed" / "best.weights.h5").is_file()


def test_the_selection_score_weighs_the_degraded_views():
    from animalcls.training.scratch_run import selection_score

    logs = {"val_plain_accuracy": 0.9, "val_blur2_accuracy": 0.6, "val_down48_accuracy": 0.3}
    assert selection_score(logs) == pytest.approx(0.6)
