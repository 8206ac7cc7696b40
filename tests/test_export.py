"""`python -m animalcls export`: ONNX, SavedModel and TFLite folders that match Keras and
whose README code runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from animalcls.serving.export import FORMATS, TOLERANCE, export_checkpoint, load_export
from animalcls.store import checkpoints

REPO = Path(__file__).resolve().parents[1]


def keras_probabilities(folder: Path, batch: np.ndarray) -> np.ndarray:
    return np.asarray(checkpoints.load_checkpoint(folder).model(batch, training=False))


def readme_code(export_dir: Path) -> str:
    return re.search(r"```python\n(.*?)```", (export_dir / "README.md").read_text(), re.S).group(1)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_export_matches_keras_and_its_readme_code_runs(tiny_checkpoints, tmp_path, fmt):
    from conftest import make_image

    source = tiny_checkpoints["transfer"]
    out, delta = export_checkpoint(source, fmt, tmp_path / "export")
    assert delta <= TOLERANCE[fmt]
    assert (out / "labels.txt").read_text().split() == checkpoints.read_manifest(source)["class_names"]
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left

    batch = np.random.default_rng(2).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    got = load_export(out, fmt)(batch)
    assert np.abs(got["probabilities"] - keras_probabilities(source, batch)).max() <= TOLERANCE[fmt]
    assert got["feature_map"].shape == (5, 8, 8, 16) and got["pooled"].shape == (5, 16)

    readme = (out / "README.md").read_text()
    assert "(N, 32, 32, 3)" in readme and "0 cat, 1 spider, 2 butterfly, 3 elephant, 4 chicken" in readme
    make_image(out / "photo.jpg", (220, 40, 40), size=48)  # the photo the README's code opens
    run = subprocess.run([sys.executable, "-c", readme_code(out)], cwd=out, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"\(np\.float32\([0-9.e-]+\), '(cat|spider|butterfly|elephant|chicken)'\)", run.stdout)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom animalcls.cli.main import main\n"
        f"status = main({list(args)!r})\nprint(status, 'tensorflow' in sys.modules)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


def test_export_refuses_an_existing_folder_before_importing_tensorflow(tiny_checkpoints, tmp_path):
    (tmp_path / "taken").mkdir()
    result = run_cli("export", str(tiny_checkpoints["scratch"]), "--format", "onnx", "--out", str(tmp_path / "taken"))
    assert result.stdout.split() == ["2", "False"]
    assert result.stderr.strip() == f"error: {tmp_path / 'taken'} already exists; choose a new --out folder."
    missing = run_cli("export", str(tmp_path / "nothing"), "--format", "onnx", "--out", str(tmp_path / "new"))
    assert missing.stdout.split() == ["2", "False"] and "not found" in missing.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_bundled_scratch_tflite_export_matches_keras_on_real_photos(shared_raw, tmp_path):
    """TFLite is the one lossy format; ONNX's real-photo parity is in test_onnx.py."""
    from animalcls.data import dataset as data
    from animalcls.serving.inference import load_image, to_model_input

    folder = checkpoints.default_pair().get("scratch")
    if folder is None:
        pytest.skip("no bundled scratch checkpoint")
    out, _ = export_checkpoint(folder, "tflite", tmp_path / "tflite")
    paths, _ = data.Split.load(folder / checkpoints.SPLIT_FILE).paths("test", shared_raw)
    batch = np.stack([to_model_input(load_image(path), 128) for path in paths[::75]])  # 8 photos
    got = load_export(out, "tflite")(batch)["probabilities"]
    assert np.abs(got - keras_probabilities(folder, batch)).max() <= TOLERANCE["tflite"]
