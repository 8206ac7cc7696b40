import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from animalcls.training.evaluate import evaluation_report
from animalcls.training.plots import confusion_figure, history_figure, loss_note, smoothed_loss_floor
from animalcls.training.reports import format_report

NAMES = ["cat", "spider", "butterfly"]


def test_report_has_accuracy_averages_and_confusion_matrix():
    result = evaluation_report([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], NAMES)
    assert result["accuracy"] == 4 / 6
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["report"]["spider"]["precision"] == 2 / 3 and result["report"]["cat"]["recall"] == 0.5
    assert {"macro avg", "weighted avg"} <= set(result["report"]) and "accuracy" not in result["report"]


def test_report_counts_classes_absent_from_predictions():
    result = evaluation_report([0, 1, 2], [0, 0, 0], NAMES)
    assert result["report"]["butterfly"]["support"] == 1 and result["report"]["butterfly"]["f1-score"] == 0


def test_format_report_prints_a_study_style_table():
    text = format_report(evaluation_report([0, 0, 1, 2], [0, 0, 1, 1], NAMES))
    lines = text.splitlines()
    assert "precision    recall  f1-score   support" in lines[0]
    assert any(line.strip().startswith("accuracy") and "0.7500" in line for line in lines)
    assert any(line.strip().startswith("weighted avg") for line in lines)
    assert "Confusion matrix" in text


def test_figures_are_returned():
    history = {"loss": [1.0, 0.5], "val_loss": [1.2, 0.8], "accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6]}
    fig = history_figure(history, "t")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert len(fig.axes[0].lines) == 2 and not fig.axes[2].lines  # precision has no data
    cm = confusion_figure([[3, 1, 0], [0, 4, 0], [2, 0, 2]], NAMES)
    texts = [t.get_text() for t in cm.axes[0].texts]
    assert texts[:3] == ["3", "1", "0"]


def test_smoothed_loss_floor_is_the_least_cross_entropy_against_smoothed_targets():
    floor = smoothed_loss_floor(0.1, 5)
    target = np.array([0.92, 0.02, 0.02, 0.02, 0.02])
    assert abs(floor - float(-(target * np.log(target)).sum())) < 1e-9 and 0.38 < floor < 0.40
    others = np.random.default_rng(0).dirichlet(np.ones(5), size=200)
    assert (-(target * np.log(others)).sum(axis=1) > floor).all()


def test_loss_note_explains_only_what_the_recipe_did():
    assert loss_note({"label_smoothing": 0.0, "flip": True}, 5) == ""
    smoothed = loss_note({"label_smoothing": 0.1, "robust_augment": True}, 5)
    assert "label smoothing 0.1: never below 0.39" in smoothed and "randomly altered photos" in smoothed
    assert "smoothing" not in loss_note({"strong_augment": True}, 5)
    figure = history_figure({"loss": [1.0, 0.5], "val_loss": [0.4, 0.3]}, "m", smoothed)
    assert smoothed in [text.get_text() for text in figure.texts]


def test_both_bundled_histories_hold_precision_and_recall_curves():
    for kind in ("scratch", "transfer"):
        history = json.loads(Path(f"checkpoints/{kind}-efficientnet_lite0/history.json").read_text())
        epochs = len(history["loss"])
        for key in ("accuracy", "precision", "recall", "val_accuracy", "val_precision", "val_recall"):
            assert len(history[key]) == epochs and all(0 <= v <= 1 for v in history[key]), (kind, key)
