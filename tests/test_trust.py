"""When to trust an answer: predict's verdicts (CLI), evaluate's rejection rate, the Classify
banner and heatmaps, and the Training tab's photos behind each confusion-matrix cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, copy_checkpoint, make_image
from PIL import Image

FIVE = ["cat", "spider", "butterfly", "elephant", "chicken"]
PURPLE = (128, 0, 128)  # a colour none of the tiny models' classes has


@pytest.fixture(scope="module")
def scoped(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Copies of the tiny checkpoints with scope files fitted by the builder on tmp photos:
    purple squares and the dataset's `cane` photos are out of scope."""
    from animalcls.data.dataset import Split
    from animalcls.trust.scope_build import build_scope

    root = tmp_path_factory.mktemp("scoped")
    out_dir, cross_dir = root / "out", root / "cross"
    out_dir.mkdir()
    cross_dir.mkdir()
    split = Split.load(tiny_checkpoints["scratch"] / "split.json")
    out = [str(make_image(out_dir / f"{i}.png", PURPLE, seed=9000 + i)) for i in range(10)]
    out += sorted(str(p) for p in (split.locate_root(tiny_checkpoints["scratch"]) / "cane").iterdir())
    cross = [str(make_image(cross_dir / f"{i}.png", (220, 40, 40), seed=7000 + i)) for i in range(6)]
    folders = {}
    for kind, source in tiny_checkpoints.items():
        folders[kind] = root / source.name
        copy_checkpoint(source, folders[kind])
        build_scope(folders[kind], out, cross, method="combined", imagenet=False)
    return folders


@pytest.fixture
def photos(tmp_path) -> dict[str, str]:
    return {
        "purple": str(make_image(tmp_path / "purple.png", PURPLE, seed=123)),
        "red": str(make_image(tmp_path / "red.png", (220, 40, 40), seed=321)),
    }


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from animalcls.cli.main import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_predict_json_has_the_verdict_per_image(scoped, photos, capsys) -> None:
    status, out, err = _run_cli(capsys, "predict", str(scoped["scratch"]), photos["purple"], photos["red"], "--json")
    assert status == 0, err
    result = json.loads(out)
    assert list(result) == [photos["purple"], photos["red"]]
    for value in result.values():
        assert set(value) == {"probabilities", "label", "out_of_scope", "scope_score"}
        assert set(value["probabilities"]) == set(FIVE)
        assert value["label"] == max(value["probabilities"], key=value["probabilities"].get)
        assert isinstance(value["out_of_scope"], bool) and isinstance(value["scope_score"], float)
    threshold = json.loads((scoped["scratch"] / "scope.json").read_text())["threshold"]
    assert result[photos["purple"]]["out_of_scope"] and result[photos["purple"]]["scope_score"] > threshold
    assert not result[photos["red"]]["out_of_scope"] and result[photos["red"]]["scope_score"] <= threshold


def test_predict_text_says_probably_none_of_the_classes(scoped, photos, capsys) -> None:
    status, out, _ = _run_cli(capsys, "predict", str(scoped["transfer"]), photos["purple"], photos["red"])
    assert status == 0
    purple, red = out.split(photos["red"])
    assert "probably none of: cat, spider, butterfly, elephant, chicken" in purple
    assert "probably none of" not in red


def test_predict_without_scope_files_says_so_once_and_gives_nulls(tiny_checkpoints, photos, capsys) -> None:
    status, out, err = _run_cli(
        capsys, "predict", str(tiny_checkpoints["scratch"]), photos["purple"], photos["red"], "--json"
    )
    assert status == 0
    assert err.count("has no scope.json") == 1
    for value in json.loads(out).values():
        assert value["out_of_scope"] is None and value["scope_score"] is None
        assert set(value["probabilities"]) == set(FIVE)


def test_evaluate_reports_the_rejection_rate(scoped, tmp_path, capsys) -> None:
    report = tmp_path / "report.json"
    status, out, err = _run_cli(capsys, "evaluate", str(scoped["transfer"]), "--json", str(report))
    assert status == 0, err
    rejection = json.loads(report.read_text())["out_of_scope"]
    test_size = len(json.loads((scoped["transfer"] / "split.json").read_text())["test"])
    assert rejection["n"] == test_size and 0 <= rejection["flagged"] <= test_size
    assert rejection["rate"] == pytest.approx(rejection["flagged"] / test_size)
    assert f"{rejection['flagged']} of {test_size} photos" in out and "Rejection rate" in out


