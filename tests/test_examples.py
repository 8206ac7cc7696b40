"""The example photos that ship in examples/: each is credited, decodes with the app's own loader,
stays small, and is named after the answer to expect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from animalcls.core.labels import DEFAULT_CLASSES
from animalcls.serving.inference import IMAGE_SUFFIXES, load_image
from animalcls.webapp import views

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAX_SIDE = 640
MIN_SIDE = 224
MAX_FILE_BYTES = 100 * 1024
MAX_FOLDER_BYTES = 1536 * 1024


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES - {".tif", ".tiff"})


def credited_names(credits: Path) -> set[str]:
    """File names in the first cell of the table rows of CREDITS.md (`| \\`name.jpg\\` | ...`)."""
    text = credits.read_text(encoding="utf-8") if credits.is_file() else ""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", text, flags=re.MULTILINE))


def uncredited(folder: Path) -> list[str]:
    names = credited_names(folder / "CREDITS.md")
    return [p.name for p in image_files(folder) if p.name not in names]


def test_examples_are_shipped():
    assert len(image_files(EXAMPLES)) >= 10


def test_every_example_has_a_credit_line():
    assert uncredited(EXAMPLES) == [], "add a row for each of these to examples/CREDITS.md"


def test_no_credit_line_for_a_missing_file():
    present = {p.name for p in image_files(EXAMPLES)}
    assert credited_names(EXAMPLES / "CREDITS.md") - present == set()


def test_the_credit_check_catches_an_uncredited_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "cat-a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat-b.png")
    (tmp_path / "CREDITS.md").write_text(
        "| File | Licence |\n| --- | --- |\n| `cat-a.jpg` | CC0 |\ncat-b.png is only mentioned in prose\n"
    )
    assert uncredited(tmp_path) == ["cat-b.png"]


@pytest.mark.parametrize("path", image_files(EXAMPLES), ids=lambda p: p.name)
def test_example_decodes_and_is_small(path):
    image = load_image(path)
    assert image.mode == "RGB"
    assert max(image.size) <= MAX_SIDE and min(image.size) >= MIN_SIDE  # a readable heatmap at the models' input
    assert path.stat().st_size <= MAX_FILE_BYTES


def test_examples_folder_within_budget():
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.is_file()) <= MAX_FOLDER_BYTES


def test_each_example_is_named_after_its_answer():
    answers = {views.example_caption(p).split(" (")[0] for p in image_files(EXAMPLES)}
    assert answers <= set(DEFAULT_CLASSES) | {"none of the five"}
    assert "none of the five" in answers


def test_folder_examples_lists_paths_with_captions(tmp_path):
    for name in ("none-dog.jpg", "cat-chelsea.png", "butterfly.webp"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "CREDITS.md").write_text("not an image")
    assert [(Path(p).name, caption) for p, caption in views.folder_examples(tmp_path)] == [
        ("butterfly.webp", "butterfly"),
        ("cat-chelsea.png", "cat (chelsea)"),
        ("none-dog.jpg", "none of the five (dog)"),
    ]
    assert views.folder_examples(tmp_path / "absent") == []
