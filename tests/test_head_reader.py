"""The one head reader: the same head from a Keras model and from its model.keras file, the
trainable Head it gives, file reads cached per file version, and heads it refuses."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from conftest import load_model

from animalcls.core.errors import CheckpointError
from animalcls.heads.reader import HeadError, dense_weight_groups, head_layers, read_dense_head


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_a_head_reads_the_same_from_the_model_and_from_its_file(tiny_checkpoints, kind):
    folder = tiny_checkpoints[kind]
    model = load_model(folder)
    from_model, from_file = read_dense_head(model), read_dense_head(folder)
    assert [(layer.name, layer.activation) for layer in from_file.layers] == [
        (layer.name, layer.activation) for layer in from_model.layers
    ]
    assert from_file.dropout == from_model.dropout
    for ours, theirs in zip(from_file.layers, from_model.layers):
        np.testing.assert_array_equal(ours.kernel, theirs.kernel)
        np.testing.assert_array_equal(ours.bias, theirs.bias)
    assert [layer.name for layer in head_layers(model)] == [layer.name for layer in from_model.layers]
    assert read_dense_head(folder / "model.keras") is from_file  # the folder and its file: one cached read


def test_the_trainable_head_gives_the_models_probabilities(tiny_checkpoints):
    from animalcls.serving.forward import Forward

    model = load_model(tiny_checkpoints["transfer"])
    head = read_dense_head(tiny_checkpoints["transfer"]).as_head()
    assert head.hidden_names == ["fc512"] and head.num_classes == model.output_shape[-1]
    batch = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    outputs = Forward(32, model=model)(batch, ("pooled", "probabilities"))
    np.testing.assert_allclose(head.probabilities(outputs["pooled"]), outputs["probabilities"], atol=1e-5)
    head.kernels[0][0, 0] += 1.0  # a Head is the caller's own copy: the shared read stays as it was
    assert read_dense_head(tiny_checkpoints["transfer"]).layers[0].kernel[0, 0] != head.kernels[0][0, 0]


def test_file_reads_are_shared_read_only_and_follow_the_file(tiny_checkpoints, tmp_path):
    folder = shutil.copytree(tiny_checkpoints["scratch"], tmp_path / "copy")
    first = read_dense_head(folder)
    assert read_dense_head(folder) is first
    with pytest.raises(ValueError):
        first.layers[0].kernel[0, 0] = 1.0
    stat = (folder / "model.keras").stat()
    os.utime(folder / "model.keras", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert read_dense_head(folder) is not first
    with pytest.raises(CheckpointError, match="Missing model.keras"):
        read_dense_head(tmp_path)


def test_weight_groups_follow_the_dense_layers_in_model_order(tiny_checkpoints):
    with zipfile.ZipFile(tiny_checkpoints["transfer"] / "model.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert dense_weight_groups(config) == {"fc512": "dense", "predictions": "dense_1"}


def test_heads_other_than_dense_layers_are_refused_from_models_and_files(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.BatchNormalization()(x)))
    model.save(tmp_path / "m.keras")
    with pytest.raises(HeadError, match="Unsupported head layer"):
        read_dense_head(tmp_path / "m.keras")
    with pytest.raises(HeadError, match="Unsupported head layer"):
        read_dense_head(model)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(HeadError, match="Cannot read the head's weights"):
        read_dense_head(tmp_path / "broken.keras")
    pool_free = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    with pytest.raises(HeadError, match="No 'avg_pool' layer"):
        read_dense_head(pool_free)
    linear = keras.Model(inputs, keras.layers.Dense(2, activation="linear")(x))
    assert read_dense_head(linear).layers[-1].activation == "linear"  # a heatmap needs only logits
    with pytest.raises(CheckpointError, match="can be taught"):
        read_dense_head(linear).as_head()
