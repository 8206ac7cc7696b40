"""The web app's Classify tab: handlers called directly with the tiny checkpoints (no server)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import gradio as gr
import pytest
from conftest import drain, make_image
from PIL import Image

from animalcls.training.reports import REPORT_HEADERS
from animalcls.webapp import views as app_views
from animalcls.webapp.handlers import AnimalApp
from animalcls.webapp.inputs import UnusableUpload

pytestmark = [pytest.mark.filterwarnings("ignore:::gradio.queueing"), pytest.mark.usefixtures("isolated_dirs")]


# ---------------------------------------------------------------- Classify tab


def test_classify_good_image(animal_app, test_photo):
    scratch_info, scratch_label, transfer_info, transfer_label, verdict, *_ = animal_app.classify_tab.classify(
        test_photo
    )
    # Plain-words titles; the technical facts one click away (a <details>).
    assert scratch_info.startswith("### Trained from scratch") and "scratch-tiny · tiny · 32 px" in scratch_info
    assert "### Transfer learning (ImageNet)" in transfer_info and "<details" in transfer_info
    assert "transfer-tiny" in transfer_info and "test accuracy" in transfer_info
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
        animal_app.classify_tab.classify(str(path))
    assert expected in error.value.message
    assert error.value.title == "Not a usable image"
    # ...and the app keeps working.
    assert animal_app.classify_tab.classify(str(make_image(tmp_path / "ok.png", (30, 200, 30))))[1]


def test_classify_without_photo(animal_app):
    with pytest.raises(gr.Error, match="Upload a photo first"):
        animal_app.classify_tab.classify(None)


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
        animal_app.classify_tab.classify(UnusableUpload("notes.txt is not an image"))
    photo, scratch_info, scratch_label, transfer_info, transfer_label, verdict, banner, *trust = (
        animal_app.classify_tab.classify_new(UnusableUpload("notes.txt is not an image"))
    )
    assert photo is None and scratch_label is None and transfer_label is None
    assert not banner and trust[0] is None  # no verdict; the heatmaps are hidden
    assert "scratch-tiny" in scratch_info and "Inference" not in scratch_info
    assert verdict == "**Not a usable image:** notes.txt is not an image"
    photo, *results = animal_app.classify_tab.classify_new(test_photo)
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
    _, _, transfer_info, transfer_label, *_ = animal_app.classify_tab.classify(test_photo)
    assert registry._lock.count == 1
    assert "transfer-tiny" in transfer_info and "swapped in" not in transfer_info
    expected = load_predictor(tiny_checkpoints["transfer"]).predict([test_photo])[0]
    assert transfer_label == pytest.approx(expected, abs=1e-5)
    assert registry.path("transfer") == tiny_checkpoints["scratch"]  # the swap did happen, after the read


def test_report_tables_hold_no_nan(animal_app):
    """The accuracy row has no precision/recall: empty cells, not a bare NaN in the JSON."""
    table = gr.Dataframe(headers=REPORT_HEADERS)
    frames = [v for v in animal_app.model_views() if hasattr(v, "columns")]
    assert len(frames) == 2
    for frame in frames:
        payload = json.dumps(table.postprocess(frame).model_dump(), allow_nan=False)  # raises on NaN
        accuracy = next(row for row in frame.values.tolist() if row[0] == "accuracy")
        assert accuracy[1:3] == ["", ""] and "NaN" not in payload


def test_example_photos_come_from_the_test_split(animal_app, tiny_checkpoints, tmp_path):
    from animalcls.data.dataset import Split

    test_photos, user_photos = animal_app.classify_tab.example_photos()
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
    test_photos, shipped = animal_app.classify_tab.example_photos()
    assert test_photos == []  # no dataset here, but the photos shipped in examples/ still show
    assert {Path(p).name for p in shipped} >= {"cat-chelsea.jpg", "none-dog.jpg"}
    assert "no data" in animal_app.finetune_tab.finetune_intro()
    with pytest.raises(gr.Error, match="No data to fine-tune on"):
        drain(animal_app.finetune_tab.finetune(1, 1e-3, 0))
