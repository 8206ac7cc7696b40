"""Folder prediction: discovery, streaming with bounded look-ahead, error rows, CSV/JSON lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i in range(5):
        make_image(root / f"red{i}.jpg", (220, 30, 30), size=40, seed=i)
    for i in range(3):
        make_image(root / "sub" / "deeper" / f"green{i}.PNG", (30, 220, 30), size=40, seed=10 + i)
    (root / "sub" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("not an image, not picked up")
    make_image(root / ".hidden" / "skip.jpg", (0, 0, 0), size=40)
    return root


def test_discover_walks_folders_and_keeps_explicit_files(photo_tree):
    from animalcls.serving.batch_predict import discover

    found = discover([photo_tree, photo_tree / "notes.txt"])
    names = [p.relative_to(photo_tree).as_posix() for p in found]
    assert names[:5] == [f"red{i}.jpg" for i in range(5)]
    assert set(names[5:]) == {
        "sub/broken.jpg",
        "sub/deeper/green0.PNG",
        "sub/deeper/green1.PNG",
        "sub/deeper/green2.PNG",
        "notes.txt",
    }  # explicit files always kept


def test_decoding_looks_ahead_a_bounded_number_of_images(photo_tree):
    from animalcls.serving.batch_predict import decoded

    pulled = []

    def paths():
        for i in range(40):
            pulled.append(i)
            yield photo_tree / "red0.jpg"

    for consumed, (_, arrays, error) in enumerate(decoded(paths(), (16, 8), workers=2, ahead=6), 1):
        assert error is None and [a.shape for a in arrays] == [(16, 16, 3), (8, 8, 3)]
        assert len(pulled) <= consumed + 6  # never more than `ahead` decoded beyond the consumer
    assert len(pulled) == 40


def test_stream_matches_predict_and_reports_bad_files(tiny_checkpoints, photo_tree):
    from animalcls.serving.batch_predict import discover, plain, predict_stream
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(tiny_checkpoints["scratch"])
    paths = discover([photo_tree])
    batches = list(predict_stream(plain(predictor.forward), paths, (predictor.image_size,), batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3]
    rows = [row for batch in batches for row in batch]
    assert [r.path for r in rows] == [str(p) for p in paths]
    broken = [r for r in rows if r.error]
    assert [Path(r.path).name for r in broken] == ["broken.jpg"] and "not an image" in broken[0].error
    for row in rows[:2] + rows[-2:]:
        if row.error is None:
            expected = predictor.predict([row.path])[0]
            np.testing.assert_allclose(row.probabilities, list(expected.values()), atol=1e-6)


def test_cli_folder_to_csv_file(tiny_checkpoints, photo_tree, tmp_path, capsys):
    from animalcls.cli.main import main

    out = tmp_path / "rows.csv"
    code = main(
        ["predict", str(tiny_checkpoints["scratch"]), str(photo_tree), "--output", str(out), "--batch-size", "4"]
    )
    assert code == 0
    assert "Wrote 9 rows" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and list(rows[0])[:2] == ["path", "label"]
    assert list(rows[0])[-3:] == ["out_of_scope", "scope_score", "error"]
    assert {(row["out_of_scope"], row["scope_score"]) for row in rows} == {("", "")}  # the tiny model has no detector
    classes = ["cat", "spider", "butterfly", "elephant", "chicken"]
    for row in rows:
        if row["error"]:
            assert row["label"] == "" and Path(row["path"]).name == "broken.jpg"
        else:
            probabilities = [float(row[c]) for c in classes]
            assert abs(sum(probabilities) - 1) < 1e-4 and row["label"] == classes[int(np.argmax(probabilities))]
    assert not list(tmp_path.glob(".rows.csv.*"))  # no temp file left behind


def test_cli_jsonl_to_stdout_for_explicit_files(tiny_checkpoints, photo_tree, capsys):
    from animalcls.cli.main import main

    code = main(
        [
            "predict",
            str(tiny_checkpoints["scratch"]),
            str(photo_tree / "red0.jpg"),
            str(photo_tree / "sub" / "broken.jpg"),
            "--format",
            "jsonl",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert set(first) == {"path", "label", "probabilities", "out_of_scope", "scope_score"}
    assert len(first["probabilities"]) == 5 and first["out_of_scope"] is None  # the tiny model has no detector
    assert set(second) == {"path", "error"}


@pytest.mark.parametrize(
    "extra, message",
    [(["--batch-size", "0"], "--batch-size must be at least 1"), (["--json"], "use --format jsonl")],
)
def test_cli_folder_argument_errors(tiny_checkpoints, photo_tree, capsys, extra, message):
    from animalcls.cli.main import main

    code = main(["predict", str(tiny_checkpoints["scratch"]), str(photo_tree), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


def test_cli_missing_input_is_an_error(tiny_checkpoints, tmp_path, capsys):
    from animalcls.cli.main import main

    code = main(["predict", str(tiny_checkpoints["scratch"]), str(tmp_path / "nowhere"), "--format", "csv"])
    assert code == 2 and "No such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["transfer", "scratch"])
def test_folder_rows_carry_the_same_verdict_as_predict_json(kind, tmp_path, capsys):
    """The bundled checkpoints have scope detectors (the scratch one needs ImageNet features at
    224 px besides its own 128 px input): each row says what `predict --json` says."""
    import shutil

    from conftest import REPO

    from animalcls.cli.main import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat-chelsea.jpg", "elephant-african.jpg", "none-dog.jpg", "none-koala.jpg"):
        shutil.copy(REPO / "examples" / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    images = sorted(str(p) for p in photos.iterdir() if p.name != "broken.jpg")
    assert main(["predict", kind, *images, "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["predict", kind, str(photos), "--output", str(tmp_path / "rows.csv"), "--batch-size", "3"]) == 0
    rows = {row["path"]: row for row in csv.DictReader((tmp_path / "rows.csv").open())}
    assert rows[str(photos / "broken.jpg")]["out_of_scope"] == "" and rows[str(photos / "broken.jpg")]["error"]
    for image in images:
        assert rows[image]["out_of_scope"] == str(expected[image]["out_of_scope"]).lower()
        assert float(rows[image]["scope_score"]) == pytest.approx(expected[image]["scope_score"], abs=1e-4)
    assert rows[str(photos / "none-dog.jpg")]["out_of_scope"] == "true"
    assert rows[str(photos / "cat-chelsea.jpg")]["out_of_scope"] == "false"
