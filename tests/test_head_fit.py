"""The one head trainer (heads.head_fit): what fine-tuning and teaching both train with."""

from __future__ import annotations

import threading

import numpy as np
import pytest


def blobs(n: int, seed: int, classes: int = 3, dim: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = np.random.default_rng(99).normal(0, 3, (classes, dim))
    return (centres[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32), labels


def small_head(classes: int = 3, dim: int = 12, hidden: int = 8, dropout: float = 0.0):
    from animalcls.heads.numpy_head import Head

    rng = np.random.default_rng(1)
    return Head(
        [
            rng.normal(0, 0.3, (dim, hidden)).astype(np.float32),
            rng.normal(0, 0.3, (hidden, classes)).astype(np.float32),
        ],
        [np.zeros(hidden, np.float32), np.zeros(classes, np.float32)],
        dropout,
        ["fc"],
    )


def test_fit_head_learns_and_records_keras_history_keys():
    from animalcls.heads.head_fit import Recipe, fit_head

    train, val = blobs(300, 0), blobs(60, 1)
    head = small_head(dropout=0.2)
    fitted = fit_head(head, train, val, Recipe(epochs=6, batch_size=32, learning_rate=1e-2, keep_best=True))
    keys = {
        "loss",
        "accuracy",
        "precision",
        "recall",
        "val_loss",
        "val_accuracy",
        "val_precision",
        "val_recall",
        "epoch_seconds",
        "learning_rate",
    }
    assert set(fitted.history) == keys and len(fitted.history["loss"]) == 6
    assert fitted.history["val_loss"][-1] < fitted.history["val_loss"][0]
    assert fitted.history["val_accuracy"][-1] > 0.9
    losses = fitted.history["val_loss"]
    assert fitted.best_epoch == int(np.argmin(losses)) + 1
    best_loss = -np.log(np.clip(fitted.head.probabilities(val[0])[np.arange(60), val[1]], 1e-7, 1)).mean()
    assert best_loss == pytest.approx(min(losses), rel=1e-4)  # the kept head is the best epoch's
    assert not np.allclose(head.kernels[0], fitted.head.kernels[0])  # trained a copy; the input is untouched
    np.testing.assert_array_equal(head.kernels[0], small_head(dropout=0.2).kernels[0])


def test_fit_head_stops_early_and_reduces_the_learning_rate():
    from animalcls.heads.head_fit import Recipe, fit_head

    train = blobs(200, 0)
    noise = (
        np.random.default_rng(5).normal(0, 1, (60, 12)).astype(np.float32),
        np.random.default_rng(6).integers(0, 3, 60),
    )
    recipe = Recipe(epochs=40, batch_size=32, learning_rate=5e-2, early_stopping_patience=3, reduce_lr_patience=2)
    fitted = fit_head(small_head(), train, noise, recipe)
    assert len(fitted.history["loss"]) < 40  # val_loss on noise stops improving
    rates = fitted.history["learning_rate"]
    assert rates[0] == pytest.approx(5e-2) and min(rates) < 5e-2
    assert all(any(rate == pytest.approx(5e-2 * 0.2**k) for k in range(5)) for rate in rates)


def test_fit_head_cancel_keeps_only_finished_epochs():
    from animalcls.heads.head_fit import Recipe, fit_head

    cancel = threading.Event()
    snapshots: list = []

    def on_batch(epoch, step, steps, logs):
        if epoch == 2 and step == 3:
            snapshots.append(True)
            cancel.set()

    fitted = fit_head(
        small_head(),
        blobs(320, 0),
        blobs(40, 1),
        Recipe(epochs=5, batch_size=32, learning_rate=1e-2),
        on_batch=on_batch,
        cancel=cancel,
    )
    assert fitted.cancelled and snapshots and len(fitted.history["loss"]) == 1
    # The head is the one at the end of epoch 1: its validation loss is the recorded one.
    val = blobs(40, 1)
    loss = -np.log(np.clip(fitted.head.probabilities(val[0])[np.arange(40), val[1]], 1e-7, 1)).mean()
    assert loss == pytest.approx(fitted.history["val_loss"][0], rel=1e-4)


def test_fit_head_reports_the_label_smoothed_loss_keras_reports():
    import keras

    from animalcls.heads.head_fit import _sums

    probs = np.random.default_rng(3).dirichlet(np.ones(5), size=40).astype(np.float32)
    labels = np.random.default_rng(4).integers(0, 5, 40)
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(keras.utils.to_categorical(labels, 5), probs)
    assert _sums(probs, labels, 0.1)[0] / 40 == pytest.approx(float(expected), rel=1e-5)


def test_balanced_weights_let_a_few_samples_count_as_a_whole_class():
    from animalcls.heads.head_fit import Recipe, fit_head

    def overlapping(counts: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        centres = np.random.default_rng(98).normal(0, 0.6, (3, 12))
        labels = np.repeat(np.arange(3), counts)
        return (centres[labels] + rng.normal(0, 1, (len(labels), 12))).astype(np.float32), labels

    train, test = overlapping([300, 300, 6], 0), overlapping([100, 100, 100], 7)
    recalls = {}
    for balanced in (False, True):
        recipe = Recipe(epochs=8, batch_size=32, learning_rate=1e-2, balanced=balanced)
        head = fit_head(small_head(), train, None, recipe).head
        recalls[balanced] = float((head.probabilities(test[0]).argmax(1)[test[1] == 2] == 2).mean())
    assert recalls[True] > recalls[False] + 0.2, recalls


def test_flipped_features_are_drawn_per_sample_and_epoch():
    """Plain features are noise, their flipped copies carry the class: only a trainer that
    trains on the flipped copies (about half of each epoch's samples) learns the classes."""
    from animalcls.heads.head_fit import Recipe, fit_head

    informative, labels = blobs(400, 0)
    noise = np.random.default_rng(3).normal(0, 1, informative.shape).astype(np.float32)
    recipe = Recipe(epochs=10, batch_size=32, learning_rate=1e-2)
    test = blobs(200, 5)
    accuracy = {}
    for name, flipped in (("with flips", informative), ("without", None)):
        head = fit_head(small_head(), (noise, labels), None, recipe, flipped=flipped).head
        accuracy[name] = float((head.probabilities(test[0]).argmax(1) == test[1]).mean())
    assert accuracy["with flips"] > 0.9 and accuracy["without"] < 0.6, accuracy


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_head_trainer_follows_keras_optimizers_step_for_step(optimizer):
    """One step of the NumPy optimizers equals Keras's on the same weights and gradients
    (Adam, AdamW's decoupled weight decay, SGD with momentum)."""
    import keras

    from animalcls.heads.numpy_head import SGD, Adam

    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3)]
    ours = [start.copy()]
    mine = Adam(ours, 0.01, weight_decay=0.1) if optimizer == "adam" else SGD(ours, 0.01, momentum=0.9)
    theirs = keras.Variable(start.copy())
    if optimizer == "adam":
        keras_opt = keras.optimizers.AdamW(0.01, weight_decay=0.1)
    else:
        keras_opt = keras.optimizers.SGD(0.01, momentum=0.9)
    for grad in grads:
        mine.step(ours, [grad])
        keras_opt.apply_gradients([(keras.ops.convert_to_tensor(grad), theirs)])
    np.testing.assert_allclose(ours[0], np.asarray(theirs), rtol=1e-5, atol=1e-6)


def test_cosine_recipe_sets_each_epochs_rate_and_never_reduces_on_plateau():
    from animalcls.heads.head_fit import Recipe, fit_head
    from animalcls.training.schedules import cosine_rate

    recipe = Recipe(epochs=6, batch_size=32, learning_rate=1e-2, cosine=True, warmup_epochs=2, reduce_lr_patience=1)
    rng = np.random.default_rng(5)
    noise = (rng.normal(0, 1, (60, 12)).astype(np.float32), rng.integers(0, 3, 60))
    fitted = fit_head(small_head(), blobs(200, 0), noise, recipe)
    assert fitted.history["learning_rate"] == pytest.approx([cosine_rate(1e-2, 6, 2, e) for e in range(6)])
