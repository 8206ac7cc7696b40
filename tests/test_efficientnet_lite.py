"""EfficientNet-Lite0: the torch-free .pth reader, the conversion, the cache, and a proof on real photos."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from animalcls.core.atomic import file_sha256
from animalcls.core.errors import WeightsUnavailableError
from animalcls.models.backbones import build_backbone as registry_build
from animalcls.models.backbones import imagenet_classifier
from animalcls.models.efficientnet_lite import architecture as effl
from animalcls.models.efficientnet_lite import converter as convert
from animalcls.models.efficientnet_lite import torch_legacy

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-offline" / "raw-img"
# ImageNet indices that count as a hit for each Animals-10 folder.
TARGETS: dict[str, tuple[int, ...]] = {
    "gatto": (281, 282, 283, 284, 285),
    "ragno": (72, 73, 74, 75, 76, 77),
    "farfalla": (321, 322, 323, 324, 325, 326),
    "elefante": (101, 385, 386),
    "gallina": (7, 8),
}
# Top-5 floors for the proof test. The elephant folder (Open Images "Elephant") holds many drawings,
# statues, toys and far-off herds, which no ImageNet model puts in 101/385/386: a conversion that
# matches the float64 reference below to 3e-5 scores 0.76 on the first 100 and 0.69 on all 600.
# Wrong input normalisation (ImageNet mean/std) gives 0.65 on elephants and 0.82 on butterflies,
# so these floors still catch it; padding and layout are pinned by test_keras_matches_numpy_reference.
MIN_TOP5: dict[str, float] = {"gatto": 0.90, "ragno": 0.90, "farfalla": 0.90, "elefante": 0.70, "gallina": 0.90}
N_TENSORS = 296
N_BN = 49  # stem + head + 3 per block, less block 0's missing expansion BN: each has a num_batches_tracked.


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory: pytest.TempPathFactory):
    """One KERAS_HOME for the module, so the (slow-ish) conversion runs once and ~/.keras stays clean."""
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home))
        mp.setenv("MPLBACKEND", "Agg")
        yield home


@pytest.fixture(scope="module")
def state(keras_home) -> dict[str, np.ndarray]:
    return torch_legacy.read_torch_legacy_state_dict(convert.package_weights_path())


@pytest.fixture(scope="module")
def classifier_arch(keras_home) -> keras.Model:
    return effl.add_classifier_head(effl.build_architecture(effl.IMAGE_SIZE))


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty KERAS_HOME for tests about the cache itself."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    return tmp_path / "kh"


# --- reader -------------------------------------------------------------------------------------


def test_reader_reads_every_tensor_with_torch_shapes(state):
    assert len(state) == N_TENSORS
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in state  # expand ratio 1: no expansion conv
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(a.dtype == np.float32 for n, a in state.items() if not n.endswith("num_batches_tracked"))
    assert all(np.isfinite(a).all() for a in state.values())


def test_conversion_maps_all_tensors(state, classifier_arch):
    arrays = convert.convert_state_dict(state, classifier_arch)
    n_keras = sum(len(layer.weights) for layer in classifier_arch.layers)
    assert len(arrays) == n_keras == N_TENSORS - N_BN
    assert arrays["stem_conv/0"].shape == (3, 3, 3, 32)  # OIHW -> HWIO
    assert arrays["block0_dwconv/0"].shape == (3, 3, 32, 1)
    np.testing.assert_array_equal(arrays["predictions/0"], state["_fc.weight"].T)
    np.testing.assert_array_equal(arrays["head_bn/3"], state["_bn1.running_var"])


def test_package_file_hash_matches_its_name():
    path = convert.package_weights_path()
    assert file_sha256(path).startswith("57934424")


def _copy_pth(tmp_path: Path, name: str = "lite.pth") -> Path:
    dst = tmp_path / name
    shutil.copyfile(convert.package_weights_path(), dst)
    return dst


@pytest.mark.parametrize("keep", [0, 10, 1_000, 9_000_000, -1])
def test_truncated_pth_gives_clear_error(tmp_path: Path, keep: int):
    path = _copy_pth(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(WeightsUnavailableError, match="lite.pth"):
        torch_legacy.read_torch_legacy_state_dict(path)


def test_non_torch_files_give_clear_error(tmp_path: Path):
    big_endian = b"".join(pickle.dumps(h, 2) for h in [torch_legacy._LEGACY_MAGIC, 1001, {"little_endian": False}])
    for name, content in [
        ("zip.pth", b"PK\x03\x04" + b"\0" * 100),
        ("text.pth", b"hello"),
        ("empty.pth", b""),
        ("big_endian.pth", big_endian),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsUnavailableError, match=name):
            torch_legacy.read_torch_legacy_state_dict(tmp_path / name)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        torch_legacy.read_torch_legacy_state_dict(tmp_path / "missing.pth")


def test_reader_refuses_arbitrary_globals(tmp_path: Path):
    """A malicious .pth must not run code: only the globals a state dict needs are allowed."""
    marker = tmp_path / "pwned"
    payload = f"cposix\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.pth"
    header = [
        torch_legacy._LEGACY_MAGIC,
        torch_legacy._LEGACY_PROTOCOL,
        {"protocol_version": 1001, "little_endian": True},
    ]
    path.write_bytes(b"".join(pickle.dumps(h, 2) for h in header) + payload)
    with pytest.raises(WeightsUnavailableError, match="refusing to load global posix.system"):
        torch_legacy.read_torch_legacy_state_dict(path)
    assert not marker.exists()


def test_corrupted_package_file_is_caught_by_its_hash(tmp_path: Path, fresh_home: Path):
    # A flipped byte inside the raw floats still parses; the sha256 prefix in the name catches it.
    path = _copy_pth(tmp_path, convert.PTH_NAME)
    with open(path, "r+b") as f:
        f.seek(10_000_000)
        byte = f.read(1)
        f.seek(10_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        convert.imagenet_arrays(path)


def test_shape_mismatch_fails_loudly(state, classifier_arch):
    bad = dict(state)
    bad["_blocks.3._depthwise_conv.weight"] = np.zeros((144, 1, 3, 3), np.float32)  # block 3 is 5x5
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight"):
        convert.convert_state_dict(bad, classifier_arch)


def test_unmapped_or_missing_tensor_fails_loudly(state, classifier_arch):
    extra = dict(state, **{"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"not mapped.*_se_reduce"):
        convert.convert_state_dict(extra, classifier_arch)
    missing = {k: v for k, v in state.items() if k != "_bn1.running_mean"}
    with pytest.raises(ValueError, match=r"_bn1\.running_mean"):
        convert.convert_state_dict(missing, classifier_arch)


def test_architecture_mismatch_fails_loudly(state, monkeypatch: pytest.MonkeyPatch):
    # A wrong kernel size in one stage (3 instead of 5) is caught with the tensor's name...
    stages = list(effl.STAGES)
    stages[2] = (6, 3, 2, 40, 2)
    monkeypatch.setattr(effl, "STAGES", tuple(stages))
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight has shape \(144, 1, 5, 5\)"):
        convert.convert_state_dict(state, effl.add_classifier_head(effl.build_architecture(64)))
    monkeypatch.undo()
    # ...and so is a Keras layer that no tensor feeds.
    model = effl.add_classifier_head(effl.build_architecture(64))
    extra = layers.Dense(4, name="surplus_dense")(model.output)
    with pytest.raises(ValueError, match="surplus_dense"):
        convert.convert_state_dict(state, keras.Model(model.input, extra))


# --- builders and cache -------------------------------------------------------------------------


def test_random_backbone_follows_registry_conventions(keras_home):
    model = convert.build_backbone(64, None)
    assert model.name == "backbone"
    assert model.input.shape == (None, 64, 64, 3) and model.layers[0].name == "image"
    assert model.get_layer("preprocess") is model.layers[1]
    assert model.output.shape == (None, 2, 2, 1280)
    assert not any(isinstance(layer, layers.Lambda) for layer in model.layers)
    assert model.count_params() == 3_413_024


def test_classifier_has_published_parameter_count(classifier_arch):
    # EfficientNet-Lite0 is published as 4.652M parameters (BN moving statistics not counted).
    assert sum(int(np.prod(w.shape)) for w in classifier_arch.trainable_weights) == 4_652_008


@pytest.mark.parametrize("size", [32, 67, 224])
def test_backbone_any_size(keras_home, size: int):
    out = convert.build_backbone(size, None).output.shape
    assert out == (None, math.ceil(size / 32), math.ceil(size / 32), 1280)


def test_bad_arguments(keras_home):
    with pytest.raises(ValueError, match="at least 32"):
        convert.build_backbone(31, None)
    with pytest.raises(ValueError, match="weights"):
        convert.build_backbone(64, "imagenet21k")


@pytest.mark.slow
def test_imagenet_backbone_converts_once_then_uses_cache(fresh_home: Path, monkeypatch: pytest.MonkeyPatch):
    first = convert.build_backbone(64, "imagenet")
    cached = list((fresh_home / "models" / "animalcls").glob("efficientnet_lite0_imagenet_*.npz"))
    assert len(cached) == 1 and cached[0] == convert.cache_path(convert.package_weights_path())
    assert not list(cached[0].parent.glob("*.tmp"))

    def no_conversion(_source):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(convert, "convert_pth", no_conversion)
    second = convert.build_backbone(96, "imagenet")  # weights do not depend on the input size
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert convert.build_classifier().get_layer("predictions").get_weights()[0].shape == (1280, 1000)


def test_damaged_cache_is_rebuilt(fresh_home: Path):
    path = convert.cache_path(convert.package_weights_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    arrays = convert.imagenet_arrays()
    assert len(arrays) == N_TENSORS - N_BN
    assert np.load(path, allow_pickle=False)["stem_conv/0"].shape == (3, 3, 3, 32)


def test_cache_name_follows_the_source_content(tmp_path: Path, fresh_home: Path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert convert.cache_path(a) != convert.cache_path(b)
    assert convert.cache_path(a).parent == fresh_home / "models" / "animalcls"


@pytest.mark.slow
def test_registry_entries_use_this_module(keras_home):
    backbone = registry_build("efficientnet_lite0", 64, "imagenet")
    assert backbone.name == "backbone" and backbone.output.shape == (None, 2, 2, 1280)
    clf = imagenet_classifier("efficientnet_lite0")
    assert clf.input.shape == (None, 224, 224, 3) and clf.output.shape == (None, 1000)


@pytest.mark.slow
def test_saved_model_reloads_in_safe_mode(keras_home, tmp_path: Path):
    inputs = keras.Input((64, 64, 3), name="image")
    x = convert.build_backbone(64, "imagenet")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), expected)


# --- faithfulness ---------------------------------------------------------------------------------


def _same_pad(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, int, int]:
    """TensorFlow "SAME" padding, as lukemelas' Conv2dStaticSamePadding computes it (NCHW)."""
    ih, iw = x.shape[2:]
    oh, ow = math.ceil(ih / s), math.ceil(iw / s)
    ph, pw = max((oh - 1) * s + k - ih, 0), max((ow - 1) * s + k - iw, 0)
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))), oh, ow


