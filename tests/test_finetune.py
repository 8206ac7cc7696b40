"""Feature cache and fast fine-tune of a transfer checkpoint, on the tiny backbone."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import folder_hashes, load_model, make_image
from PIL import Image

pytestmark = pytest.mark.usefixtures("isolated_dirs")


def test_path(folder: Path, part: str = "test") -> tuple[list[str], list[int]]:
    from animalcls.data.dataset import Split

    split = Split.load(folder / "split.json")
    return split.paths(part, split.locate_root(folder))


test_path.__test__ = False  # a helper, not a test


def test_cache_hits_misses_and_content_keys(tiny_checkpoints, tmp_path):
    from animalcls.serving.features import FeatureCache, backbone_key, cached_features

    model = load_model(tiny_checkpoints["transfer"])
    images = tmp_path / "images"
    images.mkdir()
    paths = [str(make_image(images / f"im{i}.png", (30 * i, 100, 200), size=40, seed=i)) for i in range(5)]
    progress: list[tuple[int, int]] = []

    first = FeatureCache(tmp_path / "cache")
    cold = cached_features(model, paths, cache=first, batch_size=2, on_progress=lambda d, t: progress.append((d, t)))
    assert cold.shape == (5, 16) and (first.hits, first.misses) == (0, 5)
    assert progress[0] == (0, 5) and progress[-1] == (5, 5)
    key = backbone_key(model)
    sha1 = hashlib.sha1(Path(paths[0]).read_bytes()).hexdigest()
    assert (tmp_path / "cache" / key / sha1[:2] / f"{sha1}.npy").is_file()
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    warm_cache = FeatureCache(tmp_path / "cache")
    warm = cached_features(model, paths, cache=warm_cache)
    assert (warm_cache.hits, warm_cache.misses) == (5, 0)
    np.testing.assert_array_equal(warm, cold)

    # Same bytes under another name: a hit. New bytes under an old name: a miss.
    shutil.copy(paths[1], images / "renamed.png")
    make_image(Path(paths[2]), (250, 0, 0), size=40, seed=99)
    third = FeatureCache(tmp_path / "cache")
    again = cached_features(model, [str(images / "renamed.png"), paths[2]], cache=third)
    assert (third.hits, third.misses) == (1, 1)
    np.testing.assert_array_equal(again[0], cold[1])
    assert not np.allclose(again[1], cold[2])


def test_other_backbone_weights_get_another_key(tiny_checkpoints):
    import keras

    from animalcls.core.settings import BACKBONE_LAYER
    from animalcls.serving.features import backbone_key

    model = load_model(tiny_checkpoints["transfer"])
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    assert backbone_key(other) == backbone_key(model)
    kernel = other.get_layer(BACKBONE_LAYER).get_layer("conv0").kernel
    kernel.assign(kernel.numpy() * 1.01)
    assert backbone_key(other) != backbone_key(model)


def test_flipped_features_differ_for_an_asymmetric_image(tiny_checkpoints, tmp_path):
    import tensorflow as tf

    from animalcls.data.dataset import decode_resize
    from animalcls.serving.features import FeatureCache, cached_features
    from animalcls.serving.forward import outputs_model

    model = load_model(tiny_checkpoints["transfer"])
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :12] = (250, 20, 20)
    pixels[:, 12:] = (20, 20, 250)
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    cache = FeatureCache(tmp_path / "cache")
    plain = cached_features(model, [str(path)], flip=False, cache=cache)
    flipped = cached_features(model, [str(path)], flip=True, cache=cache)
    assert not np.allclose(plain, flipped, atol=1e-4)
    image = decode_resize(tf.io.read_file(str(path)), 32)
    expected = outputs_model(model, ("pooled",))(tf.image.flip_left_right(image)[None], training=False)
    expected = expected["pooled"].numpy()
    np.testing.assert_allclose(flipped, expected, rtol=1e-5, atol=1e-5)


def test_the_numpy_head_on_cached_features_matches_the_full_model_on_images(tiny_checkpoints):
    from animalcls.heads.reader import read_dense_head
    from animalcls.serving.features import FeatureCache, cached_features
    from animalcls.serving.forward import Forward, forward_paths

    folder = tiny_checkpoints["transfer"]
    model = load_model(folder)
    paths, labels = test_path(folder)
    on_images = forward_paths(Forward(32, model=model), paths)["probabilities"]
    on_features = read_dense_head(model).as_head().probabilities(cached_features(model, paths, cache=FeatureCache()))
    np.testing.assert_allclose(on_features, on_images, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_finetune_writes_a_new_checkpoint_and_leaves_the_source_alone(tiny_checkpoints, tmp_path):
    from animalcls.core.hooks import TrainHooks
    from animalcls.data.dataset import Split
    from animalcls.heads.finetune import finetune
    from animalcls.store.checkpoints import load_checkpoint

    source = tiny_checkpoints["transfer"]
    before = folder_hashes(source)
    calls: dict[str, list] = {"features": [], "batch": [], "epoch": []}
    hooks = TrainHooks(
        on_features=lambda d, t: calls["features"].append((d, t)),
        on_batch=lambda e, b, n, logs: calls["batch"].append((e, b, n)),
        on_epoch=lambda e, h: calls["epoch"].append(e),
    )
    out = tmp_path / "nested" / "ft"
    result = finetune(source, epochs=2, out_dir=out, hooks=hooks, batch_size=8)

    assert result.path == out and result.source == source and not result.cancelled
    assert folder_hashes(source) == before
    checkpoint = load_checkpoint(out)
    manifest = checkpoint.manifest
    assert manifest["name"] == "ft" and manifest["kind"] == "transfer"
    # no absolute path recorded: the source by name, and the chain of names it came from
    assert manifest["finetuned_from"] == {"name": source.name, "lineage": [source.name]}
    training = manifest["training"]
    assert training["method"] == "cached-features" and training["epochs"] == 2 and not training["cancelled"]
    assert training["feature_cache"]["misses"] == 35 * 2 + 5 + 10 and training["feature_cache"]["hits"] == 0
    assert len(result.history["loss"]) == 2 and calls["epoch"] == [1, 2]
    assert calls["batch"][0] == (1, 1, 5) and calls["features"][-1] == (85, 85)
    assert 0.0 <= result.evaluation["accuracy"] <= 1.0 and checkpoint.evaluation == result.evaluation
    split = Split.load(out / "split.json")
    assert split.locate_root(out) == Split.load(source / "split.json").locate_root(source)
    assert not (tmp_path / "nested" / ".ft.work").exists()

    # Same backbone, same images: the second run extracts nothing; the default out folder is new.
    again = finetune(source, epochs=1, batch_size=8)
    assert again.path.parent == tmp_path / "runs" / "finetunes"
    assert again.path.name.startswith(f"{source.name}-ft-")
    cache = json.loads((again.path / "manifest.json").read_text())["training"]["feature_cache"]
    assert (cache["hits"], cache["misses"]) == (85, 0)
    assert folder_hashes(source) == before


@pytest.mark.slow
def test_saved_model_uses_the_trained_head(tiny_checkpoints, tmp_path):
    """The saved full model reproduces the evaluation computed on features."""
    from animalcls.heads.finetune import finetune
    from animalcls.training.workflows import evaluate_checkpoint

    result = finetune(tiny_checkpoints["transfer"], epochs=3, learning_rate=1e-2, out_dir=tmp_path / "ft")
    assert evaluate_checkpoint(result.path)["confusion_matrix"] == result.evaluation["confusion_matrix"]
    before = load_model(tiny_checkpoints["transfer"]).get_layer("predictions").kernel.numpy()
    after = load_model(result.path).get_layer("predictions").kernel.numpy()
    assert not np.allclose(before, after)  # the head trained on features is the saved one


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze", [0, 2])
def test_cancel_in_the_first_epoch_saves_nothing(tiny_checkpoints, tmp_path, unfreeze):
    from animalcls.core.errors import Cancelled
    from animalcls.core.hooks import TrainHooks
    from animalcls.heads.finetune import finetune

    event = threading.Event()
    batches: list[int] = []

    def on_batch(epoch, batch, steps, logs):
        batches.append(batch)
        event.set()

    with pytest.raises(Cancelled, match="before the first epoch finished: nothing was saved"):
        finetune(
            tiny_checkpoints["transfer"],
            epochs=5,
            out_dir=tmp_path / "ft",
            batch_size=8,
            unfreeze_layers=unfreeze,
            hooks=TrainHooks(on_batch=on_batch, cancel=event),
        )
    assert batches == [1]
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".ft", "ft"))) == []
    )  # no folder, no leftover


@pytest.mark.slow
def test_cancel_with_unfrozen_layers_keeps_the_finished_epochs(tiny_checkpoints, tmp_path):
    """Cancelled at epoch 2, batch 1 with unfrozen layers: epoch 1 is kept, the unfinished one
    is neither recorded nor saved (test_train checks that its batches are undone)."""
    from animalcls.core.hooks import TrainHooks
    from animalcls.heads.finetune import finetune

    event = threading.Event()

    def on_batch(epoch, batch, steps, logs):
        if epoch == 2:
            event.set()

    result = finetune(
        tiny_checkpoints["transfer"],
        epochs=5,
        out_dir=tmp_path / "ft",
        batch_size=8,
        unfreeze_layers=2,
        hooks=TrainHooks(on_batch=on_batch, cancel=event),
    )
    assert result.cancelled and len(result.history["loss"]) == 1
    training = json.loads((result.path / "manifest.json").read_text())["training"]
    assert training["cancelled"] is True and training["epochs_run"] == 1
    assert result.evaluation["n"] == 10  # evaluated (and saved): a usable model of one finished epoch


@pytest.mark.slow
def test_preset_cancel(tiny_checkpoints, tmp_path):
    """Cold cache: cancelled during extraction. Warm cache: cancelled at the first batch. Nothing saved."""
    from animalcls.core.errors import Cancelled
    from animalcls.core.hooks import TrainHooks
    from animalcls.heads.finetune import finetune
    from animalcls.serving.features import FeatureExtractionCancelled

    event = threading.Event()
    event.set()
    with pytest.raises(FeatureExtractionCancelled):
        finetune(tiny_checkpoints["transfer"], out_dir=tmp_path / "cold", hooks=TrainHooks(cancel=event))
    assert not (tmp_path / "cold").exists()

    finetune(tiny_checkpoints["transfer"], epochs=1, out_dir=tmp_path / "warm-up")
    with pytest.raises(Cancelled):
        finetune(tiny_checkpoints["transfer"], out_dir=tmp_path / "warm", hooks=TrainHooks(cancel=event))
    assert not (tmp_path / "warm").exists()


@pytest.mark.slow
def test_unfreeze_trains_top_backbone_layers_on_images(tiny_checkpoints, tmp_path):
    from animalcls.core.settings import BACKBONE_LAYER
    from animalcls.heads.finetune import finetune

    source = tiny_checkpoints["transfer"]
    result = finetune(source, epochs=1, unfreeze_layers=3, out_dir=tmp_path / "ft", batch_size=8)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["training"]["method"] == "images" and manifest["training"]["unfreeze_layers"] == 3
    before = load_model(source).get_layer(BACKBONE_LAYER)
    after = load_model(result.path).get_layer(BACKBONE_LAYER)
    assert not np.allclose(before.get_layer("conv1").kernel.numpy(), after.get_layer("conv1").kernel.numpy())
    np.testing.assert_array_equal(before.get_layer("conv0").kernel.numpy(), after.get_layer("conv0").kernel.numpy())
    assert not after.trainable  # saved frozen again, like every transfer checkpoint


def test_rejects_scratch_and_existing_outputs(tiny_checkpoints, tmp_path):
    from animalcls.core.errors import AnimalclsError
    from animalcls.heads.finetune import finetune

    with pytest.raises(AnimalclsError, match="only transfer checkpoints"):
        finetune(tiny_checkpoints["scratch"], out_dir=tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(AnimalclsError, match="already exists"):
        finetune(tiny_checkpoints["transfer"], out_dir=tmp_path / "taken")
    with pytest.raises(AnimalclsError, match="source checkpoint"):
        finetune(tiny_checkpoints["transfer"], out_dir=tiny_checkpoints["transfer"])


def test_missing_dataset_asks_for_data(tiny_checkpoints, tmp_path):
    from animalcls.core.errors import DataError
    from animalcls.heads.finetune import finetune

    source = tiny_checkpoints["transfer"]
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    split = json.loads((moved / "split.json").read_text())
    split.update(root=str(tmp_path / "gone"), root_relative=None)
    (moved / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="--data"):
        finetune(moved, out_dir=tmp_path / "a")
    (moved / "split.json").unlink()
    with pytest.raises(DataError, match="--data"):
        finetune(moved, out_dir=tmp_path / "b")


@pytest.mark.slow
def test_data_dir_without_split_scans_and_splits(tiny_checkpoints, tmp_path):
    from animalcls.heads.finetune import finetune

    source = tiny_checkpoints["transfer"]
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    (moved / "split.json").unlink()
    from animalcls.data.dataset import Split

    data_dir = Split.load(source / "split.json").locate_root(source).parent
    result = finetune(moved, data_dir, epochs=1, out_dir=tmp_path / "ft")
    assert (result.path / "split.json").is_file() and result.evaluation["n"] == 10


@pytest.mark.slow
def test_cli_finetune(tiny_checkpoints, tmp_path, capsys):
    from animalcls.cli.main import main

    out = tmp_path / "cli-ft"
    assert main(["finetune", str(tiny_checkpoints["transfer"]), "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "model.keras").is_file() and "Fine-tuned checkpoint" in capsys.readouterr().out
    assert main(["finetune", str(tiny_checkpoints["scratch"]), "--out", str(tmp_path / "no")]) == 2


@pytest.mark.slow
def test_a_head_only_finetune_inherits_its_sources_detector_and_verdicts(tiny_checkpoints, tmp_path):
    from conftest import copy_checkpoint

    from animalcls.data.dataset import Split
    from animalcls.heads.finetune import finetune
    from animalcls.trust import scope
    from animalcls.trust import verdicts as trust
    from animalcls.trust.scope_build import build_scope

    source = copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / "transfer-tiny")
    split = Split.load(source / "split.json")
    root = split.locate_root(source)
    (tmp_path / "out").mkdir()
    out = [str(make_image(tmp_path / "out" / f"{i}.png", (128, 0, 128), seed=9100 + i)) for i in range(8)]
    out += sorted(str(p) for p in (root / "cane").iterdir())
    build_scope(source, out, [], method="combined", imagenet=False)
    result = finetune(source, epochs=2, learning_rate=1e-2, out_dir=tmp_path / "ft", batch_size=8)

    meta = json.loads((result.path / scope.SCOPE_JSON).read_text())
    assert meta["inherited_from"] == source.name and str(tmp_path) not in json.dumps(meta)
    photos = out[:6] + test_path(source)[0][:6]
    before, after = trust.judge_for(source), trust.judge_for(result.path)
    assert after.detector is not None, after.scope_note
    old, new = trust.answer_files(before, photos), trust.answer_files(after, photos)
    assert max(abs(a.probabilities["cat"] - b.probabilities["cat"]) for a, b in zip(old, new)) > 1e-4  # a new head
    assert [a.out_of_scope for a in old] == [b.out_of_scope for b in new]
    assert max(abs(a.scope_score - b.scope_score) for a, b in zip(old, new)) < 1e-4
