"""The web app's Fine-tune tab: handlers called directly with the tiny checkpoints (no server)."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import pytest
from conftest import blocking_finetune, drain, folder_hashes

from animalcls.webapp.handlers import AnimalApp

pytestmark = [pytest.mark.filterwarnings("ignore:::gradio.queueing"), pytest.mark.usefixtures("isolated_dirs")]


# ---------------------------------------------------------------- Fine-tune tab


def test_finetune_busy_lock_and_cancel(animal_app, monkeypatch):
    import animalcls.heads.finetune

    started = threading.Event()
    monkeypatch.setattr(animalcls.heads.finetune, "finetune", blocking_finetune(started))
    first = animal_app.finetune_tab.finetune(2, 1e-3, 0)
    assert "starting" in next(first)[0]
    assert started.wait(30)
    with pytest.raises(gr.Error) as busy:
        next(animal_app.finetune_tab.finetune(1, 1e-3, 0))
    assert "already running" in busy.value.message and busy.value.title == "Busy"
    assert "Cancelling" in animal_app.finetune_tab.cancel_finetune()
    final = drain(first)[-1]
    assert final[0].startswith("**Cancelled**; kept the 1 finished epoch(s).")
    assert animal_app.finetune_tab.cancel_finetune() == "No fine-tune of yours is running."
    assert not animal_app.runner.busy


def test_finetune_settings_are_checked(tiny_checkpoints, tmp_path):
    animal_app = AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        use_hub=False,
        finetune_root=tmp_path / "ft",
        examples_dir=tmp_path / "none",
        max_unfreeze=5,
    )
    for epochs, rate, unfreeze, text in (
        (0, 1e-3, 0, "Epochs"),
        (2, 0, 0, "learning rate"),
        (2, 1e-3, -1, "negative"),
        ("x", 1e-3, 0, "whole numbers"),
    ):
        with pytest.raises(gr.Error, match=text):
            next(animal_app.finetune_tab.finetune(epochs, rate, unfreeze))


def test_finetune_failure_is_reported(animal_app, monkeypatch):
    import animalcls.heads.finetune
    from animalcls.core.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("12 image(s) of the recorded split are missing")

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", broken)
    with pytest.raises(gr.Error, match="The fine-tune failed: 12 image"):
        drain(animal_app.finetune_tab.finetune(1, 1e-3, 0))
    assert not animal_app.runner.busy


def test_cancel_during_feature_extraction_saves_nothing(animal_app, monkeypatch):
    import animalcls.heads.finetune
    from animalcls.serving.features import FeatureExtractionCancelled

    def cancelled(*args, **kwargs):
        raise FeatureExtractionCancelled("Cancelled during feature extraction.")

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", cancelled)
    final = drain(animal_app.finetune_tab.finetune(1, 1e-3, 0))[-1]
    assert final[0].startswith("**Cancelled** while extracting backbone features")
    assert final[6] is None  # the result's name: none (a skip reaches API callers as {'__type__': 'update'})
    with pytest.raises(gr.Error, match="No fine-tuned model yet"):
        animal_app.use_model()


@pytest.mark.slow
def test_cancel_before_the_first_epoch_saves_nothing_and_offers_nothing(animal_app, tmp_path):
    """A real fine-tune with unfrozen layers, cancelled as it starts: nothing saved, the status
    says so, and "Use this model" stays off."""
    animal_app.finetune_tab.settings.max_unfreeze = 2  # the operator's --max-unfreeze
    run = animal_app.finetune_tab.finetune(3, 1e-3, 2)
    next(run)
    assert animal_app.finetune_tab.cancel_finetune().startswith("**Cancelling")
    final = drain(run)[-1]
    assert final[0] == "**Cancelled** before the first epoch finished: nothing was saved."
    assert final[-2]["interactive"] is False  # "Use this model" (the last output is the session)
    assert not (tmp_path / "finetunes").exists() or list((tmp_path / "finetunes").iterdir()) == []
    with pytest.raises(gr.Error, match="No fine-tuned model yet"):
        animal_app.use_model()


def test_use_model_before_any_finetune(animal_app):
    with pytest.raises(gr.Error, match="No fine-tuned model yet"):
        animal_app.use_model()


@pytest.mark.slow
def test_finetune_to_the_end_then_use_and_restore(animal_app, tiny_checkpoints, tmp_path, test_photo):
    source = tiny_checkpoints["transfer"]
    before = folder_hashes(source)
    updates = drain(animal_app.finetune_tab.finetune(1, 1e-3, 0, None))
    status, curves, start_report, start_confusion, new_report, new_confusion, name, use_button, mine = updates[-1]
    assert status.startswith("**Done.**") and "test accuracy" in status
    # A warm fine-tune can end inside one watch interval: the last phase of its work still shows.
    assert any(what in u[0] for u in updates[1:-1] for what in ("epoch 1/1", "features", "evaluating"))
    assert curves is not None and Path(new_confusion).name == "confusion_matrix.png"
    assert list(new_report["class"])[-3:] == ["accuracy", "macro avg", "weighted avg"]
    assert use_button["interactive"] is True
    new_folders = list((tmp_path / "finetunes").iterdir())
    assert len(new_folders) == 1 and (new_folders[0] / "model.keras").is_file() and name == new_folders[0].name
    assert mine["owned"] == [name] and str(tmp_path) not in status
    assert folder_hashes(source) == before  # the starting checkpoint is never written to

    # Another session may not use it, even by name; this one may, for itself only.
    with pytest.raises(gr.Error, match="no model called"):
        animal_app.use_model(name, None)
    message, *views, mine = animal_app.use_model(name, mine)
    assert "this browser session only" in message and mine["models"] == {"transfer": name}
    assert animal_app.registry.path("transfer") == source  # the server default is unchanged
    assert name in views[1] and "swapped in" in views[1]
    assert "fine-tuned from" in views[6]  # the Training tab shows the new model's facts
    assert name in animal_app.classify_tab.classify(test_photo, session=mine)[2]
    assert name not in animal_app.classify_tab.classify(test_photo, session=None)[2]  # a fresh visitor

    message, *views, mine = animal_app.restore_models(mine)
    assert mine["models"] == {} and name not in views[1]


@pytest.mark.slow
def test_use_for_everyone_is_the_operators_choice(tiny_checkpoints, tmp_path, test_photo):
    shared = AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        finetune_root=tmp_path / "ft",
        use_hub=False,
        examples_dir=tmp_path / "none",
        use_for_everyone=True,
    )
    *_, name, _, mine = drain(shared.finetune_tab.finetune(1, 1e-3, 0, None))[-1]
    message, *_ = shared.use_model(name, mine)
    assert "every visitor" in message and shared.registry.path("transfer").name == name
    assert name in shared.classify_tab.classify(test_photo, session=None)[2]  # a fresh visitor gets it too
    # Every header that visitor sees says so, as the answer's does.
    assert "swapped in" in shared.classify_tab.classify(test_photo, session=None)[2]
    assert "swapped in" in shared.classify_tab.header("transfer", None) and "swapped in" in shared.model_views(None)[1]
    shared.restore_models(None)
    assert "swapped in" not in shared.classify_tab.header("transfer", None)
    assert shared.registry.path("transfer") == tiny_checkpoints["transfer"]


def test_finetune_caps(tiny_checkpoints, tmp_path):
    capped = AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        finetune_root=tmp_path / "ft",
        use_hub=False,
        examples_dir=tmp_path / "none",
        max_epochs=4,
        max_unfreeze=0,
    )
    with pytest.raises(gr.Error, match="between 1 and 4"):
        next(capped.finetune_tab.finetune(5, 1e-3, 0))
    with pytest.raises(gr.Error, match="At most 0 backbone layers"):
        next(capped.finetune_tab.finetune(2, 1e-3, 3))
