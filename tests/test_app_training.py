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
    assert len(values) == 2 + 2 * 4 + 1  # two headers, four views per side, the animals the models know
    assert "five animals" in values[-1]
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


# ---------------------------------------------------------------- the photos behind the numbers


def _fine_tune_of(animal_app, source: Path, name: str) -> list[list[int]]:
    """A stored "fine-tune" of `source` whose test-split counts differ from it; returns them."""
    import json

    folder = animal_app.store.root / name
    shutil.copytree(source, folder)
    evaluation = json.loads((folder / "eval.json").read_text())
    changed = [[*row[1:], row[0] + 1] for row in evaluation["confusion_matrix"]]  # every row rotated, one more
    (folder / "eval.json").write_text(json.dumps({**evaluation, "confusion_matrix": changed}))
    return changed


def test_the_cells_follow_the_sessions_models_after_use_this_model(animal_app, tiny_checkpoints):
    _, *tables = animal_app.cells.tables()
    original = {kind: table.iloc[:, 1:].values.tolist() for kind, table in zip(("scratch", "transfer"), tables)}
    changed = _fine_tune_of(animal_app, tiny_checkpoints["transfer"], "transfer-tiny-ft-mine")
    assert changed != original["transfer"]
    mine = {"models": {}, "owned": ["transfer-tiny-ft-mine"]}
    *_, mine = animal_app.use_model("transfer-tiny-ft-mine", mine)

    intro, scratch, transfer, caption, gallery = animal_app.cells.refresh(mine)
    assert transfer.iloc[:, 1:].values.tolist() == changed  # this session's fine-tune
    assert scratch.iloc[:, 1:].values.tolist() == original["scratch"]
    assert (caption, gallery) == ("", [])  # no photos of the model this session left
    # Another visitor, and this one after Restore, see the original model's counts.
    assert animal_app.cells.tables(None)[2].iloc[:, 1:].values.tolist() == original["transfer"]
    *_, mine = animal_app.restore_models(mine)
    assert animal_app.cells.tables(mine)[2].iloc[:, 1:].values.tolist() == original["transfer"]


def test_use_and_restore_redraw_the_cells_on_the_page(tiny_checkpoints, tmp_path):
    import app

    demo = app.build_demo(
        tiny_checkpoints["scratch"], tiny_checkpoints["transfer"], use_hub=False, finetune_root=tmp_path / "ft"
    )
    by_name = {fn.api_name: fn for fn in demo.fns.values()}
    for swap, redraw in (("use_model", "cell_tables_after_use"), ("restore_models", "cell_tables_after_restore")):
        event = by_name[redraw]
        assert event.trigger_after == by_name[swap]._id and event.trigger_only_on_success
        assert event.fn == demo.animalcls_app.cells.refresh
        drawn = {getattr(block, "elem_id", None) for block in event.outputs}
        assert {"cells-intro", "cells-scratch", "cells-transfer", "cells-caption", "cells-gallery"} <= drawn
        assert event.inputs and all(type(block).__name__ == "State" for block in event.inputs)