def test_heatmaps_come_from_the_same_pass_as_the_answer(scoped, photos) -> None:
    from animalcls.serving.inference import load_image
    from animalcls.trust import verdicts as trust
    from animalcls.trust.explain import explain

    judge = trust.judge_for(scoped["transfer"])
    answer = trust.answer_all([judge], [load_image(photos["red"])], heatmaps=True)[0][0]
    reference = explain(photos["red"], judge.predictor)[0]
    assert answer.label == reference.label
    np.testing.assert_allclose(answer.heatmap, reference.heatmap, atol=1e-6)
    assert answer.heatmap.sum() == pytest.approx(1.0)
    assert trust.answer_all([judge], [load_image(photos["red"])])[0][0].heatmap is None


# ------------------------------------------------------------------------------------ app


def _demo(scratch: Path, transfer: Path, tmp_path: Path):
    import app

    return app.build_demo(
        scratch, transfer, use_hub=False, finetune_root=tmp_path / "ft", examples_dir=tmp_path / "examples"
    ).animalcls_app


def test_classify_heatmap_toggle(scoped, photos, tmp_path) -> None:
    handlers = _demo(scoped["scratch"], scoped["transfer"], tmp_path)
    off = handlers.classify_tab.classify(photos["red"], False)
    assert len(off) == 9 and off[5] == ""  # no banner for an in-scope photo
    assert all(update["visible"] is False and update["value"] is None for update in off[7:])
    on = handlers.classify_tab.classify(photos["red"], True)
    assert on[1] == off[1] and on[3] == off[3]  # the same answers
    for kind, update in zip(("scratch", "transfer"), on[7:]):
        assert update["visible"] is True and kind in update["label"].lower()
        with Image.open(update["value"]) as overlay:
            assert overlay.size == (24, 24)  # the photo's size: the overlay is blended over it
    assert on[7]["value"] != on[8]["value"]
    again = handlers.classify_tab.classify(photos["red"], True)
    assert again[7]["value"] != on[7]["value"]  # a new file per request: nothing shared between requests


def test_classify_banner_and_api_verdict_on_an_out_of_scope_photo(scoped, photos, tmp_path) -> None:
    handlers = _demo(scoped["scratch"], scoped["transfer"], tmp_path)
    out = handlers.classify_tab.classify(photos["purple"], False)
    banner, verdict = out[5], out[6]
    assert "may show none of the five animals" in banner and "cat, spider, butterfly, elephant, chicken" in banner
    assert verdict["out_of_scope"] is True
    assert verdict["transfer"]["out_of_scope"] is True and set(verdict["transfer"]["probabilities"]) == set(FIVE)
    assert "side-flagged" in out[2] and out[3]  # the probabilities are still shown, marked (and dimmed)
    assert "scope score" not in banner and "<details>" in banner  # the scores behind a toggle
    assert "five animals: cat, spider, butterfly, elephant, chicken" in handlers.classify_tab.known_classes()


def _select(view, kind: str, row: int, col: int):
    import gradio as gr

    event = gr.SelectData(None, {"index": [row, col], "value": None, "selected": True})
    return view.select(kind)(event, None)


def test_a_confusion_cell_shows_exactly_its_test_photos(scoped, tmp_path, monkeypatch) -> None:
    from animalcls.trust.cells import split_predictions

    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "cache"))
    handlers = _demo(scoped["scratch"], scoped["transfer"], tmp_path)
    intro, scratch_table, _ = handlers.cells.tables()
    assert "Click a cell" in intro
    evaluation = json.loads((scoped["scratch"] / "eval.json").read_text())
    matrix = evaluation["confusion_matrix"]
    assert scratch_table.iloc[:, 1:].values.tolist() == matrix
    predictions = split_predictions(scoped["scratch"])
    assert predictions.confusion() == matrix  # decoded and predicted as evaluate did
    for true in range(5):
        for predicted in range(5):
            caption, gallery = _select(handlers.cells, "scratch", true, predicted + 1)
            assert len(gallery) == matrix[true][predicted], caption
            assert caption.startswith(f"{matrix[true][predicted]} test photos")
            for _, text in gallery:
                assert text.startswith(f"true {FIVE[true]} · scratch {FIVE[predicted]}") and "transfer" in text
    caption, gallery = _select(handlers.cells, "transfer", 2, 0)  # the class name: the whole row
    assert len(gallery) == sum(evaluation["confusion_matrix"][2]) and all(Path(p).is_file() for p, _ in gallery)


