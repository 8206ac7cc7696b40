import time

import keras
import numpy as np
import pytest

from animalcls.core.errors import WeightsUnavailableError
from animalcls.models import backbones
from animalcls.models import builders as models


def test_registry_lists_required_backbones():
    assert {"inception_v3", "efficientnet_lite0", "tiny"} <= set(backbones.list_backbones())
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        backbones.get_backbone("nope")


def test_scratch_model_is_uncompiled_and_fully_trainable():
    model = models.build_scratch("tiny", 5, 32)
    assert model.output_shape == (None, 5) and not model.compiled
    assert model.get_layer("backbone").trainable
    probs = model(np.zeros((2, 32, 32, 3), np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_transfer_model_has_the_study_head_and_a_frozen_base():
    model = models.build_transfer("tiny", 4, 32, weights=None)
    assert not model.get_layer("backbone").trainable
    assert model.get_layer("fc512").units == 512
    assert model.get_layer("predictions").units == 4
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"fc512", "predictions"}


def test_preprocessing_lives_inside_the_model():
    model = models.build_transfer("tiny", 3, 32, weights=None)
    names = [layer.name for layer in model.get_layer("backbone").layers]
    assert "preprocess" in names


def test_unfreeze_top_layers_keeps_batchnorm_frozen():
    model = models.build_transfer("tiny", 3, 32, weights=None)
    models.unfreeze(model, 3)
    base = model.get_layer("backbone")
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable == ["conv1"]  # the top 3 layers are conv1, bn1, relu1; bn1 stays frozen
    assert not base.get_layer("bn1").trainable
    models.unfreeze(model, 0)
    assert not model.trainable_weights[0].path.startswith("backbone")


def test_local_weights_file_is_loaded_for_real(tmp_path):
    source = backbones.build_backbone("tiny", 32)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = backbones.build_backbone("tiny", 32, weights=str(path))
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    transfer = models.build_transfer("tiny", 5, 32, weights=str(path))
    np.testing.assert_array_equal(transfer.get_layer("backbone").weights[0].numpy(), source.weights[0].numpy())


def test_missing_or_mismatched_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        backbones.build_backbone("tiny", 32, weights=str(tmp_path / "missing.weights.h5"))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(WeightsUnavailableError, match="Could not load weights"):
        backbones.build_backbone("tiny", 32, weights=str(tmp_path / "other.weights.h5"))


def test_default_backbone_is_efficientnet_without_cached_inception_weights(keras_home):
    assert backbones.default_backbone() == "efficientnet_lite0"
    (keras_home / "models").mkdir()
    (keras_home / "models" / backbones.INCEPTION_NOTOP_FILE).write_bytes(b"x")
    assert backbones.default_backbone() == "inception_v3"


@pytest.mark.slow
def test_imagenet_inception_offline_fails_fast_and_says_where_to_put_the_file(keras_home, monkeypatch):
    # Point Keras's download at a closed local port so no traffic leaves the machine.
    import keras.src.applications.inception_v3 as inception_module

    monkeypatch.setattr(inception_module, "WEIGHTS_PATH_NO_TOP", "http://127.0.0.1:9/" + backbones.INCEPTION_NOTOP_FILE)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        backbones.build_backbone("inception_v3", 75, weights="imagenet")
    assert time.monotonic() - start < 20
    message = str(error.value)
    assert backbones.INCEPTION_NOTOP_FILE in message and str(keras_home / "models") in message
    assert "efficientnet_lite0" in message


@pytest.mark.slow
def test_inception_v3_smoke_at_75px():
    model = models.build_scratch("inception_v3", 5, 75)
    x = np.random.default_rng(0).uniform(0, 255, (1, 75, 75, 3)).astype(np.float32)
    probs = model(x).numpy()
    assert probs.shape == (1, 5) and np.isclose(probs.sum(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="at least 75"):
        backbones.build_backbone("inception_v3", 64)


def test_scratch_bn_momentum_override():
    default = models.build_scratch("tiny", 3, 32)
    tuned = models.build_scratch("tiny", 3, 32, bn_momentum=0.9)
    bn = [layer for layer in tuned.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.momentum == 0.9 for layer in bn)
    assert default.get_layer("backbone").get_layer("bn0").momentum == 0.99
