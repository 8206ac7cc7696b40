"""The web app's handlers, called directly with the tiny checkpoints (no server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import gradio as gr
import pytest
from conftest import REPO, blocking_finetune, make_image
from PIL import Image

import app  # noqa: E402 - app.py lives at the repository root
from animalcls.webapp import layout as app_layout  # noqa: E402
from animalcls.webapp import views as app_views
from animalcls.webapp.handlers import AnimalApp, UnusableUpload  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Feature cache and fine-tune output inside the test's tmp_path; no Hub."""
    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    monkeypatch.setenv("ANIMALCLS_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("ANIMALCLS_HUB_REPO", raising=False)
    return tmp_path


@pytest.fixture
def animal_app(tiny_checkpoints, tmp_path: Path) -> AnimalApp:
    return AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        finetune_root=tmp_path / "finetunes",
        use_hub=False,
        examples_dir=tmp_path / "no-examples",
    )


@pytest.fixture
def test_photo(tiny_checkpoints) -> str:
    from animalcls.webapp.views import held_out_photos

    return held_out_photos([tiny_checkpoints["transfer"]])[0]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def drain(generator) -> list[tuple]:
    return list(generator)


# ---------------------------------------------------------------- building


def test_import_loads_no_model_no_tensorflow_and_no_gradio():
    code = (
        "import sys; import app; "
        "print(*(name in sys.modules for name in ('tensorflow', 'keras', 'gradio', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"] * 4


def test_a_bad_argument_stops_the_app_before_gradio_or_any_model_loads(tmp_path):
    code = (
        "import sys; import app\n"
        "try:\n    app.main(['--port', '7860', '--max-epochs', '0'])\n"
        "finally:\n    print(*(name in sys.modules for name in ('gradio', 'tensorflow', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stdout.split() == ["False"] * 3
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--max-epochs" in line


def test_build_demo_has_stable_api_names(tiny_checkpoints, tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    make_image(examples / "my-cat.jpg", (200, 40, 40))
    demo = app.build_demo(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        use_hub=False,
        finetune_root=tmp_path / "ft",
        examples_dir=examples,
    )
    assert isinstance(demo, gr.Blocks)
    names = {fn.api_name: fn for fn in demo.fns.values()}
    # Every event named explicitly: no auto-generated or de-duplicated ("_1") names.
    assert sorted(names) == sorted(app_layout.API_NAMES)
    public = sorted(name for name, fn in names.items() if fn.api_visibility == "public")
    assert public == [
        "cancel_finetune",
        "classify",
        "finetune",
        "model_info",
        "restore_models",
        "teach_add",
        "teach_classify",
        "teach_clear",
        "teach_train",
        "use_model",
    ]
    assert names["classify_test_example"].concurrency_id == names["classify"].concurrency_id
    # Classification never queues behind a fine-tune: separate concurrency groups; fine-tunes
    # run one at a time, the others wait in Gradio's queue (which shows their place).
    assert names["classify"].concurrency_id != names["finetune"].concurrency_id
    assert names["classify"].concurrency_limit == 2
    assert names["finetune"].concurrency_limit == 1
    assert names["cancel_finetune"].concurrency_limit is None
    assert not (REPO / "app.pyi").exists()  # no Component subclass: Gradio would write a stub file


def test_parse_args_flags_and_env(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9000")
    monkeypatch.setenv("ANIMALCLS_DATA", "/data/animals")
    args = app.parse_args([])
    assert (args.host, args.port, args.data) == ("0.0.0.0", 9000, "/data/animals")
    monkeypatch.setenv("ANIMALCLS_PORT", "9100")  # ANIMALCLS_* wins over GRADIO_*
    assert app.parse_args([]).port == 9100
    assert app.parse_args(["--port", "9200", "--host", "127.0.0.1"]).port == 9200


def _start_app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("ANIMALCLS_")},
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--no-hub", "--no-warm-up", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("variable, value", [("ANIMALCLS_PORT", "abc"), ("GRADIO_SERVER_PORT", "70000")])
def test_a_bad_port_setting_is_one_line(variable, value):
    run = _start_app(env={variable: value})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: argument --port: the port (--port, ANIMALCLS_PORT or GRADIO_SERVER_PORT) must be a number "
        f"from 1 to 65535, got '{value}'"
    ]


@pytest.mark.slow  # starts the app up to its launch (Gradio import, Blocks built)
def test_a_busy_port_is_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = _start_app(env={"ANIMALCLS_PORT": str(port)})
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port or "
        "ANIMALCLS_PORT, or --host)."
    ]


