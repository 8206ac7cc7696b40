"""Keras side of the "none of the five" detector: computing its input arrays with TensorFlow,
the fixed calibration split of the out-of-scope photo sets, and `build_scope`, which writes a
checkpoint's `scope.npz` + `scope.json` (see animalcls/trust/scope.py for the format and the maths).

Inference needs none of this module: a serving engine hands `scope.ScopeDetector` the arrays
of its own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.serving.forward import Forward, forward_paths
from animalcls.trust import scope

CALIBRATION_SEED = 20261128
BatchHook = Callable[[int, int | None], None]


@dataclass
class ScopeArrays:
    """Per photo: the model's probabilities, its pooled features, and the pooled features of
    the ImageNet Lite0 (the same array for a transfer model on the unmodified ImageNet base)."""

    probabilities: np.ndarray
    features: np.ndarray
    imagenet_features: np.ndarray

    def take(self, index: np.ndarray) -> ScopeArrays:
        return ScopeArrays(self.probabilities[index], self.features[index], self.imagenet_features[index])


def imagenet_feature_model(image_size: int = scope.IMAGENET_IMAGE_SIZE) -> Any:
    """image -> pooled features of the ImageNet EfficientNet-Lite0 (package weights)."""
    import keras
    from keras import layers

    from animalcls.models.backbones import build_backbone

    base = build_backbone("efficientnet_lite0", image_size, weights="imagenet")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(base(inputs, training=False))
    return keras.Model(inputs, pooled, name="imagenet_lite0_features")


def imagenet_head() -> tuple[np.ndarray, np.ndarray]:
    """The 1280 x 1000 kernel and bias of the Lite0 ImageNet classifier, as float32 arrays."""
    from animalcls.models.efficientnet_lite.converter import imagenet_arrays

    arrays = imagenet_arrays()
    kernel = next(v for k, v in arrays.items() if k.startswith("predictions") and v.ndim == 2)
    bias = next(v for k, v in arrays.items() if k.startswith("predictions") and v.ndim == 1)
    return kernel.astype(np.float32), bias.astype(np.float32)


def shares_imagenet_base(model: Any, manifest: dict[str, Any]) -> bool:
    """Whether `model`'s backbone IS the ImageNet Lite0 (a transfer model whose base stayed
    frozen), so its pooled features double as the ImageNet head's input: compared by weights."""
    from animalcls.serving.features import backbone_fingerprint

    if manifest.get("backbone") != "efficientnet_lite0" or manifest.get("kind") != "transfer":
        return False
    if manifest.get("weights") != "imagenet":
        return False
    reference = imagenet_feature_model(int(manifest["image_size"]))
    return backbone_fingerprint(reference) == backbone_fingerprint(model)


def extract_arrays(
    model: Any,
    paths: Sequence[str],
    image_size: int,
    imagenet_from_pool: bool,
    batch_size: int = 32,
    on_batch: BatchHook | None = None,
    imagenet: bool = True,
) -> ScopeArrays:
    """The detector's inputs for image files, with TensorFlow: one pass of `model`, plus one
    of the ImageNet Lite0 at 224 px unless `imagenet_from_pool` (its pooled features are the
    model's own) or not `imagenet` (then imagenet_features has no columns)."""
    if not paths:
        raise ValueError("No image paths given.")
    both = ("probabilities", "pooled")
    arrays = forward_paths(Forward(image_size, model=model), paths, both, batch_size, on_batch)
    probabilities, features = arrays["probabilities"], arrays["pooled"]
    if imagenet_from_pool or not imagenet:
        return ScopeArrays(probabilities, features, features if imagenet_from_pool else features[:, :0])
    imagenet_forward = Forward(scope.IMAGENET_IMAGE_SIZE, model=imagenet_feature_model())
    imagenet_features = forward_paths(imagenet_forward, paths, ("pooled",), batch_size, on_batch)["pooled"]
    return ScopeArrays(probabilities, features, imagenet_features)


