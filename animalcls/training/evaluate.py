"""Test-split evaluation with scikit-learn: classification report and confusion matrix
(rendered by reports.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from animalcls.serving.forward import Forward, forward_paths


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
    """Evaluate the Keras `model` (or `forward`, e.g. a Predictor's `outputs` on ONNX Runtime) on
    image files with known labels, decoded as in training."""
    forward = forward or Forward(image_size, model=model)
    probabilities = forward_paths(forward, paths, ("probabilities",), batch_size, on_batch)["probabilities"]
    return evaluation_report(list(labels), probabilities.argmax(axis=1).tolist(), class_names)