# ---------------------------------------------------------------- Classify tab


def test_classify_good_image(animal_app, test_photo):
    scratch_info, scratch_label, transfer_info, transfer_label, verdict, *_ = animal_app.classify(test_photo)
    assert "### scratch-tiny" in scratch_info and "scratch · tiny · 32 px" in scratch_info
    assert "### transfer-tiny" in transfer_info and "test accuracy" in transfer_info
    assert "Inference (forward pass)" in scratch_info and " ms" in transfer_info
    for label in (scratch_label, transfer_label):
        assert len(label) == 5 and abs(sum(label.values()) - 1) < 1e-3
    assert set(scratch_label) == set(transfer_label) == {"cat", "spider", "butterfly", "elephant", "chicken"}
    tops = [max(label, key=label.get) for label in (scratch_label, transfer_label)]
    expected = (
        f"**Both models agree: {tops[0]}.**"
        if tops[0] == tops[1]
        else f"**The models disagree:** scratch says **{tops[0]}**, transfer says **{tops[1]}**."
    )
    assert verdict.startswith(expected)  # "agree" alone would also match "disagree"
    # The comparison table lists every class once, in the same order for both models.
    rows = [
        line.split("|")[1].strip() for line in verdict.splitlines() if line.startswith("| ") and "class" not in line
    ]
    assert rows == ["cat", "spider", "butterfly", "elephant", "chicken"]


def test_classify_agreement_text():
    from animalcls.webapp.views import comparison_markdown

    transfer = ({"cat": 0.6, "dog": 0.4}, 0.01)
    same = comparison_markdown({"scratch": ({"cat": 0.9, "dog": 0.1}, 0.01), "transfer": transfer})
    assert same.startswith("**Both models agree: cat.**")
    differ = comparison_markdown({"scratch": ({"cat": 0.2, "dog": 0.8}, 0.01), "transfer": transfer})
    assert "disagree" in differ and "scratch says **dog**" in differ