def half_split(groups: dict[str, Sequence[str]], seed: int = CALIBRATION_SEED) -> tuple[list[str], list[str]]:
    """Split each group of files (sorted) once, at random with a fixed seed, into a calibration
    half and a held-out half: (calibration, held_out). Stratified: every group gives half."""
    rng = np.random.default_rng(seed)
    calibration: list[str] = []
    held_out: list[str] = []
    for name in sorted(groups):
        files = sorted(groups[name])
        order = rng.permutation(len(files))
        cut = len(files) // 2
        calibration += [files[i] for i in sorted(order[:cut])]
        held_out += [files[i] for i in sorted(order[cut:])]
    return calibration, held_out


def folder_groups(root: Path, names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{sub-folder name: its image files} for the sub-folders of `root` (all, or `names`)."""
    from animalcls.data.dataset import IMAGE_EXTENSIONS

    root = Path(root)
    folders = [root / n for n in names] if names else sorted(p for p in root.iterdir() if p.is_dir())
    return {
        f.name: sorted(str(p) for p in f.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        for f in folders
    }


# In-scope rates the threshold allows on calibration photos: below the targets (2 % of the test
# split, 3 % of cross-source photos) by a margin for the noise of 300 and ~190 photos.
VAL_FLAG_RATE = 0.01
CROSS_SOURCE_FLAG_RATE = 0.02


@dataclass
class Calibration:
    """Arrays the detector is fitted on: the checkpoint's train split (reference), its
    validation split and in-scope photos from other sources (should pass), and out-of-scope
    photos (should be flagged). None of it may be what the detector is reported on."""

    class_names: list[str]
    train: ScopeArrays
    train_labels: np.ndarray
    train_files: list[str]
    val: ScopeArrays
    cross_source: ScopeArrays | None
    out_of_scope: ScopeArrays | None


def choose_threshold(in_scope: Sequence[tuple[np.ndarray, float]]) -> float:
    """The lowest threshold that flags at most `rate` of each in-scope score array."""
    return float(max(np.quantile(scores, 1.0 - rate) for scores, rate in in_scope if len(scores)))


def fit_detector(
    calibration: Calibration,
    method: str = "combined",
    imagenet_from_pool: bool = False,
    k: int = 10,
    head: tuple[np.ndarray, np.ndarray] | None = None,
    imagenet: bool = True,
) -> scope.ScopeDetector:
    """Fit the detector's combiner (for "combined") and threshold on `calibration` only.
    The ImageNet score is used when `imagenet` and every class has known synsets."""
    if method not in scope.METHODS:
        raise ValueError(f"method must be one of {scope.METHODS}, got {method!r}")
    known = all(n in scope.IMAGENET_SYNSETS for n in calibration.class_names)
    if method == "imagenet" and not (imagenet and known):
        raise ValueError("The imagenet method needs ImageNet synsets for every class.")
    uses_imagenet = method in ("imagenet", "combined") and imagenet and known
    kernel, bias = (head or imagenet_head()) if uses_imagenet else (None, None)
    train = calibration.train
    knn_space = "imagenet" if imagenet and train.imagenet_features.shape[1] else "model"
    detector = scope.ScopeDetector(
        class_names=list(calibration.class_names),
        method=method,
        threshold=0.0,
        train_features=train.features.astype(np.float16),
        train_labels=calibration.train_labels,
        train_files=list(calibration.train_files),
        k=k,
        knn=scope.KnnReference.fit(train.imagenet_features if knn_space == "imagenet" else train.features)
        if method in ("knn", "combined")
        else None,
        knn_space=knn_space,
        imagenet_from_pool=imagenet_from_pool,
        imagenet_kernel=kernel,
        imagenet_bias=bias,
    )
    if method == "combined":
        names = [n for n in scope.SCORE_NAMES if uses_imagenet or n != "imagenet"]
        detector.combiner = scope.Combiner(names, np.zeros(len(names)), np.ones(len(names)), np.ones(len(names)), 0.0)
        detector.combiner = _fit_combiner(detector, calibration, names)
    in_scope = [(_score(detector, calibration.val), VAL_FLAG_RATE)]
    if calibration.cross_source is not None:
        in_scope.append((_score(detector, calibration.cross_source), CROSS_SOURCE_FLAG_RATE))
    detector.threshold = choose_threshold(in_scope)
    return detector


def _score(detector: scope.ScopeDetector, arrays: ScopeArrays) -> np.ndarray:
    return detector.score(arrays.probabilities, arrays.features, arrays.imagenet_features)


def _fit_combiner(detector: scope.ScopeDetector, calibration: Calibration, names: list[str]) -> scope.Combiner:
    from sklearn.linear_model import LogisticRegression

    if calibration.out_of_scope is None:
        raise ValueError("The combined method needs out-of-scope calibration photos.")
    inside = [calibration.val] + ([calibration.cross_source] if calibration.cross_source is not None else [])
    parts = [*inside, calibration.out_of_scope]
    scores = [detector.scores(a.probabilities, a.features, a.imagenet_features) for a in parts]
    x = np.concatenate([np.stack([s[n] for n in names], axis=1) for s in scores])
    y = np.concatenate([np.full(len(a.probabilities), int(a is calibration.out_of_scope)) for a in parts])
    mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    regression = LogisticRegression(C=1.0, class_weight="balanced").fit((x - mean) / scale, y)
    return scope.Combiner(names, mean, scale, regression.coef_[0].astype(np.float64), float(regression.intercept_[0]))


def shared_calibration_sets(shared: Path, seed: int = CALIBRATION_SEED) -> dict[str, tuple[list[str], list[str]]]:
    """{set: (calibration half, held-out half)} of the project's shared photo sets: animals10
    `cane` and `other-animals` (per species) are out of scope, `cross-source-val` (per class) in."""
    shared = Path(shared)
    sources = {
        "cane": folder_groups(shared / "animals10-offline" / "raw-img", ["cane"]),
        "other": folder_groups(shared / "other-animals" / "raw-img"),
        "cross": folder_groups(shared / "cross-source-val" / "raw-img"),
    }
    return {name: half_split(groups, seed) for name, groups in sources.items()}


def build_scope(
    checkpoint: str | Path,
    out_of_scope: Sequence[str],
    cross_source: Sequence[str] = (),
    method: str = "combined",
    batch_size: int = 32,
    on_batch: BatchHook | None = None,
    overwrite: bool = False,
    imagenet: bool = True,
    extract: Callable[..., ScopeArrays] | None = None,
) -> scope.ScopeDetector:
    """Fit a detector for `checkpoint` and write its scope.npz + scope.json.

    Reference: the recorded train split; in-scope calibration: the val split and
    `cross_source` photos; `out_of_scope` photos train the combiner. Report on other photos.
    `extract` replaces `extract_arrays` (same arguments), e.g. to reuse arrays already computed.
    """
    from animalcls.core.errors import DataError
    from animalcls.store.checkpoints import MODEL_FILE, SPLIT_FILE, load_checkpoint, now_iso

    folder = Path(checkpoint)
    if scope.has_scope(folder) and not overwrite:
        raise scope.ScopeError(f"{folder} already has {scope.SCOPE_JSON}; pass overwrite=True to rebuild it.")
    if not (folder / SPLIT_FILE).is_file():
        raise DataError(f"{folder} records no {SPLIT_FILE}: the detector needs the training split's photos.")
    split, root = split_and_root(folder)
    loaded = load_checkpoint(folder)
    parts = {
        "train": split.paths("train", root)[0],
        "val": split.paths("val", root)[0],
        "cross": list(cross_source),
        "out": list(out_of_scope),
    }
    from_pool = shares_imagenet_base(loaded.model, loaded.manifest)
    files = [f for group in parts.values() for f in group]
    imagenet = imagenet and method in ("imagenet", "combined")
    arrays = (extract or extract_arrays)(
        loaded.model, files, loaded.image_size, from_pool, batch_size, on_batch, imagenet
    )
    sliced, start = {}, 0
    for name, group in parts.items():
        sliced[name] = arrays.take(np.arange(start, start + len(group))) if group else None
        start += len(group)
    calibration = Calibration(
        class_names=loaded.class_names,
        train=sliced["train"],
        train_labels=np.array([label for _, label in split.train]),
        train_files=[rel for rel, _ in split.train],
        val=sliced["val"],
        cross_source=sliced["cross"],
        out_of_scope=sliced["out"],
    )
    detector = fit_detector(calibration, method, from_pool, imagenet=imagenet)
    detector.info = {
        "created": now_iso(),
        "model_sha256": scope.file_sha256(folder / MODEL_FILE),
        "calibration": {
            "seed": CALIBRATION_SEED,
            "val": len(parts["val"]),
            "cross_source": len(parts["cross"]),
            "out_of_scope": len(parts["out"]),
            "val_flag_rate": VAL_FLAG_RATE,
            "cross_source_flag_rate": CROSS_SOURCE_FLAG_RATE,
        },
    }
    scope.save_scope(folder, detector)
    return detector


class ScopePredictor:
    """Thin Keras adapter until the ONNX engine lands: one forward pass per photo gives the
    probabilities and pooled features; a scratch model's detector also runs the ImageNet Lite0,
    unless the caller passes `imagenet_features` (e.g. the transfer model's pooled features)."""

    def __init__(self, checkpoint: str | Path) -> None:
        from animalcls.serving.inference import load_predictor

        self.predictor = load_predictor(checkpoint)
        self.detector = scope.load_scope(checkpoint)
        scope.check_matches(self.detector, self.predictor.manifest, checkpoint)
        self._forward: Any = None
        self._imagenet: Any = None

    def arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._forward is None:
            self._forward = Forward(self.predictor.image_size, model=self.predictor.model)
        arrays = self._forward(batch, ("probabilities", "pooled"))
        return arrays["probabilities"], arrays["pooled"]

    def imagenet_features(self, images: Sequence[Any]) -> np.ndarray:
        from animalcls.data.preprocessing import to_model_input
        from animalcls.serving.inference import load_image

        if self._imagenet is None:
            self._imagenet = imagenet_feature_model()
        batch = np.stack([to_model_input(load_image(i), scope.IMAGENET_IMAGE_SIZE) for i in images])
        return np.asarray(self._imagenet(batch, training=False))

    def predict(self, images: Sequence[Any], imagenet_features: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Per photo: probabilities (class -> p), label, out_of_scope and scope_score."""
        from animalcls.data.preprocessing import to_model_input
        from animalcls.serving.inference import load_image

        size, names = self.predictor.image_size, self.predictor.class_names
        probabilities, features = self.arrays(np.stack([to_model_input(load_image(i), size) for i in images]))
        if self.detector.needs_imagenet_features and imagenet_features is None:
            imagenet_features = self.imagenet_features(images)
        flags, scores = self.detector.decide(probabilities, features, imagenet_features)
        return [
            {
                "probabilities": dict(zip(names, map(float, p))),
                "label": names[int(np.argmax(p))],
                "out_of_scope": bool(f),
                "scope_score": float(s),
            }
            for p, f, s in zip(probabilities, flags, scores)
        ]


def add_test_features(folder: str | Path, batch_size: int = 32) -> int:
    """Store the test split's pooled features in `folder`'s scope.npz (the detector is kept), so
    teaching can score the original classes without their photos. Returns how many."""
    from animalcls.store.checkpoints import load_checkpoint

    folder = Path(folder)
    detector = scope.load_scope(folder)
    split, root = split_and_root(folder)
    loaded = load_checkpoint(folder)
    paths, labels = split.paths("test", root)
    forward = Forward(loaded.image_size, model=loaded.model)
    both = ("probabilities", "pooled")  # as for the stored train features
    pooled = forward_paths(forward, paths, both, batch_size)["pooled"]
    detector.test_features = pooled.astype(np.float16)
    detector.test_labels = np.asarray(labels)
    detector.test_files = [rel for rel, _ in split.test]
    scope.save_scope(folder, detector)
    return len(paths)


def split_and_root(folder: Path) -> tuple[Any, Path]:
    """The checkpoint's recorded split and where its photos are on this machine (DataError if absent)."""
    from animalcls.core.errors import DataError
    from animalcls.data.dataset import Split
    from animalcls.store.checkpoints import SPLIT_FILE

    split = Split.load(folder / SPLIT_FILE)
    root = split.locate_root(folder)
    if root is None:
        raise DataError(
            f"The dataset of {folder} is not on this machine (looked for {split.root_relative or split.root})."
        )
    return split, root
