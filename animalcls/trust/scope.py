""" "None of the five": does a photo show one of a checkpoint's classes at all?

NumPy only (no TensorFlow): a serving engine gives `ScopeDetector` the arrays of its own single
forward pass, per photo:

* `probabilities` (n, classes): the model's softmax output;
* `features` (n, dim): the model's pooled backbone features (the `models.POOL_LAYER` output);
* `imagenet_features` (n, 1280): the pooled features of the ImageNet EfficientNet-Lite0 at
  224 px. For a transfer model on the frozen ImageNet Lite0 these ARE `features`
  (`detector.imagenet_from_pool`); otherwise they take a second forward pass, needed only when
  `detector.needs_imagenet_features`.

Scores (higher = less like the training photos), combined by a logistic regression fitted on
calibration photos (`scope_build.py`):

* `imagenet`: log-odds, under the Lite0 ImageNet head, of ImageNet's OTHER animals (synsets
  0-397 less the classes' own) against the synsets of the checkpoint's classes. A dog or a
  lion puts its mass on other animals; an elephant statue that ImageNet cannot name puts it
  on neither, so unlike the plain mass on the classes' synsets it is not flagged for that.
  The log-sum-exp over all 1000 classes cancels, so only the 398 animal columns are stored;
* `knn`: 1 - mean cosine similarity to the `k` nearest training photos, in a 64-dimensional
  PCA of the ImageNet features (of the model's own features without ImageNet ones);
* `maxprob`: 1 - the model's top probability; in a detector a head-only fine-tune inherited,
  that of the head it was calibrated with (`calibration_head`): the source's verdicts, exactly.

Files, next to the checkpoint's model (written atomically, no absolute paths):

* `scope.npz`: `train_features` (float16, n x dim, the model's pooled features of the train
  split in split.json order, unflipped), `train_labels` (int16, index into class_names),
  `train_files` (str, paths relative to the split's dataset root, as in split.json),
  `knn_mean` (float32, dim), `knn_projection` (float16, dim x 64) and `knn_reference`
  (float16, n x 64, the train split projected), and `imagenet_kernel` (float16, 1280 x 398)
  and `imagenet_bias` (float32, 398) when used. Fine-tuning without photos and few-shot
  teaching reuse the train features. Optionally `test_features`, `test_labels`, `test_files`
  (same dtypes, the split's test part): `teach` scores the original classes on them when the
  photos are absent (`scripts/add_test_features.py` adds them; 1.4 MB per bundled model).
  `head_kernel_0`, `head_bias_0`, ... (float32): the calibration head, in inherited detectors.
* `scope.json`: format, method, threshold, k, classes, the combiner's weights, the
  sha256 of scope.npz (a torn or mismatched pair is refused) and the calibration figures.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import bytes_sha256, file_sha256, write_atomic, write_json
from animalcls.core.errors import CheckpointError

# Re-exported: scope.knn_score, scope.Combiner... are the detector's API.
from animalcls.trust.scope_scores import (  # noqa: F401
    ANIMAL_SYNSETS,
    KNN_DIMENSIONS,
    Combiner,
    KnnReference,
    imagenet_log_odds,
    imagenet_score,
    knn_score,
    logsumexp,
    maxprob_score,
    unit_rows,
)

SCOPE_NPZ = "scope.npz"
SCOPE_JSON = "scope.json"
FORMAT_VERSION = 1
IMAGENET_IMAGE_SIZE = 224
SCORE_NAMES = ("imagenet", "knn", "maxprob")
METHODS = (*SCORE_NAMES, "combined")

# ImageNet-1k synsets of each class a checkpoint may know (standard class order).
IMAGENET_SYNSETS: dict[str, tuple[int, ...]] = {
    "cat": tuple(range(281, 286)),
    "spider": tuple(range(72, 78)),
    "butterfly": tuple(range(321, 327)),
    "elephant": (101, 385, 386),
    "chicken": (7, 8),
    "dog": tuple(range(151, 269)),
    "horse": (339, 603),
    "cow": (345, 346, 347),
    "sheep": (348, 349),
    "squirrel": (335, 336),
}


class ScopeError(CheckpointError):
    """A checkpoint's scope files are missing, corrupt or do not match each other."""


