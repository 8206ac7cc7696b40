"""sklearn's classification report (as `evaluate.evaluation_report` stores it) rendered three
ways from one list of rows: plain text for the CLI, table rows for the app's DataFrame and
Markdown for the model card. A leaf: no imports from the package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REPORT_HEADERS = ["class", "precision", "recall", "f1-score", "support"]
AVERAGES = ("macro avg", "weighted avg")


def report_rows(evaluation: Mapping[str, Any] | None) -> list[list[Any]]:
    """Each class, then accuracy (f1-score column) and the macro and weighted averages, as
    [label, precision, recall, f1-score, support] rounded to 4 digits."""
    if not evaluation:
        return []
    report, names = evaluation["report"], evaluation["class_names"]

    def row(label: str, values: Mapping[str, float]) -> list[Any]:
        scores = [round(float(values[k]), 4) for k in ("precision", "recall", "f1-score")]
        return [label, *scores, int(values["support"])]

    rows = [row(name, report[name]) for name in names]
    total = int(sum(report[name]["support"] for name in names))
    rows.append(["accuracy", None, None, round(float(evaluation["accuracy"]), 4), total])
    rows += [row(avg, report[avg]) for avg in AVERAGES if avg in report]
    return rows


def format_report(evaluation: Mapping[str, Any]) -> str:
    """The study's text table, then the confusion matrix."""
    names = evaluation["class_names"]
    width = max(len(n) for n in [*names, "weighted avg"])
    photos = (evaluation.get("photos") or {}).get("description")
    lines = [f"Photos: {photos}", ""] if photos else []
    lines += [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for label, *scores, support in report_rows(evaluation):
        if label == "accuracy":
            lines.append("")
        cells = " ".join(f"{'':>9}" if s is None else f"{s:>9.4f}" for s in scores)
        lines.append(f"{label:>{width}}  {cells} {support:>9}")
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", _matrix(evaluation["confusion_matrix"], names)]
    return "\n".join(lines)


def report_markdown(evaluation: Mapping[str, Any]) -> list[str]:
    """A Markdown table: classes, then **accuracy** and the *averages*."""
    lines = ["| class | precision | recall | f1-score | support |", "|---|---:|---:|---:|---:|"]
    for label, *scores, support in report_rows(evaluation):
        label = f"**{label}**" if label == "accuracy" else f"*{label}*" if label in AVERAGES else label
        cells = [label, *("" if s is None else f"{s:.4f}" for s in scores), str(support)]
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return lines


def _matrix(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    width = max(6, *(len(n) for n in names))
    lines = [" " * width + "".join(f"{n[:width]:>{width + 1}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:>{width}}" + "".join(f"{int(v):>{width + 1}}" for v in row))
    return "\n".join(lines)
