"""Pooled backbone features stored next to a checkpoint, so its head can be fine-tuned or
taught new classes with no photos at all (a Hugging Face Space ships no dataset). One
dataclass, `StoredFeatures`, and one loader, `load_features`, for fine-tuning, teaching and
the detector's neighbours (which read the same train features in scope.npz).

`features.npz` (float16 features, int16 labels, written atomically) holds, per split part,
`<part>_features` (n x dim, the `avg_pool` output for the unflipped photo, in split.json
order) and `<part>_labels`, plus `backbone_key` (features.backbone_key of the model that
made them: a fine-tune refuses features of another backbone). The train part is read from
the scope detector's `scope.npz` (`train_features`, `train_labels`: the same pooled features
of the same photos) when that file holds it, and so is the test part, so neither is stored
twice: the bundled transfer checkpoint's `features.npz` keeps only val. A head-only fine-tune
keeps its source's backbone, so it finds its features through `manifest.finetuned_from.name`
(see `find_features`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import write_atomic
from animalcls.core.errors import CheckpointError
from animalcls.store.checkpoints import MANIFEST_FILE, read_json
from animalcls.trust.scope import SCOPE_NPZ, ScopeError, stored_parts  # train and test are stored once, in scope.npz

FEATURES_FILE = "features.npz"

PARTS = ("train", "val", "test")


@dataclass
class StoredFeatures:
    """A checkpoint's stored pooled features, per split part; labels index `class_names`."""

    folder: Path  # the checkpoint folder the features were stored with
    class_names: list[str]
    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # part -> (float32 features, int labels)
    backbone_key: str | None = None  # of the model that made them (features.npz); None: scope.npz alone
    _hidden: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def sizes(self) -> dict[str, int]:
        return {part: len(labels) for part, (_, labels) in self.parts.items()}

    @property
    def train(self) -> np.ndarray:
        return self.parts["train"][0]

    @property
    def train_labels(self) -> np.ndarray:
        return self.parts["train"][1]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(features, labels) of one part, None when not stored (teaching: the test part is optional)."""
        return self.parts.get(name)

    def hidden(self, head: Any) -> np.ndarray:
        """The train features through `head`'s hidden layers (`head.penultimate`), computed once
        per set of hidden weights: the app teaches many sessions from one head."""
        digest = hashlib.sha1(b"".join(a.tobytes() for a in (*head.kernels[:-1], *head.biases[:-1]))).hexdigest()
        if digest not in self._hidden:
            self._hidden = {digest: head.penultimate(self.train)}
        return self._hidden[digest]


def save_features(folder: Path, backbone_key: str, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write `folder/features.npz` atomically (features as float16, labels as int16)."""
    arrays: dict[str, Any] = {"backbone_key": np.asarray(backbone_key)}
    for part, (features, labels) in parts.items():
        arrays[f"{part}_features"] = np.asarray(features, dtype=np.float16)
        arrays[f"{part}_labels"] = np.asarray(labels, dtype=np.int16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_atomic(Path(folder) / FEATURES_FILE, lambda handle: handle.write(buffer.getvalue()))


def load_features(folder: Path, parts: Sequence[str] = PARTS, optional: Sequence[str] = ()) -> StoredFeatures | None:
    """The features `folder` stores for `parts` (and for those of `optional` it has), from
    features.npz and scope.npz; None when it stores none of `parts`. A part found in neither,
    a corrupt file or features and labels that disagree raise CheckpointError."""
    folder = Path(folder)
    path = folder / FEATURES_FILE
    try:
        arrays: dict[str, Any] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                arrays = {key: stored[key] for key in stored.files}
        wanted = (*parts, *optional)
        in_file = [part for part in wanted if f"{part}_features" in arrays]
        found = {part: (arrays[f"{part}_features"], arrays[f"{part}_labels"]) for part in in_file}
        elsewhere = [part for part in wanted if part not in found]
        if elsewhere and (folder / SCOPE_NPZ).is_file():
            found.update(stored_parts(folder, elsewhere))
        key = str(arrays["backbone_key"]) if "backbone_key" in arrays else None
        class_names = list(read_json(folder / MANIFEST_FILE)["class_names"])
    except (OSError, ValueError, KeyError, ScopeError) as exc:
        raise CheckpointError(f"Unusable stored features in checkpoint {folder.name}: {exc}") from None
    missing = [part for part in parts if part not in found]
    if len(missing) == len(parts):
        return None
    if missing:
        raise CheckpointError(f"The stored features of {folder.name} lack the {', '.join(missing)} part.")
    for part, (features, labels) in found.items():
        if len(features) != len(labels):
            raise CheckpointError(f"The stored features of {folder.name}: {part} features and labels disagree.")
    parts_read = {part: (f.astype(np.float32), labels.astype(np.int64)) for part, (f, labels) in found.items()}
    return StoredFeatures(folder, class_names, parts_read, key)


def find_features(folder: Path, search: list[Path]) -> StoredFeatures | None:
    """Features for `folder`'s backbone: its own, else those its head was trained on
    (`training.features_from`: a chain of head-only fine-tunes reaches them in one step, even
    when the fine-tunes between were removed), else those of the checkpoint it was fine-tuned
    from (looked up by name in `search`), as long as every fine-tune on the way left the
    backbone frozen."""
    trained_on = None if (Path(folder) / FEATURES_FILE).is_file() else _features_trained_on(Path(folder), search)
    current: Path | None = trained_on or Path(folder)
    for _ in range(20):  # a fine-tune chain; the bound only guards against a cycle
        if current is None:
            return None
        found = load_features(current) if (current / FEATURES_FILE).is_file() else None
        if found is not None:
            return found
        current = _frozen_source(current, search)
    return None


def _features_trained_on(folder: Path, search: list[Path]) -> Path | None:
    """The folder whose stored features trained `folder`'s head, when its backbone stayed frozen."""
    try:
        training = read_json(folder / MANIFEST_FILE).get("training") or {}
    except CheckpointError:
        return None
    name = training.get("features_from")
    if not isinstance(name, str) or not name or training.get("unfreeze_layers", 0) != 0:
        return None
    return _locate(name, search)


def _locate(name: str, search: list[Path]) -> Path | None:
    for root in search:
        candidate = Path(root) / name
        if (candidate / FEATURES_FILE).is_file() and (candidate / MANIFEST_FILE).is_file():
            return candidate
    return None


def _frozen_source(folder: Path, search: list[Path]) -> Path | None:
    try:
        manifest = read_json(folder / MANIFEST_FILE)
    except CheckpointError:
        return None
    source = (manifest.get("finetuned_from") or {}).get("name")
    if not source or (manifest.get("training") or {}).get("unfreeze_layers", 0) != 0:
        return None
    for root in search:
        candidate = Path(root) / str(source)
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    return None


def extract_parts(model: Any, split: Any, batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pooled features of every part of `split` (rooted on this machine), with TensorFlow,
    through the feature cache (so a second run is quick)."""
    from animalcls.serving.features import FeatureCache, cached_feature_groups

    groups, labels = [], {}
    for part in PARTS:
        paths, labels[part] = split.paths(part)
        groups.append((paths, False))
    arrays = cached_feature_groups(model, groups, FeatureCache(), batch_size)
    return {part: (array, np.asarray(labels[part])) for part, array in zip(PARTS, arrays)}
