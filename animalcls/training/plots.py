"""Matplotlib figures for training curves and confusion matrices. Never calls plt.show():
figures are returned, so the app can display them and checkpoints can save them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

METRICS = ("loss", "accuracy", "precision", "recall")


def history_figure(history: Mapping[str, Sequence[float]], title: str = "", note: str = "") -> Figure:
    """Training vs validation curves, one panel per metric, and `note` (see `loss_note`) under
    them. Fixed margins rather than a layout engine: the labels are always the same, and
    constrained layout doubled the drawing time, which every fine-tune pays."""
    fig = Figure(figsize=(9, 6.5))
    bottom = 0.14 if note else 0.08
    fig.subplots_adjust(left=0.08, right=0.98, bottom=bottom, top=0.9 if title else 0.95, hspace=0.38, wspace=0.2)
    axes = fig.subplots(2, 2).ravel()
    epochs = max((len(history.get(key) or []) for key in history), default=0)
    for ax, metric in zip(axes, METRICS):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=label, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        # Whole epochs on the axis, even after one: autoscaling around a single point gave 0.945-1.065.
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    if note:
        fig.text(0.5, 0.012, note, ha="center", va="bottom", fontsize=11, wrap=True)
    return fig


def loss_note(training: Mapping, num_classes: int) -> str:
    """Why the training loss sits above the validation loss, when the recipe makes it so: label
    smoothing puts a floor under the training loss (the entropy of the smoothed target), and
    the training curves are measured on augmented views while validation sees plain photos."""
    smoothing = float(training.get("label_smoothing") or 0.0)
    augmented = any(training.get(key) for key in ("robust_augment", "strong_augment", "mix"))
    if smoothing <= 0 and not augmented:
        return ""
    parts = []
    if smoothing > 0:
        floor = smoothed_loss_floor(smoothing, num_classes)
        parts.append(f"softened labels (label smoothing {smoothing:g}: never below {floor:.2f})")
    parts += ["randomly altered photos"] if augmented else []
    plain = "plain photos and labels" if smoothing > 0 else "plain photos"
    return f"Why training loss is higher: it is measured on {' and '.join(parts)}; validation loss on {plain}."


def smoothed_loss_floor(smoothing: float, num_classes: int) -> float:
    """The least cross-entropy a model can reach against label-smoothed targets."""
    target = np.full(num_classes, smoothing / num_classes)
    target[0] += 1.0 - smoothing
    return float(-(target * np.log(target)).sum())


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Figure:
    """Counts in each cell; colour normalised by row (the recall of each true class)."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 2.2 + 0.8 * len(class_names)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in np.ndindex(counts.shape):
        colour = "white" if normalised[i, j] > 0.5 else "black"
        ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
    ax.set_title(title or "Confusion matrix")
    return fig


def checkpoint_figures(
    history: Mapping[str, Sequence[float]] | None, evaluation: Mapping | None, title: str, note: str = ""
) -> dict[str, Figure]:
    """The pictures a checkpoint folder holds, by file name, for `checkpoints.save_checkpoint`."""
    from animalcls.store.checkpoints import CONFUSION_PLOT, HISTORY_PLOT

    figures: dict[str, Figure] = {}
    if history is not None:
        figures[HISTORY_PLOT] = history_figure(history, title, note)
    if evaluation is not None:
        figures[CONFUSION_PLOT] = confusion_figure(evaluation["confusion_matrix"], evaluation["class_names"], title)
    return figures
