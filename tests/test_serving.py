"""Which engine serves predictions: ONNX Runtime when installed (never importing TensorFlow),
TensorFlow when asked or when no ONNX graph can be had; both give the same answers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_image

from animalcls.serving import inference
from animalcls.store import checkpoints, onnx_store

HEAVY = ("tensorflow", "keras", "tf2onnx")


def imported_modules(stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_predict_as_a_process_runs_through_onnx_without_importing_tensorflow(tmp_path):
    pair = checkpoints.default_pair()
    if "transfer" not in pair:
        pytest.skip("no bundled transfer checkpoint")
    photo = make_image(tmp_path / "photo.jpg", (200, 120, 60), size=96)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ANIMALCLS_ENGINE", None)
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "animalcls", "predict", "transfer", str(photo), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    modules = imported_modules(run.stderr)
    assert "onnxruntime" in modules and "animalcls" in modules
    assert not modules & set(HEAVY)
    result = json.loads(run.stdout)[str(photo)]["probabilities"]
    assert sorted(result) == sorted(checkpoints.read_manifest(pair["transfer"])["class_names"])
    assert abs(sum(result.values()) - 1) < 1e-4


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_onnx_and_tensorflow_predictors_agree(tiny_checkpoints, tmp_path):
    folder = copy_of(tiny_checkpoints["transfer"], tmp_path)
    (folder / onnx_store.ONNX_FILE).unlink()  # built again on first use, next to model.keras
    photos = [
        make_image(tmp_path / f"{i}.png", colour, size=40, seed=i)
        for i, colour in enumerate([(220, 40, 40), (40, 40, 220), (40, 220, 220)])
    ]
    via_onnx = inference.load_predictor(folder, "onnx")
    via_tf = inference.load_predictor(folder, "tf")
    assert (via_onnx.engine, via_tf.engine) == ("onnx", "tf")
    assert via_onnx.checkpoint.model is None  # the Keras model was never loaded
    assert via_onnx.onnx.path == folder / onnx_store.ONNX_FILE
    got = np.array([list(p.values()) for p in via_onnx.predict(photos)])
    expected = np.array([list(p.values()) for p in via_tf.predict(photos)])
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.slow
def test_evaluate_gives_the_same_report_on_both_engines(tiny_checkpoints):
    from animalcls.training import workflows

    folder = tiny_checkpoints["scratch"]
    via_onnx = workflows.evaluate_checkpoint(folder, engine="onnx")
    via_tf = workflows.evaluate_checkpoint(folder, engine="tf")
    assert via_onnx["n"] == via_tf["n"] > 0
    assert via_onnx["confusion_matrix"] == via_tf["confusion_matrix"]


def test_a_model_onnx_cannot_serve_falls_back_to_tensorflow(tmp_path, caplog):
    import keras

    caplog.set_level(logging.INFO, logger="animalcls")

    inputs = keras.Input((16, 16, 3), name="image")
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(keras.layers.Flatten()(inputs))
    manifest = {
        "name": "flat",
        "kind": "scratch",
        "backbone": "tiny",
        "image_size": 16,
        "class_names": ["cat", "spider", "butterfly"],
    }
    folder = checkpoints.save_checkpoint(tmp_path / "flat", keras.Model(inputs, outputs), manifest)
    predictor = inference.load_predictor(folder)  # auto: no pooling layer, so no serving graph
    assert predictor.engine == "tf"
    assert "flat is served through TensorFlow" in caplog.text
    assert len(predictor.predict([np.zeros((16, 16, 3), np.uint8)])[0]) == 3
    with pytest.raises(checkpoints.CheckpointError, match="avg_pool"):
        inference.load_predictor(folder, "onnx")


def test_an_unknown_engine_is_one_error_line_before_any_work(monkeypatch, capsys):
    from animalcls.cli.main import main

    monkeypatch.setenv("ANIMALCLS_ENGINE", "gpu")
    assert main(["predict", "transfer", "nothing.jpg"]) == 2
    assert capsys.readouterr().err.strip() == "error: Unknown inference engine 'gpu': choose one of auto, onnx, tf."


@pytest.mark.slow
def test_the_apps_classify_path_imports_no_tensorflow(tmp_path):
    pair = checkpoints.default_pair()
    if len(pair) < 2:
        pytest.skip("no bundled pair")
    photo = make_image(tmp_path / "photo.jpg", (90, 90, 200), size=64)
    code = (
        "import sys\n"
        "from animalcls.webapp.handlers import AnimalApp\n"
        f"demo = AnimalApp({str(pair['scratch'])!r}, {str(pair['transfer'])!r}, use_hub=False)\n"
        "demo.registry.warm_up()\n"
        f"outputs = demo.classify_tab.classify({str(photo)!r})\n"
        "print(sorted(outputs[1]), sorted(outputs[3]))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("ANIMALCLS_ENGINE", None)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    top5, heavy = run.stdout.strip().splitlines()[-2:]
    assert "cat" in top5 and heavy == "[]"