@pytest.mark.parametrize("kind", ["text", "truncated", "huge_pixels", "huge_file", "empty"])
def test_classify_bad_upload_gives_clear_message(animal_app, tmp_path, kind):
    path = tmp_path / "upload.jpg"
    if kind == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not a photo")
        expected = "is not an image"
    elif kind == "truncated":
        make_image(tmp_path / "full.jpg", (200, 30, 30), size=400, seed=1)
        data = (tmp_path / "full.jpg").read_bytes()
        path.write_bytes(data[: len(data) // 2])
        expected = "corrupt or truncated"
    elif kind == "huge_pixels":
        path = tmp_path / "huge.png"
        Image.new("L", (8000, 6000)).save(path)  # 48 MP, a small file
        expected = "pixel"
    elif kind == "huge_file":
        with open(path, "wb") as handle:
            handle.truncate(51 * 2**20)
        expected = "larger than 50 MB"
    else:
        path.write_bytes(b"")
        expected = "upload.jpg is an empty file (0 bytes)"
    with pytest.raises(gr.Error) as error:
        animal_app.classify(str(path))
    assert expected in error.value.message
    assert error.value.title == "Not a usable image"
    # ...and the app keeps working.
    assert animal_app.classify(str(make_image(tmp_path / "ok.png", (30, 200, 30))))[1]


def test_classify_without_photo(animal_app):
    with pytest.raises(gr.Error, match="Upload a photo first"):
        animal_app.classify(None)


def test_image_input_passes_the_reason_for_a_non_image(tmp_path, monkeypatch):
    """Gradio's own preprocessing fails on a non-image before the handler; ours passes the reason on."""
    from gradio.data_classes import ImageData

    from animalcls.webapp.inputs import UploadedImage

    cache = tmp_path / "gradio-cache"  # the input reads only Gradio's upload folder
    cache.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    with gr.Blocks():
        image = UploadedImage(type="filepath", image_mode=None)
    bad = cache / "document.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    reason = image.preprocess(ImageData(path=str(bad), orig_name="document.pdf"))
    assert isinstance(reason, UnusableUpload) and "document.pdf is not an image" in reason
    good = make_image(cache / "ok.png", (10, 20, 30))
    assert image.preprocess(ImageData(path=str(good), orig_name="ok.png")) == os.path.realpath(good)


def test_an_unusable_upload_clears_the_photo_and_results_with_one_message(animal_app, test_photo):
    with pytest.raises(gr.Error, match="notes.txt is not an image"):  # the API's /classify: an error
        animal_app.classify(UnusableUpload("notes.txt is not an image"))
    photo, scratch_info, scratch_label, transfer_info, transfer_label, verdict, banner, *trust = (
        animal_app.classify_new(UnusableUpload("notes.txt is not an image"))
    )
    assert photo is None and scratch_label is None and transfer_label is None
    assert not banner and trust[0] is None  # no verdict; the heatmaps are hidden
    assert "scratch-tiny" in scratch_info and "Inference" not in scratch_info
    assert verdict == "**Not a usable image:** notes.txt is not an image"
    photo, *results = animal_app.classify_new(test_photo)
    assert photo == test_photo and results[1] and results[3]  # a good photo stays and is classified


class CountingLock:
    """A lock that counts how often it is taken, and calls `after_first` once it was."""

    def __init__(self, after_first) -> None:
        self.lock, self.count, self.after_first = threading.Lock(), 0, after_first

    def __enter__(self):
        self.lock.acquire()
        self.count += 1
        return self

    def __exit__(self, *exc):
        self.lock.release()
        if self.count == 1:
            self.after_first()


def test_classify_reads_the_model_registry_once(animal_app, tiny_checkpoints, test_photo):
    """A swap right after the request read the registry (here: the scratch model put on the
    transfer side) must not show up in that request's answer."""
    from animalcls.serving.inference import load_predictor

    registry = animal_app.registry
    registry._lock = CountingLock(lambda: registry._paths.update(transfer=tiny_checkpoints["scratch"]))
    _, _, transfer_info, transfer_label, *_ = animal_app.classify(test_photo)
    assert registry._lock.count == 1
    assert "transfer-tiny" in transfer_info and "swapped in" not in transfer_info
    expected = load_predictor(tiny_checkpoints["transfer"]).predict([test_photo])[0]
    assert transfer_label == pytest.approx(expected, abs=1e-5)
    assert registry.path("transfer") == tiny_checkpoints["scratch"]  # the swap did happen, after the read


def test_report_tables_hold_no_nan(animal_app):
    """The accuracy row has no precision/recall: empty cells, not a bare NaN in the JSON."""
    table = gr.Dataframe(headers=app_layout.REPORT_HEADERS)
    frames = [v for v in animal_app.model_views() if hasattr(v, "columns")]
    assert len(frames) == 2
    for frame in frames:
        payload = json.dumps(table.postprocess(frame).model_dump(), allow_nan=False)  # raises on NaN
        accuracy = next(row for row in frame.values.tolist() if row[0] == "accuracy")
        assert accuracy[1:3] == ["", ""] and "NaN" not in payload


def test_example_photos_come_from_the_test_split(animal_app, tiny_checkpoints, tmp_path):
    from animalcls.data.dataset import Split

    test_photos, user_photos = animal_app.example_photos()
    split = Split.load(tiny_checkpoints["transfer"] / "split.json")
    test_files = set(split.paths("test", split.locate_root(tiny_checkpoints["transfer"]))[0])
    assert test_photos and set(test_photos) <= test_files
    assert user_photos == []
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "README.md").write_text("no photos here")
    make_image(examples / "mine.jpg", (1, 2, 3))
    assert [Path(p).name for p in app_views.folder_photos(examples)] == ["mine.jpg"]


def test_only_shipped_examples_when_the_dataset_is_not_here(tiny_checkpoints, tmp_path):
    moved = tmp_path / "transfer-copy"
    shutil.copytree(tiny_checkpoints["transfer"], moved)
    split = json.loads((moved / "split.json").read_text())
    split.update(root=str(tmp_path / "gone"), root_relative="../gone")
    (moved / "split.json").write_text(json.dumps(split))
    animal_app = AnimalApp(None, moved, checkpoints_root=tmp_path / "none", use_hub=False)
    test_photos, shipped = animal_app.example_photos()
    assert test_photos == []  # no dataset here, but the photos shipped in examples/ still show
    assert {Path(p).name for p in shipped} >= {"cat-chelsea.jpg", "none-dog.jpg"}
    assert "no data" in animal_app.finetune_intro()
    with pytest.raises(gr.Error, match="No data to fine-tune on"):
        next(animal_app.finetune(1, 1e-3, 0))


# ---------------------------------------------------------------- missing checkpoints, Hub


def test_no_checkpoints_at_all(tmp_path):
    animal_app = AnimalApp(checkpoints_root=tmp_path / "empty", use_hub=False)
    assert any("No scratch checkpoint" in n for n in animal_app.notices)
    assert any("No transfer checkpoint" in n for n in animal_app.notices)
    assert isinstance(app_layout.build_layout(animal_app), gr.Blocks)
    views = animal_app.model_views()
    assert "No **scratch** checkpoint" in views[0] and "No **transfer** checkpoint" in views[1]
    with pytest.raises(gr.Error, match="No checkpoints are available"):
        animal_app.classify(str(make_image(tmp_path / "ok.png", (30, 200, 30))))
    assert "needs a transfer checkpoint" in animal_app.finetune_intro()


def test_one_side_missing(tiny_checkpoints, tmp_path):
    animal_app = AnimalApp(tiny_checkpoints["scratch"], None, checkpoints_root=tmp_path / "empty", use_hub=False)
    assert animal_app.notices == ["No transfer checkpoint found (looked in empty/): the transfer side is empty."]
    scratch_info, scratch_label, transfer_info, transfer_label, verdict, *_ = animal_app.classify(
        str(make_image(tmp_path / "ok.png", (30, 200, 30)))
    )
    assert scratch_label and transfer_label is None
    assert "No **transfer** checkpoint" in transfer_info
    assert verdict.startswith("Only the scratch model is available")


def test_bundled_defaults_and_hub_failure(tiny_checkpoints, tmp_path, monkeypatch):
    root = tmp_path / "bundled"  # a stand-in for checkpoints/ holding one checkpoint of each kind
    for kind in ("scratch", "transfer"):
        shutil.copytree(tiny_checkpoints[kind], root / f"{kind}-tiny")
    import animalcls.store.hub

    monkeypatch.setattr(
        animalcls.store.hub,
        "pull_app_checkpoints",
        lambda repo_id=None: ({}, "Could not load checkpoints from the Hub repo x/y (offline)."),
    )
    animal_app = AnimalApp(checkpoints_root=root, use_hub=True)
    assert animal_app.registry.paths() == {"scratch": root / "scratch-tiny", "transfer": root / "transfer-tiny"}
    assert animal_app.notices == ["Could not load checkpoints from the Hub repo x/y (offline)."]
    demo = app_layout.build_layout(animal_app)
    notice = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "notice")
    assert "x/y (offline)" in notice.value and notice.visible


