"""The test photos behind every confusion-matrix cell: a checkpoint's predictions on its
recorded test split, computed once and cached, and the photos where two models disagree.

Predictions are made as `evaluate` makes them (tf.data decoding, the checkpoint's forward pass),
so each cell holds exactly the photos its eval.json count says. The cache file lives in the
feature cache (`predictions/<model sha256>-<split sha256>.json`), keyed by the model and split
files' contents, so it can never be stale, and holds file names relative to the dataset root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .app_views import dataset_root_of
from .atomic import write_json
from .checkpoints import EVAL_FILE, MODEL_FILE, SPLIT_FILE, read_json, read_manifest
from .settings import feature_cache_root

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
        return {"class_names": self.class_names, "files": self.files, "labels": self.labels,
                "predicted": self.predicted, "confidence": self.confidence}

    def by_file(self) -> dict[str, tuple[str, float]]:
        """{relative file: (predicted class name, its probability)}."""
        return {f: (self.class_names[p], c) for f, p, c in zip(self.files, self.predicted, self.confidence)}

    def cell(self, true: int | None, predicted: int | None) -> list[int]:
        """Indices of the photos of class `true` predicted as `predicted` (None: any)."""
        return [i for i, (t, p) in enumerate(zip(self.labels, self.predicted))
                if (true is None or t == true) and (predicted is None or p == predicted)]

    def confusion(self) -> list[list[int]]:
        size = len(self.class_names)
        matrix = np.zeros((size, size), dtype=int)
        for t, p in zip(self.labels, self.predicted):
            matrix[t, p] += 1
        return matrix.tolist()


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(folder: Path) -> Path:
    folder = Path(folder)
    key = f"{_digest(folder / MODEL_FILE)[:24]}-{_digest(folder / SPLIT_FILE)[:12]}"
    return feature_cache_root() / "predictions" / f"{key}.json"


def split_predictions(folder: Path, on_batch: BatchHook | None = None, batch_size: int = 32) -> SplitPredictions:
    """The checkpoint's predictions on its test split: read from the cache, else computed
    (needs the dataset on this machine) and cached."""
    from .errors import DataError

    folder = Path(folder)
    cached = cache_file(folder)
    if cached.is_file():
        try:
            return SplitPredictions(**read_json(cached))
        except (TypeError, ValueError, OSError):
            pass  # a damaged cache entry is recomputed and replaced
    root = dataset_root_of(folder)
    if root is None:
        raise DataError(f"The test photos of {read_manifest(folder)['name']} are not on this machine.")
    result = compute_predictions(folder, root, on_batch, batch_size)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json(cached, result.to_json())
    return result


def compute_predictions(folder: Path, root: Path, on_batch: BatchHook | None = None,
                        batch_size: int = 32) -> SplitPredictions:
    """Run the checkpoint over its test split, decoding as `evaluate` does."""
    from .data import Split, make_dataset
    from .inference import load_predictor

    predictor = load_predictor(folder)
    split = Split.load(folder / SPLIT_FILE)
    paths, labels = split.paths("test", root)
    dataset = make_dataset(paths, labels, len(split.class_names), predictor.image_size, batch_size, training=False)
    steps = -(-len(paths) // batch_size)
    outputs = []
    for step, (images, _) in enumerate(dataset, 1):
        outputs.append(predictor.forward(images.numpy()))
        if on_batch:
            on_batch(step, steps)
    probabilities = np.concatenate(outputs) if outputs else np.zeros((0, len(split.class_names)))
    return SplitPredictions(
        class_names=list(predictor.class_names), files=[rel for rel, _ in split.test], labels=list(labels),
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