def test_the_disagree_view_lists_the_photos_where_the_models_differ(scoped, tmp_path) -> None:
    from animalcls.trust.cells import split_predictions

    handlers = _demo(scoped["scratch"], scoped["transfer"], tmp_path)
    caption, gallery = handlers.cells.disagree(None)
    scratch, transfer = split_predictions(scoped["scratch"]), split_predictions(scoped["transfer"])
    differ = [i for i in range(len(scratch.files)) if scratch.predicted[i] != transfer.predicted[i]]
    assert f"disagree on **{len(differ)}** of {len(scratch.files)}" in caption
    assert len(gallery) == len(differ)
    for _, text in gallery:
        said = dict(part.split(" ")[:2] for part in text.split(" · ")[1:])
        assert said["scratch"] != said["transfer"]


def test_without_the_dataset_the_tab_says_so_and_shows_counts(scoped, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "cache"))
    moved = {}
    for kind, source in scoped.items():
        moved[kind] = tmp_path / "space" / source.name
        shutil.copytree(source, moved[kind])
        split = json.loads((moved[kind] / "split.json").read_text())
        split.update(root=str(tmp_path / "nowhere"), root_relative=None)
        (moved[kind] / "split.json").write_text(json.dumps(split))
    handlers = _demo(moved["scratch"], moved["transfer"], tmp_path)
    intro, scratch_table, transfer_table = handlers.cells.tables()
    assert "not on this machine" in intro and "counts only" in intro
    matrix = json.loads((moved["scratch"] / "eval.json").read_text())["confusion_matrix"]
    assert scratch_table.iloc[:, 1:].values.tolist() == matrix
    caption, gallery = _select(handlers.cells, "scratch", 0, 1)
    assert gallery == [] and caption.startswith(f"{matrix[0][0]} test photos") and "not on this machine" in caption
    assert "not on this machine" in handlers.cells.disagree(None)[0]


@pytest.mark.slow
def test_bundled_app_banner_on_noise_and_a_dog_not_on_a_cat(tmp_path) -> None:
    from animalcls.store import checkpoints

    pair = checkpoints.default_pair()
    handlers = _demo(pair["scratch"], pair["transfer"], tmp_path)
    noise = tmp_path / "noise.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise)
    for photo, flagged in (
        (noise, True),
        (REPO / "examples" / "none-dog.jpg", True),
        (REPO / "examples" / "cat-chelsea.jpg", False),
    ):
        out = handlers.classify_tab.classify(str(photo), False)
        assert bool(out[5]) is flagged and out[6]["out_of_scope"] is flagged, photo
        assert ("side-flagged" in out[0]) is flagged and out[1]  # probabilities still shown, dimmed


# ------------------------------------------------------------------------------ browser


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.filterwarnings("ignore:::gradio.queueing")
def test_banner_heatmaps_and_cell_view_in_chromium(scoped, photos, tmp_path, monkeypatch, shots) -> None:
    import re

    from conftest import BROWSER_TIMEOUT_MS, CHROMIUM, CHROMIUM_ARGS, launched_app

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    matrix = json.loads((scoped["scratch"] / "eval.json").read_text())["confusion_matrix"]
    with launched_app(scoped, tmp_path) as (url, _), playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        page.goto(url)
        page.locator("#known-classes").get_by_text("cat, spider, butterfly, elephant, chicken").wait_for()
        page.locator("#classify-image input[type=file]").set_input_files(photos["purple"])
        page.locator("#scope-banner").get_by_text(re.compile("may show none of the five")).wait_for()
        assert page.locator("#heatmap-transfer img").count() == 0  # the toggle is off
        page.locator("#heatmap-toggle input").check()
        for kind in ("scratch", "transfer"):
            page.locator(f"#heatmap-{kind} img").first.wait_for(state="visible")
        page.screenshot(path=str(shots / "trust-banner-heatmaps.png"), full_page=True)
        page.locator("#classify-image input[type=file]").set_input_files(photos["red"])
        # In scope: the banner and the warnings go (the verdict's "agree" was there already).
        page.wait_for_function(
            "() => !document.querySelector('#info-transfer').innerText.includes('trusted')"
            " && document.querySelector('#verdict').innerText.includes('agree')"
        )
        assert page.locator("#scope-banner").inner_text().strip() == ""
        page.get_by_role("tab", name="Training").click()
        count, true, predicted = max((n, t, p) for t, row in enumerate(matrix) for p, n in enumerate(row))
        page.locator(f"#cells-scratch [data-testid=cell-{true}-{predicted + 1}]").click()  # the fullest cell
        page.locator("#cells-caption").get_by_text(re.compile(f"{count} test photos")).wait_for()
        page.locator("#cells-gallery img").first.wait_for(state="visible")
        assert page.locator("#cells-gallery img").count() >= 1
        page.screenshot(path=str(shots / "trust-cell.png"), full_page=True)
        browser.close()
