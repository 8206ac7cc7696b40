"""The web app's Fine-tune tab: handlers called directly with the tiny checkpoints (no server)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from conftest import REPO, FakeResult, blocking_finetune, drain, finetune_saving_two_epochs, folder_hashes

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
    said = []
    with pytest.raises(gr.Error) as busy:
        said.extend(animal_app.finetune_tab.finetune(1, 1e-3, 0))
    assert "already running" in busy.value.message and busy.value.title == "Busy"
    # The page reads why in the status, not in a toast (Gradio 6 heads every error toast "Error").
    assert said[0][0].startswith("**Not fine-tuned.** A fine-tune is already running") and not busy.value.visible
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
        (0, 1e-3, 0, "Epochs must be a whole number from 1 to 20"),
        (2, 0, 0, "learning rate must be a number above 0"),
        (2, 1e-3, -1, "layers must be a whole number from 0 to 5"),
        ("x", 1e-3, 0, "Epochs must be a whole number"),
        (2.5, 1e-3, 0, "Epochs must be a whole number"),
    ):
        with pytest.raises(gr.Error, match=text):
            drain(animal_app.finetune_tab.finetune(epochs, rate, unfreeze))


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
    with pytest.raises(gr.Error, match="from 1 to 4 on this server"):
        drain(capped.finetune_tab.finetune(5, 1e-3, 0))
    with pytest.raises(gr.Error, match="from 0 to 0 on this server"):
        drain(capped.finetune_tab.finetune(2, 1e-3, 3))


# ---------------------------------------------------------------- what the tab says around a run


def _page(session_hash: str) -> SimpleNamespace:
    """A stand-in for the gr.Request of one page (what the handlers read of it: its session hash)."""
    return SimpleNamespace(session_hash=session_hash)


def test_bad_settings_are_one_sentence_by_each_field_and_nothing_starts(animal_app, tiny_checkpoints):
    from animalcls.webapp.inputs import CheckedNumber

    tab = animal_app.finetune_tab
    epochs, rate, unfreeze, session = tab.validate_settings(50, 5, 0)
    assert (epochs["is_valid"], rate["is_valid"], unfreeze["is_valid"], session["is_valid"]) == (
        False,
        False,
        True,
        True,
    )
    assert epochs["message"] == "Epochs must be a whole number from 1 to 20 on this server."
    assert rate["message"] == "The learning rate must be a number above 0 and at most 1 (e.g. 0.001)."
    assert all(check["is_valid"] for check in tab.validate_settings(3, 1e-3, 0))
    # The field hands the validator whatever came (an error of its own would come first, titled
    # just "Error"), and the validator names what is wrong with it.
    assert CheckedNumber(minimum=1, maximum=20, precision=0).preprocess(50.0) == 50
    for junk in ("three", float("nan"), float("inf"), True, {"x": 1}):
        assert CheckedNumber(minimum=1, maximum=20, precision=0).preprocess(junk) is junk
        assert tab.validate_settings(junk, junk, junk)[0]["message"].startswith("Epochs must be a whole number")
    # Start's companion says nothing and shows no Cancel: nothing runs.
    assert tab.finetune_waiting(50, 5, 0, _page("a")) == (gr.skip(), gr.skip())
    assert tab.finetune_waiting(3, 1e-3, 0, _page("a"))[1]["visible"] is True
    with pytest.raises(gr.Error) as refused:  # an API caller gets both sentences in one message
        drain(tab.finetune(50, 5, 0))
    assert refused.value.title == "Bad settings" and "Epochs must" in refused.value.message
    assert "learning rate must" in refused.value.message and not animal_app.runner.busy


def test_cancel_shows_only_around_a_run(tiny_checkpoints, tmp_path):
    import app

    demo = app.build_demo(
        tiny_checkpoints["scratch"], tiny_checkpoints["transfer"], use_hub=False, finetune_root=tmp_path / "ft"
    )
    cancel = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "ft-cancel")
    assert cancel.visible is False and cancel.variant == "stop"
    events = {fn.api_name: fn for fn in demo.fns.values()}
    assert events["finetune"].validator == demo.animalcls_app.finetune_tab.validate_settings
    ended, failed = events["finetune_ended"], events["finetune_failed"]
    for after in (ended, failed):  # the run ended either way: Cancel hides again
        assert after.trigger_after == events["finetune"]._id and cancel in after.outputs
    assert ended.fn()["visible"] is False
    # After a refusal the status already says why; the bar's "Error" badge is cleared.
    bar = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "ft-progress")
    assert failed.outputs == [cancel, bar] and failed.fn() == (gr.update(visible=False), "")


def test_a_queued_run_says_it_waits_and_its_place(animal_app, monkeypatch):
    import animalcls.heads.finetune

    tab, started = animal_app.finetune_tab, threading.Event()
    monkeypatch.setattr(animalcls.heads.finetune, "finetune", blocking_finetune(started))
    running = tab.finetune(2, 1e-3, 0, None, _page("a"))
    next(running)
    assert started.wait(30)
    assert tab.finetune_waiting(1, 1e-3, 0, _page("a"))[0] == "**Starting…**"  # its own run: no queue
    second, _ = tab.finetune_waiting(1, 1e-3, 0, _page("b"))
    third, cancel = tab.finetune_waiting(1, 1e-3, 0, _page("c"))
    assert second.startswith("**Waiting in the queue** (next in line): another visitor's fine-tune is running")
    assert third.startswith("**Waiting in the queue** (number 2 in line)") and cancel["visible"] is True
    # Cancel while waiting: that visitor leaves the line; its turn ends at once, with nothing run.
    assert tab.cancel_finetune(_page("b")) == "**Cancelled:** your fine-tune left the queue; it will not run."
    assert tab.finetune_waiting(1, 1e-3, 0, _page("c"))[0].startswith("**Waiting in the queue** (next in line)")
    assert tab.cancel_finetune(_page("a")).startswith("**Cancelling")
    drain(running)
    turn = drain(tab.finetune(1, 1e-3, 0, None, _page("b")))
    assert [out[0] for out in turn] == ["**Cancelled** while waiting in the queue: nothing ran."]
    assert turn[0][6] is None and animal_app.runner.current.meta["owner"] == "a"  # b never ran


def test_a_reload_mid_run_says_what_became_of_the_run(animal_app, monkeypatch):
    import animalcls.heads.finetune

    tab, started = animal_app.finetune_tab, threading.Event()

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", finetune_saving_two_epochs(started))
    *nothing, token = tab.last_run(None, None, _page("first"))  # the page loads: a token for its browser
    assert nothing == [gr.skip()] * 4
    run = tab.finetune(3, 1e-3, 0, None, _page("first"))
    next(run)
    assert started.wait(30)
    animal_app.end_session(_page("first"))  # the page reloads: Gradio's unload stops its run
    status, name, use, mine, new_token = tab.last_run(token, None, _page("second"))
    assert status == (
        "**Your last fine-tune was cancelled when its page was closed or reloaded**; its 2 finished epoch(s) "
        f"were saved as **{name}**, yours in this session: press **Use this model** to classify with it."
    )
    assert use["interactive"] is True and mine["owned"] == [name] and new_token != token
    assert animal_app.sessions.folder_of(mine, name) is not None
    run.close()
    # A token the server never issued (the browser sends it: hostile until checked) says nothing.
    for junk in ("made-up", {"token": token}, 10**30, None):
        assert tab.last_run(junk, None, _page("third"))[:4] == (gr.skip(),) * 4


def test_a_run_stopped_before_its_first_epoch_says_nothing_was_saved():
    from animalcls.core.errors import Cancelled
    from animalcls.webapp.tabs.finetune_status import reload_status

    stopped = SimpleNamespace(running=False, error=Cancelled("stopped"), result=None)
    assert reload_status(stopped, None) == (
        "**Your last fine-tune was cancelled when its page was closed or reloaded**, before its first epoch: "
        "nothing was saved."
    )
    assert reload_status(SimpleNamespace(running=True), None).startswith("**Your last fine-tune is being cancelled**")


def test_the_bar_and_the_status_tell_the_same_moment(animal_app, monkeypatch):
    """The bar and the status update together: each status right after the bar's line of the same
    moment, never a curve drawing between them (the bar ran ahead: "epoch 2/2" over "starting")."""
    import animalcls.heads.finetune
    import animalcls.webapp.tabs.finetune as finetune_tab

    def two_epochs(checkpoint_dir, hooks=None, **_):
        for epoch in (1, 2):
            hooks.on_batch(epoch, 4, 4, {"loss": 1.0 / epoch})
            hooks.on_epoch(epoch, {"loss": [1.0, 0.5][:epoch]})
        return FakeResult(Path(checkpoint_dir), False, {"loss": [1.0, 0.5]})

    events: list[tuple[str, str]] = []
    monkeypatch.setattr(animalcls.heads.finetune, "finetune", two_epochs)
    monkeypatch.setattr(finetune_tab, "curves_figure", lambda history, title: events.append(("draw", "")) or None)
    progress = lambda fraction, desc=None: events.append(("bar", desc))  # noqa: E731 - gr.Progress's call
    for out in animal_app.finetune_tab.finetune(2, 1e-3, 0, None, None, progress):
        events.append(("status", out[0]))
    running = [i for i, (what, text) in enumerate(events) if what == "status" and "elapsed)" in text]
    assert running and ("draw", "") in events
    for i in running:
        assert events[i - 1][0] == "bar" and events[i][1].endswith(events[i - 1][1]), events[i - 1 : i + 1]


def test_the_live_curves_count_whole_epochs_after_one(animal_app):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from animalcls.webapp.tabs.finetune_status import curves_figure

    figure = curves_figure({"loss": [0.9], "val_loss": [0.7], "accuracy": [0.6], "val_accuracy": [0.7]}, "one epoch")
    FigureCanvasAgg(figure).draw()
    for axes in figure.axes:
        low, high = axes.get_xlim()
        shown = [tick.get_text() for tick in axes.get_xticklabels() if low <= tick.get_position()[0] <= high]
        assert shown == ["1"], shown  # before: 0.945, 0.960, ... 1.050


def test_every_refusal_of_the_app_has_a_plain_title():
    """No toast titled just "Error": every gr.Error the web app raises names what went wrong."""
    import ast

    from animalcls.webapp.inputs import user_error

    with pytest.raises(TypeError):
        user_error("No title")  # the title is not optional
    untitled = []
    for path in (REPO / "animalcls" / "webapp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("gr.Error", "Error"):
                if not any(keyword.arg == "title" for keyword in node.keywords):
                    untitled.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "user_error" and len(node.args) < 2:
                untitled.append(f"{path.name}:{node.lineno}")
    assert untitled == []