def _np_conv(x: np.ndarray, w: np.ndarray, s: int, depthwise: bool = False) -> np.ndarray:
    k = w.shape[2]
    xp, oh, ow = _same_pad(x, k, s)
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]
            if depthwise:
                out += patch * w[None, :, 0, i, j, None, None]
            else:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _np_bn(x: np.ndarray, sd: dict[str, np.ndarray], p: str) -> np.ndarray:
    g, b, m, v = (
        sd[f"{p}.{n}"].astype(np.float64)[None, :, None, None]
        for n in ("weight", "bias", "running_mean", "running_var")
    )
    return (x - m) / np.sqrt(v + 1e-3) * g + b


def _reference_forward(sd: dict[str, np.ndarray], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 numpy forward pass written against the torch layout (NCHW, OIHW) and torch names,
    independent of the Keras code: checks every transpose and the block wiring."""
    relu6 = lambda t: np.clip(t, 0.0, 6.0)  # noqa: E731
    x = ((images.astype(np.float64) - 127.0) / 128.0).transpose(0, 3, 1, 2)
    x = relu6(_np_bn(_np_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for b in effl.block_configs():
        t, skip = f"_blocks.{b.index}", x
        if b.expand_ratio != 1:
            x = relu6(_np_bn(_np_conv(x, sd[f"{t}._expand_conv.weight"], 1), sd, f"{t}._bn0"))
        x = relu6(_np_bn(_np_conv(x, sd[f"{t}._depthwise_conv.weight"], b.stride, depthwise=True), sd, f"{t}._bn1"))
        x = _np_bn(_np_conv(x, sd[f"{t}._project_conv.weight"], 1), sd, f"{t}._bn2")
        if b.stride == 1 and b.in_filters == b.out_filters:
            x = x + skip
    features = relu6(_np_bn(_np_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    logits = features.mean(axis=(2, 3)) @ sd["_fc.weight"].T.astype(np.float64) + sd["_fc.bias"]
    return features.transpose(0, 2, 3, 1), logits


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 75])  # an odd size exercises uneven SAME padding at every stride
def test_keras_matches_numpy_reference(state, size: int):
    images = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype("float32")
    ref_features, ref_logits = _reference_forward(state, images)
    clf = convert.build_classifier(size)
    features = keras.Model(clf.input, clf.get_layer("head_relu").output).predict(images, verbose=0)
    np.testing.assert_allclose(features, ref_features, atol=2e-4)
    ref_probs = np.exp(ref_logits - ref_logits.max(1, keepdims=True))
    ref_probs /= ref_probs.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.predict(images, verbose=0), ref_probs, atol=1e-5)


def _load_photos(files: list[Path]) -> np.ndarray:
    import tensorflow as tf

    def one(path: Path):
        image = tf.cast(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3), tf.float32)
        return tf.image.resize(image, (224, 224), antialias=True)

    return np.stack([one(f).numpy() for f in files])


@pytest.mark.slow
def test_imagenet_top5_on_real_photos(keras_home):
    """Proof of a faithful conversion: real photos land in the right ImageNet classes."""
    if not PHOTOS.is_dir():
        pytest.skip(f"photos not found at {PHOTOS}")
    import tensorflow as tf

    clf = convert.build_classifier()
    predict = tf.function(lambda x: clf(x, training=False), reduce_retracing=True)
    rates: dict[str, float] = {}
    for folder, targets in TARGETS.items():
        files = sorted((PHOTOS / folder).glob("*.jpeg"))[:100]  # fixed, deterministic subset
        assert files, f"no photos in {PHOTOS / folder}"
        images = _load_photos(files)
        probs = np.concatenate([predict(tf.constant(images[i : i + 32])).numpy() for i in range(0, len(images), 32)])
        top5 = np.argsort(-probs, axis=1)[:, :5]
        rates[folder] = float(np.isin(top5, targets).any(axis=1).mean())
    print("top-5 hit rate per class:", {k: round(v, 3) for k, v in rates.items()})
    failed = {k: v for k, v in rates.items() if v < MIN_TOP5[k]}
    assert not failed, f"top-5 hit rates below {MIN_TOP5}: {failed}"
