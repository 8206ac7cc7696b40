"""The feature cache's packs (one array per requested set of entries), ONNX Runtime extraction
parity with Keras, the NumPy head trainer and the fast head-only fine-tune path, on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import copy_checkpoint, load_model, make_image


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    folder = tmp_path / "photos"
    folder.mkdir()
    return [str(make_image(folder / f"p{i}.png", (25 * i, 90, 200 - 20 * i), size=40, seed=i)) for i in range(8)]


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    from animalcls.serving import features

    monkeypatch.setattr(features, "PACK_MIN", 4)  # packs from 4 entries, so 8 tiny photos make one


def packs(root: Path) -> list[Path]:
    return sorted(root.rglob("packs/*.npy"))


def test_pack_is_written_then_read_instead_of_the_small_files(tiny_checkpoints, tmp_path, photos, small_packs):
    from animalcls.serving.features import FeatureCache, cached_feature_groups

    model = load_model(tiny_checkpoints["transfer"])
    groups = [(photos, False), (photos[:5], True)]
    cold_cache = FeatureCache(tmp_path / "cache")
    cold = cached_feature_groups(model, groups, cold_cache)
    assert (cold_cache.hits, cold_cache.misses) == (0, 13) and len(packs(tmp_path / "cache")) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    # With every small file gone, the pack alone answers the same request, bit for bit.
    for small in (tmp_path / "cache").rglob("*.npy"):
        if small.parent.name != "packs":
            small.unlink()
    warm_cache = FeatureCache(tmp_path / "cache")
    warm = cached_feature_groups(model, groups, warm_cache)
    assert (warm_cache.hits, warm_cache.misses) == (13, 0)
    for a, b in zip(cold, warm):
        np.testing.assert_array_equal(a, b)


def test_a_torn_pack_is_ignored_and_rebuilt_and_an_old_cache_gains_one(tiny_checkpoints, tmp_path, photos, small_packs):
    from animalcls.serving.features import FeatureCache, cached_features

    model = load_model(tiny_checkpoints["transfer"])
    first = cached_features(model, photos, cache=FeatureCache(tmp_path / "cache"))
    (pack,) = packs(tmp_path / "cache")
    pack.write_bytes(pack.read_bytes()[:100])  # torn: a crash mid-write that escaped os.replace
    cache = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(cached_features(model, photos, cache=cache), first)
    assert (cache.hits, cache.misses) == (8, 0)  # read from the small files
    assert np.load(pack).shape == first.shape  # rebuilt whole

    pack.unlink()  # a cache from before packs existed: small files only
    old = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(cached_features(model, photos, cache=old), first)
    assert (old.hits, old.misses) == (8, 0) and len(packs(tmp_path / "cache")) == 1


def test_packs_are_keyed_by_their_entries_and_capped(tiny_checkpoints, tmp_path, photos, small_packs, monkeypatch):
    from animalcls.serving import features

    monkeypatch.setattr(features, "PACKS_KEPT", 2)
    model = load_model(tiny_checkpoints["transfer"])
    cache = features.FeatureCache(tmp_path / "cache")
    subsets = [photos[:4], photos[:5], photos[2:8]]
    results = [features.cached_features(model, subset, cache=cache) for subset in subsets]
    kept = packs(tmp_path / "cache")
    assert len(kept) == 2
    # The newest two stay; a smaller set never reads a larger set's pack.
    again = features.FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(features.cached_features(model, photos[:5], cache=again), results[1])
    np.testing.assert_array_equal(results[1][:4], results[0])


def test_onnx_pooled_features_match_keras_plain_and_flipped(tiny_checkpoints, tmp_path, photos):
    from animalcls.heads.teach import photo_batch
    from animalcls.serving.features import FeatureCache, cached_feature_groups, pooled_forward
    from animalcls.serving.forward import outputs_model

    folder = tiny_checkpoints["transfer"]  # train_checkpoint wrote its model.onnx
    forward = pooled_forward(folder)
    assert forward is not None
    model = load_model(folder)
    batch = photo_batch(photos, 32)
    for images in (batch, batch[:, :, ::-1]):
        keras_features = outputs_model(model, ("pooled",))(images, training=False)["pooled"].numpy()
        np.testing.assert_allclose(forward(np.ascontiguousarray(images)), keras_features, atol=1e-4)

    # The same through the cache: extracted by ONNX Runtime vs by Keras, each into its own cache.
    groups = [(photos, False), (photos, True)]
    onnx_cache, keras_cache = FeatureCache(tmp_path / "onnx"), FeatureCache(tmp_path / "keras")
    used: list[int] = []

    def counted():
        used.append(1)
        return forward

    by_onnx = cached_feature_groups(model, groups, onnx_cache, forward=counted)
    by_keras = cached_feature_groups(model, groups, keras_cache)
    assert used == [1] and onnx_cache.misses == keras_cache.misses == 16
    for a, b in zip(by_onnx, by_keras):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_no_fresh_graph_means_keras_extracts(tiny_checkpoints, tmp_path):
    from animalcls.serving.features import pooled_forward

    folder = copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / "copy")
    (folder / "model.onnx").unlink()
    assert pooled_forward(folder) is None  # never converts on the fine-tune's path


# ---------------------------------------------------------------- the head-only fine-tune


def test_repeated_finetunes_start_from_the_file_and_save_loadable_models(tiny_checkpoints, tmp_path, monkeypatch):
    """The cached source model's head is restored after each fine-tune (same seed, same result),
    and the patched model.keras loads in Keras and matches the trained head on features."""
    from animalcls.core.settings import BACKBONE_LAYER
    from animalcls.heads.finetune import finetune
    from animalcls.heads.reader import read_dense_head
    from animalcls.heads.teach import photo_batch
    from animalcls.serving.forward import outputs_model
    from animalcls.store.checkpoints import load_checkpoint

    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "cache"))
    source = tiny_checkpoints["transfer"]
    first = finetune(source, epochs=2, learning_rate=1e-2, out_dir=tmp_path / "a", figures=False)
    second = finetune(source, epochs=2, learning_rate=1e-2, out_dir=tmp_path / "b")
    assert first.history["loss"] == second.history["loss"]
    training = load_checkpoint(first.path, load_model=False).manifest["training"]
    assert training["head_trainer"] == "numpy"
    assert not (first.path / "history.png").exists() and (second.path / "history.png").is_file()

    saved = load_model(first.path)
    original = load_model(source)
    assert not np.allclose(
        saved.get_layer("predictions").kernel.numpy(), original.get_layer("predictions").kernel.numpy()
    )
    for a, b in zip(saved.get_layer(BACKBONE_LAYER).get_weights(), original.get_layer(BACKBONE_LAYER).get_weights()):
        np.testing.assert_array_equal(a, b)  # every backbone weight is the source's
    images = sorted(str(p) for p in Path(source).parent.parent.rglob("*.jpg"))[:6]
    batch = photo_batch(images, 32)
    pooled = outputs_model(saved, ("pooled",))(batch, training=False)["pooled"].numpy()
    np.testing.assert_allclose(
        saved(batch, training=False).numpy(), read_dense_head(saved).as_head().probabilities(pooled), atol=1e-5
    )
