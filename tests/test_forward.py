"""Named outputs of one forward pass (serving.forward): ONNX Runtime and Keras agree, a Predictor
serves them on its engine, image files run in bounded batches, and the one sub-model builder."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_model

from animalcls.core.errors import CheckpointError
from animalcls.serving.forward import OUTPUTS, Forward, forward_paths, outputs_model, slices
from animalcls.serving.onnx_engine import onnx_forward

TOLERANCE = {"probabilities": 1e-5, "pooled": 1e-4, "feature_map": 1e-4}  # absolute, ONNX vs Keras


def _batch(count: int = 5, size: int = 32) -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def _test_photos(folder) -> list[str]:
    from animalcls.data.dataset import Split

    split = Split.load(folder / "split.json")
    return split.paths("test", split.locate_root(folder))[0]


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_onnx_runtime_and_keras_give_the_same_named_outputs(tiny_checkpoints, kind):
    folder = tiny_checkpoints[kind]
    onnx = onnx_forward(folder)  # train_checkpoint wrote the graph
    assert onnx is not None and onnx.engine is not None and onnx.image_size == 32
    keras = Forward(32, model=load_model(folder))
    batch = _batch()
    ours, theirs = onnx(batch, OUTPUTS), keras(batch, OUTPUTS)
    assert set(ours) == set(theirs) == set(OUTPUTS)
    assert ours["feature_map"].shape[:3] == (5, 8, 8) and ours["pooled"].shape == (5, ours["feature_map"].shape[-1])
    for name in OUTPUTS:
        assert ours[name].shape == theirs[name].shape
        np.testing.assert_allclose(ours[name], theirs[name], atol=TOLERANCE[name])
    pooled = keras(batch, ("pooled",))
    assert list(pooled) == ["pooled"]  # only what is asked for
    np.testing.assert_allclose(pooled["pooled"], theirs["pooled"], atol=1e-6)


@pytest.mark.parametrize("engine", ["onnx", "tf"])
def test_a_predictor_serves_its_outputs_on_its_engine(tiny_checkpoints, engine):
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(tiny_checkpoints["transfer"], engine)
    forward = predictor.outputs
    assert forward is predictor.outputs and (forward.engine is None) == (engine == "tf")
    batch = _batch()
    np.testing.assert_array_equal(predictor.forward(batch), forward(batch)["probabilities"])
    np.testing.assert_allclose(predictor.forward(batch).sum(axis=1), 1.0, atol=1e-5)


def test_image_files_run_in_bounded_batches_in_file_order(tiny_checkpoints):
    folder = tiny_checkpoints["transfer"]
    forward = Forward(32, model=load_model(folder))
    paths = _test_photos(folder)[:7]
    steps: list[tuple[int, int | None]] = []
    small = forward_paths(
        forward, paths, ("probabilities", "pooled"), batch_size=3, on_batch=lambda *s: steps.append(s)
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]
    whole = forward_paths(forward, paths, ("probabilities", "pooled"), batch_size=32)
    for name in ("probabilities", "pooled"):
        assert small[name].shape[0] == 7
        np.testing.assert_allclose(small[name], whole[name], atol=1e-6)
    one = forward_paths(forward, paths[4:5], ("probabilities",))["probabilities"]
    np.testing.assert_allclose(one[0], whole["probabilities"][4], atol=1e-6)
    with pytest.raises(ValueError, match="No image paths"):
        forward_paths(forward, [])


def test_over_concatenates_the_slices_of_an_array(tiny_checkpoints):
    forward = Forward(32, model=load_model(tiny_checkpoints["scratch"]))
    batch = _batch(5)
    assert [len(chunk) for chunk in slices(batch, 2)] == [2, 2, 1]
    np.testing.assert_allclose(
        forward.over(slices(batch, 2))["probabilities"], forward(batch)["probabilities"], atol=1e-6
    )
    with pytest.raises(ValueError, match="No images"):
        forward.over([])
    with pytest.raises(ValueError, match="either"):
        Forward(32)


def test_the_sub_model_gives_only_outputs_the_model_has():
    import keras

    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    assert list(outputs_model(flat, ("probabilities",)).output) == ["probabilities"]
    with pytest.raises(CheckpointError, match="no 'avg_pool' layer"):
        outputs_model(flat, ("pooled",))
    with pytest.raises(ValueError, match="Unknown outputs"):
        outputs_model(flat, ("logits",))
