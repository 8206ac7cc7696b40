"""Test-split evaluation with scikit-learn: classification report and confusion matrix
(rendered by reports.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def evaluation_report(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy at the top level, sklearn's per-class report with macro and weighted
    averages, and the confusion matrix (rows = true class), all JSON-serialisable."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = list(range(len(class_names)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0
    )
    report.pop("accuracy", None)  # kept once, at the top level
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n": len(y_true),
        "class_names": list(class_names),
        "report": report,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


Forward = Callable[[np.ndarray], np.ndarray]


def predict_probabilities(
    model,
    dataset,
    steps: int | None = None,
    on_batch: Callable[[int, int | None], None] | None = None,
    forward: Forward | None = None,
) -> np.ndarray:
    """Run `model` over a batched tf.data dataset of (images, labels) in a compiled function,
    or `forward` (numpy batch -> probabilities, e.g. an ONNX Runtime predictor) when given."""
    compiled = None if forward else _compiled(model)
    outputs = []
    for step, (images, _) in enumerate(dataset, 1):
        outputs.append(forward(images.numpy()) if forward else compiled(images).numpy())
        if on_batch:
            on_batch(step, steps)
    width = model.output_shape[-1] if model is not None else 0
    return np.concatenate(outputs) if outputs else np.zeros((0, width), dtype=np.float32)


def _compiled(model) -> Any:
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)


def evaluate_paths(
    model,
    paths: Sequence[str],
    labels: Sequence[int],
    class_names: Sequence[str],
    image_size: int,
    batch_size: int = 32,
    on_batch: Callable[[int, int | None], None] | None = None,
    forward: Forward | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (or `forward`, see predict_probabilities) on image files with known labels."""
    from animalcls.data.dataset import make_dataset

    dataset = make_dataset(paths, labels, len(class_names), image_size, batch_size, training=False)
    steps = -(-len(paths) // batch_size)
    probabilities = predict_probabilities(model, dataset, steps, on_batch, forward)
    return evaluation_report(list(labels), probabilities.argmax(axis=1).tolist(), class_names)