@dataclass
class ScopeDetector:
    """Decides per photo whether it shows one of `class_names`; see the module docstring."""

    class_names: list[str]
    method: str
    threshold: float
    train_features: np.ndarray
    train_labels: np.ndarray
    train_files: list[str]
    k: int = 10
    knn: KnnReference | None = None
    knn_space: str = "model"  # or "imagenet": which features the kNN reference holds
    imagenet_from_pool: bool = False
    imagenet_kernel: np.ndarray | None = None
    imagenet_bias: np.ndarray | None = None
    combiner: Combiner | None = None
    info: dict[str, Any] = field(default_factory=dict)
    test_features: np.ndarray | None = None  # optional: the test split's pooled features
    test_labels: np.ndarray | None = None
    test_files: list[str] | None = None
    # The Dense layers (ReLU between, softmax last) on `features` whose top probability the
    # maxprob score was calibrated with; None: the model's own probabilities.
    calibration_head: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def score_names(self) -> list[str]:
        return list(self.combiner.names) if self.method == "combined" and self.combiner else [self.method]

    @property
    def needs_imagenet_features(self) -> bool:
        """Whether `decide` needs ImageNet Lite0 features that are not the model's own."""
        uses = "imagenet" in self.score_names or ("knn" in self.score_names and self.knn_space == "imagenet")
        return uses and not self.imagenet_from_pool

    @property
    def synsets(self) -> list[int]:
        return sorted({s for name in self.class_names for s in IMAGENET_SYNSETS[name]})

    def scores(
        self, probabilities: np.ndarray, features: np.ndarray, imagenet_features: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Each score the method uses, per photo (higher = less like the training photos)."""
        imagenet = features if self.imagenet_from_pool else imagenet_features
        if self.needs_imagenet_features and imagenet is None:
            raise ValueError("This detector needs imagenet_features (pooled ImageNet Lite0 features).")
        out: dict[str, np.ndarray] = {}
        for name in self.score_names:
            if name == "maxprob":
                out[name] = (
                    self._calibration_maxprob(features) if self.calibration_head else maxprob_score(probabilities)
                )
            elif name == "knn":
                out[name] = self.knn.score(imagenet if self.knn_space == "imagenet" else features, self.k)
            elif name == "imagenet":
                out[name] = imagenet_score(imagenet, self.imagenet_kernel, self.imagenet_bias, self.synsets)
        return out

    def _calibration_maxprob(self, features: np.ndarray) -> np.ndarray:
        layers, x = self.calibration_head or [], np.asarray(features, np.float64)
        for i, (kernel, bias) in enumerate(layers):
            x = x @ kernel + bias if i == len(layers) - 1 else np.maximum(x @ kernel + bias, 0.0)
        return 1.0 - np.exp(x.max(axis=1) - logsumexp(x))  # 1 - the softmax's top probability

    def score(
        self, probabilities: np.ndarray, features: np.ndarray, imagenet_features: np.ndarray | None = None
    ) -> np.ndarray:
        """The number compared with `threshold`: above it, a photo is out of scope."""
        scores = self.scores(probabilities, features, imagenet_features)
        return self.combiner(scores) if self.method == "combined" else scores[self.method]

    def decide(
        self, probabilities: np.ndarray, features: np.ndarray, imagenet_features: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(out_of_scope booleans, scope scores), one per photo."""
        score = self.score(probabilities, features, imagenet_features)
        return score > self.threshold, score


def save_scope(folder: str | Path, detector: ScopeDetector) -> None:
    """Write scope.npz then scope.json into `folder`, each atomically; the json names the npz's
    sha256, so a crash between the two leaves a pair that `load_scope` refuses, never a mix."""
    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {
        "train_features": np.asarray(detector.train_features, dtype=np.float16),
        "train_labels": np.asarray(detector.train_labels, dtype=np.int16),
        "train_files": np.asarray(detector.train_files, dtype=str),
    }
    for i, (kernel, bias) in enumerate(detector.calibration_head or []):
        arrays[f"head_kernel_{i}"], arrays[f"head_bias_{i}"] = np.float32(kernel), np.float32(bias)
    if detector.knn is not None:
        arrays["knn_mean"] = np.asarray(detector.knn.mean, dtype=np.float32)
        arrays["knn_projection"] = np.asarray(detector.knn.projection, dtype=np.float16)
        arrays["knn_reference"] = np.asarray(detector.knn.reference, dtype=np.float16)
    if detector.imagenet_kernel is not None:
        arrays["imagenet_kernel"] = np.asarray(detector.imagenet_kernel, dtype=np.float16)[:, :ANIMAL_SYNSETS]
        arrays["imagenet_bias"] = np.asarray(detector.imagenet_bias, dtype=np.float32)[:ANIMAL_SYNSETS]
    if detector.test_features is not None:
        arrays["test_features"] = np.asarray(detector.test_features, dtype=np.float16)
        arrays["test_labels"] = np.asarray(detector.test_labels, dtype=np.int16)
        arrays["test_files"] = np.asarray(detector.test_files, dtype=str)
    payload = _npz_bytes(arrays)
    write_atomic(folder / SCOPE_NPZ, lambda handle: handle.write(payload))
    write_json(
        folder / SCOPE_JSON,
        {
            "format": FORMAT_VERSION,
            "class_names": detector.class_names,
            "method": detector.method,
            "threshold": float(detector.threshold),
            "k": detector.k,
            "knn_space": detector.knn_space,
            "imagenet_features": _imagenet_source(detector),
            "combiner": detector.combiner.to_json() if detector.combiner else None,
            "npz_sha256": bytes_sha256(payload),
            **detector.info,
        },
    )


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz deflated at level 1: 0.26 s for a fine-tune's 11 MB (savez_compressed: 0.77 s, 2 % fewer bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def _imagenet_source(detector: ScopeDetector) -> str | None:
    if detector.imagenet_kernel is None:
        return None
    return "pooled" if detector.imagenet_from_pool else "separate"


def has_scope(folder: str | Path) -> bool:
    return (Path(folder) / SCOPE_JSON).is_file()


def load_scope(folder: str | Path) -> ScopeDetector:
    """Read and validate a checkpoint folder's scope files; ScopeError says what is wrong."""
    folder = Path(folder)
    meta = _read_meta(folder)
    payload = _read_payload(folder, meta)
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged archive
        raise ScopeError(f"Corrupt {SCOPE_NPZ} in {folder}: {exc}") from None
    detector = _detector(meta, arrays, folder)
    _check_detector(detector, folder)
    return detector


def stored_parts(folder: str | Path, parts: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The split parts' pooled features and labels that scope.npz holds ("train" always, "test"
    when added), read in one pass and checked against scope.json's hash; a part it does not
    hold is left out."""
    folder = Path(folder)
    payload = _read_payload(folder, _read_meta(folder))
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            held = [part for part in parts if f"{part}_features" in data.files]
            return {part: (data[f"{part}_features"], data[f"{part}_labels"]) for part in held}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a damaged archive
        raise ScopeError(f"Corrupt {SCOPE_NPZ} in {folder}: {exc}") from None


def pooled_imagenet(folder: str | Path) -> bool:
    """Whether the detector reads the model's own pooled features as its ImageNet features
    (ScopeDetector.imagenet_from_pool), from scope.json alone."""
    return _read_meta(Path(folder))["imagenet_features"] == "pooled"


_META_KEYS = ("format", "class_names", "method", "threshold", "k", "knn_space", "imagenet_features", "npz_sha256")


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / SCOPE_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScopeError(f"No {SCOPE_JSON} in {folder}: build it with scripts/build_scope.py.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScopeError(f"Corrupt {SCOPE_JSON} in {folder}: {exc}") from None
    missing = [key for key in _META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ScopeError(f"{SCOPE_JSON} in {folder} lacks: {', '.join(missing)}.")
    if meta["format"] != FORMAT_VERSION:
        raise ScopeError(
            f"{SCOPE_JSON} in {folder} has format {meta['format']!r}; this version reads {FORMAT_VERSION}."
        )
    if meta["method"] not in METHODS:
        raise ScopeError(f"{SCOPE_JSON} in {folder}: method must be one of {METHODS}, got {meta['method']!r}.")
    return meta


def _read_payload(folder: Path, meta: dict[str, Any]) -> bytes:
    try:
        payload = (folder / SCOPE_NPZ).read_bytes()
    except FileNotFoundError:
        raise ScopeError(f"{SCOPE_JSON} in {folder} has no {SCOPE_NPZ} beside it.") from None
    if bytes_sha256(payload) != meta["npz_sha256"]:
        raise ScopeError(f"{SCOPE_NPZ} in {folder} does not match {SCOPE_JSON} (torn or replaced); rebuild it.")
    return payload


def _info(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in meta.items() if key not in (*_META_KEYS, "combiner")}


def _detector(meta: dict[str, Any], arrays: dict[str, np.ndarray], folder: Path) -> ScopeDetector:
    needed = ["train_features", "train_labels", "train_files"]
    needed += ["imagenet_kernel", "imagenet_bias"] if meta["imagenet_features"] else []
    uses_knn = meta["method"] == "knn" or "knn" in (meta.get("combiner") or {}).get("names", [])
    needed += ["knn_mean", "knn_projection", "knn_reference"] if uses_knn else []
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise ScopeError(f"{SCOPE_NPZ} in {folder} lacks: {', '.join(missing)}.")
    info = _info(meta)
    return ScopeDetector(
        class_names=list(meta["class_names"]),
        method=meta["method"],
        threshold=float(meta["threshold"]),
        train_features=arrays["train_features"],
        train_labels=arrays["train_labels"].astype(np.int64),
        train_files=[str(f) for f in arrays["train_files"]],
        k=int(meta["k"]),
        knn=KnnReference(arrays["knn_mean"], arrays["knn_projection"], arrays["knn_reference"])
        if "knn_mean" in arrays
        else None,
        knn_space=str(meta["knn_space"]),
        imagenet_from_pool=meta["imagenet_features"] == "pooled",
        imagenet_kernel=arrays.get("imagenet_kernel"),
        imagenet_bias=arrays.get("imagenet_bias"),
        combiner=Combiner.from_json(meta["combiner"]) if meta.get("combiner") else None,
        info=info,
        test_features=arrays.get("test_features"),
        test_labels=arrays["test_labels"].astype(np.int64) if "test_labels" in arrays else None,
        test_files=[str(f) for f in arrays["test_files"]] if "test_files" in arrays else None,
        calibration_head=[
            (arrays[f"head_kernel_{i}"], arrays[f"head_bias_{i}"])
            for i in range(sum(k.startswith("head_kernel_") for k in arrays))
        ]
        or None,
    )


def _check_detector(detector: ScopeDetector, folder: Path) -> None:
    features, labels = detector.train_features, detector.train_labels
    if (
        features.ndim != 2
        or len(features) == 0
        or len(labels) != len(features)
        or len(detector.train_files) != len(features)
    ):
        raise ScopeError(f"{SCOPE_NPZ} in {folder}: train_features, train_labels and train_files disagree in length.")
    if labels.min() < 0 or labels.max() >= len(detector.class_names):
        raise ScopeError(f"{SCOPE_NPZ} in {folder}: train_labels outside 0..{len(detector.class_names) - 1}.")
    if any(Path(f).is_absolute() or ".." in Path(f).parts for f in detector.train_files):
        raise ScopeError(f"{SCOPE_NPZ} in {folder}: train_files must be relative to the dataset root.")
    if "imagenet" in detector.score_names:
        kernel = detector.imagenet_kernel
        if kernel is None or kernel.ndim != 2 or kernel.shape[1] != len(detector.imagenet_bias):
            raise ScopeError(f"{SCOPE_NPZ} in {folder}: the ImageNet head's kernel and bias do not match.")
        unknown = [n for n in detector.class_names if n not in IMAGENET_SYNSETS]
        if unknown:
            raise ScopeError(f"{SCOPE_JSON} in {folder}: no ImageNet synsets known for {', '.join(unknown)}.")
    if detector.knn is not None:
        knn = detector.knn
        if knn.projection.ndim != 2 or knn.projection.shape != (len(knn.mean), knn.reference.shape[1]):
            raise ScopeError(f"{SCOPE_NPZ} in {folder}: the kNN mean, projection and reference do not match.")
    if detector.combiner and len(detector.combiner.coef) != len(detector.combiner.names):
        raise ScopeError(f"{SCOPE_JSON} in {folder}: the combiner's weights do not match its scores.")


def check_matches(
    detector: ScopeDetector, manifest: dict[str, Any], folder: str | Path, model_sha256: str = ""
) -> None:
    """Refuse a scope built for other classes, or for another model.keras (hashed unless given),
    than the checkpoint's."""
    _check_built_for(detector.class_names, detector.info, manifest, folder, model_sha256)


def check_folder_matches(manifest: dict[str, Any], folder: str | Path) -> None:
    """`check_matches` from scope.json alone (nothing decompressed): what a reader of the stored
    features needs to know before trusting them."""
    meta = _read_meta(Path(folder))
    _check_built_for(list(meta["class_names"]), _info(meta), manifest, folder)


def _check_built_for(
    class_names: list[str], info: dict[str, Any], manifest: dict[str, Any], folder: str | Path, model_sha256: str = ""
) -> None:
    if list(manifest["class_names"]) != class_names:
        raise ScopeError(
            f"{SCOPE_JSON} in {folder} was built for {class_names}, the checkpoint has {list(manifest['class_names'])}."
        )
    model = Path(folder) / "model.keras"
    recorded = info.get("model_sha256")
    if recorded and model.is_file() and (model_sha256 or file_sha256(model)) != recorded:
        raise ScopeError(
            f"{SCOPE_JSON} in {folder} was built for another model.keras; rebuild it "
            "(scripts/build_scope.py --overwrite)."
        )