def test_hub_checkpoints_are_used_when_pulled(tiny_checkpoints, tmp_path, monkeypatch):
    import animalcls.store.hub

    monkeypatch.setattr(
        animalcls.store.hub,
        "pull_app_checkpoints",
        lambda repo_id=None: ({"transfer": tiny_checkpoints["transfer"]}, None),
    )
    animal_app = AnimalApp(checkpoints_root=tmp_path / "empty", use_hub=True)
    assert animal_app.registry.path("transfer") == tiny_checkpoints["transfer"]
    assert animal_app.registry.path("scratch") is None


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


# ---------------------------------------------------------------- Fine-tune tab


def test_finetune_busy_lock_and_cancel(animal_app, monkeypatch):
    import animalcls.heads.finetune

    started = threading.Event()
    monkeypatch.setattr(animalcls.heads.finetune, "finetune", blocking_finetune(started))
    first = animal_app.finetune(2, 1e-3, 0)
    assert "starting" in next(first)[0]
    assert started.wait(30)
    with pytest.raises(gr.Error) as busy:
        next(animal_app.finetune(1, 1e-3, 0))
    assert "already running" in busy.value.message and busy.value.title == "Busy"
    assert "Cancelling" in animal_app.cancel_finetune()
    final = drain(first)[-1]
    assert final[0].startswith("**Cancelled**; kept the 1 finished epoch(s).")
    assert animal_app.cancel_finetune() == "No fine-tune of yours is running."
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
            next(animal_app.finetune(epochs, rate, unfreeze))


