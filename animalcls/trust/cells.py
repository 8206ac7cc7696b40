"""The test photos behind every confusion-matrix cell: a checkpoint's predictions on its
recorded test split, computed once and cached, and the photos where two models disagree.

Predictions are made as `evaluate` makes them (tf.data decoding, the checkpoint's forward pass),
so each cell holds exactly the photos its eval.json count says. The cache file lives in the
feature cache (`predictions/<model sha256>-<split sha256>.json`); a checkpoint may also ship one
as `test_predictions.json` (the bundled ones do). Each records the sha256 of the model.keras and
split.json it was made with, so a stale file is never used; file names are relative to the dataset root.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import file_sha256, write_json
from animalcls.core.settings import feature_cache_root
from animalcls.store.checkpoints import EVAL_FILE, MODEL_FILE, SPLIT_FILE, read_json, read_manifest
from animalcls.webapp.views import dataset_root_of

BatchHook = Callable[[int, int | None], None]


@dataclass
class SplitPredictions:
    """Per test photo (split.json order): its file (relative), true and predicted class index,
    and the predicted class's probability."""

    class_names: list[str]
    files: list[str]
    labels: list[int]
    predicted: list[int]
    confidence: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "files": self.files,
            "labels": self.labels,
            "predicted": self.predicted,
            "confidence": self.confidence,
        }

    def by_file(self) -> dict[str, tuple[str, float]]:
        """{relative file: (predicted class name, its probability)}."""
        return {f: (self.class_names[p], c) for f, p, c in zip(self.files, self.predicted, self.confidence)}

    def cell(self, true: int | None, predicted: int | None) -> list[int]:
        """Indices of the photos of class `true` predicted as `predicted` (None: any)."""
        return [
            i
            for i, (t, p) in enumerate(zip(self.labels, self.predicted))
            if (true is None or t == true) and (predicted is None or p == predicted)
        ]

    def confusion(self) -> list[list[int]]:
        size = len(self.class_names)
        matrix = np.zeros((size, size), dtype=int)
        for t, p in zip(self.labels, self.predicted):
            matrix[t, p] += 1
        return matrix.tolist()


PREDICTIONS_FILE = "test_predictions.json"  # optional, shipped next to a checkpoint (bundled ones)


def _key(folder: Path) -> dict[str, str]:
    return {"model_sha256": file_sha256(folder / MODEL_FILE), "split_sha256": file_sha256(folder / SPLIT_FILE)}


def cache_file(key: dict[str, str]) -> Path:
    return feature_cache_root() / "predictions" / f"{key['model_sha256'][:24]}-{key['split_sha256'][:12]}.json"


def _read(path: Path, key: dict[str, str]) -> SplitPredictions | None:
    """The predictions in `path` when they were made by this model on this split, else None."""
    try:
        data = read_json(path)
        if {k: data.pop(k, None) for k in key} != key:
            return None
        return SplitPredictions(**data)
    except (TypeError, ValueError, OSError, AttributeError):
        return None  # a damaged file is recomputed (and the cache entry replaced)


def save_predictions(
    folder: Path, predictions: SplitPredictions, target: Path | None = None, key: dict[str, str] | None = None
) -> Path:
    """Write `predictions` with the model and split they belong to (default: the cache)."""
    key = key or _key(Path(folder))
    target = Path(target) if target else cache_file(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json(target, {**key, **predictions.to_json()})
    return target


# What `split_predictions` last returned per folder, with the files' (size, mtime) it came
# from: the Training tab asks on every cell click, and hashing model.keras each time cost more
# than the answer.
_RECENT: dict[Path, tuple[tuple, SplitPredictions]] = {}


def _stamp(folder: Path) -> tuple:
    return tuple((s.st_size, s.st_mtime_ns) for s in ((folder / MODEL_FILE).stat(), (folder / SPLIT_FILE).stat()))


def split_predictions(folder: Path, on_batch: BatchHook | None = None, batch_size: int = 32) -> SplitPredictions:
    """The checkpoint's predictions on its test split: read from its folder's
    test_predictions.json or the cache when made by this model.keras on this split.json, else
    computed (needs the dataset on this machine) and cached."""
    from animalcls.core.errors import DataError

    folder = Path(folder).resolve()
    stamp = _stamp(folder)
    recent = _RECENT.get(folder)
    if recent is not None and recent[0] == stamp:
        return recent[1]
    key = _key(folder)
    for candidate in (folder / PREDICTIONS_FILE, cache_file(key)):
        found = _read(candidate, key) if candidate.is_file() else None
        if found is not None:
            _RECENT[folder] = (stamp, found)
            return found
    root = dataset_root_of(folder)
    if root is None:
        raise DataError(f"The test photos of {read_manifest(folder)['name']} are not on this machine.")
    result = compute_predictions(folder, root, on_batch, batch_size)
    save_predictions(folder, result, key=key)
    _RECENT[folder] = (stamp, result)
    return result


def compute_predictions(
    folder: Path, root: Path, on_batch: BatchHook | None = None, batch_size: int = 32
) -> SplitPredictions:
    """Run the checkpoint over its test split, decoding as `evaluate` does."""
    from animalcls.data.dataset import Split
    from animalcls.serving.forward import forward_paths
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(folder)
    split = Split.load(folder / SPLIT_FILE)
    paths, labels = split.paths("test", root)
    probabilities = forward_paths(predictor.outputs, paths, ("probabilities",), batch_size, on_batch)["probabilities"]
    return SplitPredictions(
        class_names=list(predictor.class_names),
        files=[rel for rel, _ in split.test],
        labels=list(labels),
        predicted=[int(i) for i in probabilities.argmax(axis=1)],
        confidence=[round(float(row.max()), 6) for row in probabilities],
    )


def recorded_confusion(folder: Path | None) -> tuple[list[str], list[list[int]]] | None:
    """(class names, confusion matrix) from the checkpoint's eval.json: the counts, no photos."""
    if folder is None or not (Path(folder) / EVAL_FILE).is_file():
        return None
    evaluation = read_json(Path(folder) / EVAL_FILE)
    return list(evaluation["class_names"]), [list(map(int, row)) for row in evaluation["confusion_matrix"]]


def disagreements(first: SplitPredictions, second: SplitPredictions) -> list[str]:
    """Files in both test splits where the two models predict different classes."""
    other = second.by_file()
    return [f for f, (name, _) in first.by_file().items() if f in other and other[f][0] != name]


def true_labels(predictions: Sequence[SplitPredictions]) -> dict[str, str]:
    """{relative file: true class name} over several checkpoints' test splits."""
    out: dict[str, str] = {}
    for p in predictions:
        out.update({f: p.class_names[t] for f, t in zip(p.files, p.labels)})
    return out
