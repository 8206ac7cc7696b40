"""The web app's Training tab: handlers called directly with the tiny checkpoints (no server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.filterwarnings("ignore:::gradio.queueing"), pytest.mark.usefixtures("isolated_dirs")]


# ---------------------------------------------------------------- Training tab


def test_training_tab_views(animal_app):
    values = animal_app.model_views()
    assert len(values) == 2 + 2 * 4
    for facts, history, confusion, report in (values[2:6], values[6:10]):
        for fact in ("backbone", "image size", "photos train / val / test", "epochs run", "training time"):
            assert fact in facts
        assert Image.open(history).size[0] > 300 and Image.open(confusion).size[0] > 200
        assert list(report.columns) == ["class", "precision", "recall", "f1-score", "support"]
        assert list(report["class"]) == [
            "cat",
            "spider",
            "butterfly",
            "elephant",
            "chicken",
            "accuracy",
            "macro avg",
            "weighted avg",
        ]
        assert report.iloc[5]["support"] == 10


def test_plots_are_drawn_when_the_pngs_are_missing(tiny_checkpoints, tmp_path):
    from animalcls.webapp.views import confusion_file, history_file

    folder = tmp_path / "no-pngs"
    shutil.copytree(tiny_checkpoints["scratch"], folder)
    (folder / "history.png").unlink()
    (folder / "confusion_matrix.png").unlink()
    drawn = history_file(folder, tmp_path / "render")
    assert Image.open(drawn).size[0] > 300 and Path(drawn).parent.parent == tmp_path / "render"
    assert history_file(folder, tmp_path / "render") == drawn  # drawn once, then served as a file
    assert Image.open(confusion_file(folder, tmp_path / "render")).size[0] > 200
    assert history_file(tiny_checkpoints["scratch"], tmp_path / "render") == str(
        tiny_checkpoints["scratch"] / "history.png"
    )