def test_finetune_failure_is_reported(animal_app, monkeypatch):
    import animalcls.heads.finetune
    from animalcls.core.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("12 image(s) of the recorded split are missing")

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", broken)
    with pytest.raises(gr.Error, match="The fine-tune failed: 12 image"):
        drain(animal_app.finetune(1, 1e-3, 0))
    assert not animal_app.runner.busy


def test_cancel_during_feature_extraction_saves_nothing(animal_app, monkeypatch):
    import animalcls.heads.finetune
    from animalcls.serving.features import FeatureExtractionCancelled

    def cancelled(*args, **kwargs):
        raise FeatureExtractionCancelled("Cancelled during feature extraction.")

    monkeypatch.setattr(animalcls.heads.finetune, "finetune", cancelled)
    final = drain(animal_app.finetune(1, 1e-3, 0))[-1]
    assert final[0].startswith("**Cancelled** while extracting backbone features")
    assert final[6] is None  # the result's name: none (a skip reaches API callers as {'__type__': 'update'})
    with pytest.raises(gr.Error, match="No fine-tuned model yet"):
        animal_app.use_model()


@pytest.mark.slow
def test_cancel_before_the_first_epoch_saves_nothing_and_offers_nothing(animal_app, tmp_path):
    """A real fine-tune with unfrozen layers, cancelled as it starts: nothing saved, the status
    says so, and "Use this model" stays off."""
    animal_app.max_unfreeze = 2  # the operator's --max-unfreeze
    run = animal_app.finetune(3, 1e-3, 2)
    next(run)
    assert animal_app.cancel_finetune().startswith("**Cancelling")
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
    updates = drain(animal_app.finetune(1, 1e-3, 0, None))
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
    assert name in animal_app.classify(test_photo, session=mine)[2]
    assert name not in animal_app.classify(test_photo, session=None)[2]  # a fresh visitor

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
    *_, name, _, mine = drain(shared.finetune(1, 1e-3, 0, None))[-1]
    message, *_ = shared.use_model(name, mine)
    assert "every visitor" in message and shared.registry.path("transfer").name == name
    assert name in shared.classify(test_photo, session=None)[2]  # a fresh visitor gets it too
    # Every header that visitor sees says so, as the answer's does.
    assert "swapped in" in shared.classify(test_photo, session=None)[2]
    assert "swapped in" in shared.header("transfer", None) and "swapped in" in shared.model_views(None)[1]
    shared.restore_models(None)
    assert "swapped in" not in shared.header("transfer", None)
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
        next(capped.finetune(5, 1e-3, 0))
    with pytest.raises(gr.Error, match="At most 0 backbone layers"):
        next(capped.finetune(2, 1e-3, 3))


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--max-epochs", "0"], {}, "--max-epochs, --max-finetunes and --max-finetune-mb must be at least 1"),
        (["--max-unfreeze", "-1"], {}, "--max-unfreeze at least 0"),
        ([], {"ANIMALCLS_MAX_FINETUNES": "many"}, "argument --max-finetunes: invalid int value: 'many'"),
    ],
)
def test_nonsense_operator_limits_are_one_line(args, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and message in lines[0]
