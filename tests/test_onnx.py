"""The ONNX serving graph: conversion, freshness, the TF-free engine and parity with Keras."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_checkpoint

from animalcls.serving.onnx_engine import OnnxUnavailableError, load_engine
from animalcls.store import checkpoints, onnx_store

REPO = Path(__file__).resolve().parents[1]
PROBABILITY_TOLERANCE = 1e-5
FEATURE_TOLERANCE = 1e-4  # absolute, on activations of order 1-10


def keras_outputs(folder: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    from animalcls.serving.forward import outputs_model

    model = checkpoints.load_checkpoint(folder).model
    return {name: np.asarray(value) for name, value in outputs_model(model)(batch, training=False).items()}


def assert_parity(engine, reference: dict[str, np.ndarray], batch: np.ndarray) -> None:
    got = engine.run(batch)
    assert np.abs(got["probabilities"] - reference["probabilities"]).max() <= PROBABILITY_TOLERANCE
    for name in ("pooled", "feature_map"):
        assert got[name].shape == reference[name].shape
        assert np.abs(got[name] - reference[name]).max() <= FEATURE_TOLERANCE, name


def test_importing_the_engine_imports_neither_tensorflow_nor_keras():
    assert _heavy_modules_after("import animalcls.serving.onnx_engine, animalcls.store.onnx_store\n") == "[]"


def test_serving_the_bundled_graphs_imports_neither_tensorflow_nor_keras():
    pair = checkpoints.default_pair()
    if not pair:
        pytest.skip("no bundled checkpoints")
    code = (
        "import numpy as np\n"
        "from animalcls.serving.onnx_engine import load_engine\n"
        f"for folder in {[str(p) for p in pair.values()]!r}:\n"
        "    engine = load_engine(folder, build=False)\n"
        "    engine.run(np.zeros((1, engine.image_size, engine.image_size, 3), np.float32))\n"
    )
    assert _heavy_modules_after(code) == "[]"


def _heavy_modules_after(code: str) -> str:
    """Run `code` in a fresh interpreter; the TensorFlow, Keras and tf2onnx modules it imported."""
    code = (
        "import sys\n"
        + code
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_bundled_graphs_are_fresh_and_the_folder_fits_100_mb():
    pair = checkpoints.default_pair()
    if not pair:
        pytest.skip("no bundled checkpoints")
    for folder in pair.values():
        keras_sha = onnx_store.file_sha256(folder / checkpoints.MODEL_FILE)
        status = onnx_store.check(folder / onnx_store.ONNX_FILE, keras_sha)
        assert status.fresh, f"{folder}: {status.reason}; run python -m animalcls.serving.convert_onnx {folder}"
    total = sum(path.stat().st_size for path in checkpoints.BUNDLED_DIR.rglob("*") if path.is_file())
    assert total <= 100 * 2**20


def test_training_writes_a_fresh_serving_graph(tiny_checkpoints):
    for folder in tiny_checkpoints.values():
        keras_sha = onnx_store.file_sha256(folder / checkpoints.MODEL_FILE)
        assert onnx_store.check(folder / onnx_store.ONNX_FILE, keras_sha).fresh


def test_tiny_model_converts_with_three_outputs_matching_keras(tiny_checkpoints, tmp_path):
    from animalcls.serving.convert_onnx import write_onnx

    folder = copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / "transfer-tiny")
    path = write_onnx(folder)
    assert path == folder / onnx_store.ONNX_FILE
    sidecar = json.loads(onnx_store.sidecar_path(path).read_text())
    assert sidecar["keras_sha256"] == onnx_store.file_sha256(folder / checkpoints.MODEL_FILE)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temp leftovers

    engine = load_engine(folder, build=False)
    batch = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    reference = keras_outputs(folder, batch)
    assert_parity(engine, reference, batch)
    assert engine.run(batch)["feature_map"].shape == (6, 8, 8, 16)  # tiny: two stride-2 convs, 16 filters
    assert engine.probabilities(batch[:1]).shape == (1, len(engine.class_names))


@pytest.mark.slow
def test_stale_or_corrupt_graph_is_refused_without_build_and_rebuilt_with_it(tiny_checkpoints, tmp_path):
    from animalcls.serving.convert_onnx import write_onnx

    folder = copy_checkpoint(tiny_checkpoints["scratch"], tmp_path / "scratch-tiny")
    (folder / onnx_store.ONNX_FILE).unlink()
    with pytest.raises(OnnxUnavailableError, match="model.onnx is missing"):
        load_engine(folder, build=False)
    write_onnx(folder)
    # Another model.keras (the transfer one) under the same graph: stale.
    shutil.copy(tiny_checkpoints["transfer"] / checkpoints.MODEL_FILE, folder / checkpoints.MODEL_FILE)
    manifest = json.loads((tiny_checkpoints["transfer"] / checkpoints.MANIFEST_FILE).read_text())
    (folder / checkpoints.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(OnnxUnavailableError, match="stale"):
        load_engine(folder, build=False)
    engine = load_engine(folder)  # rebuilt from the new model.keras
    batch = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    assert_parity(engine, keras_outputs(folder, batch), batch)

    graph = folder / onnx_store.ONNX_FILE
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # truncated
    with pytest.raises(OnnxUnavailableError, match="does not match its sidecar"):
        load_engine(folder, build=False)
    assert load_engine(folder).run(batch)["probabilities"].shape == (3, len(manifest["class_names"]))


def test_engine_rejects_a_batch_of_the_wrong_shape(tiny_checkpoints, tmp_path):
    from animalcls.serving.convert_onnx import write_onnx

    folder = copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / "transfer-tiny")
    write_onnx(folder)
    engine = load_engine(folder, build=False)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        engine.run(np.zeros((1, 64, 64, 3), np.float32))


def test_convert_cli_checks_its_arguments_before_importing_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "from animalcls.serving.convert_onnx import main\n"
        f"status = main([{str(tmp_path / 'nowhere')!r}])\n"
        "print(status, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False"]
    assert out.stderr.strip().startswith("error: Checkpoint folder not found")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_bundled_graph_matches_keras_on_real_photos(shared_raw, kind):
    from animalcls.data import dataset as data
    from animalcls.serving.inference import load_image, to_model_input

    pair = checkpoints.default_pair()
    if kind not in pair:
        pytest.skip(f"no bundled {kind} checkpoint")
    folder = pair[kind]
    engine = load_engine(folder, build=False)
    split = data.Split.load(folder / checkpoints.SPLIT_FILE)
    paths, labels = split.paths("test", shared_raw)
    picks = [paths[i] for i in range(0, len(paths), len(paths) // 16)][:16]  # spread over the classes
    batch = np.stack([to_model_input(load_image(path), engine.image_size) for path in picks])
    assert_parity(engine, keras_outputs(folder, batch), batch)


@pytest.mark.slow
def test_a_head_only_finetune_ships_its_graph_patched_and_matching_keras(tiny_checkpoints, tmp_path, monkeypatch):
    from animalcls.heads.finetune import finetune
    from animalcls.serving.convert_onnx import HEAD_PATCHED

    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    source = tiny_checkpoints["transfer"]
    result = finetune(source, epochs=2, learning_rate=1e-2, out_dir=tmp_path / "ft", batch_size=8)
    sidecar = json.loads(onnx_store.sidecar_path(result.path / onnx_store.ONNX_FILE).read_text())
    assert sidecar["converter"] == HEAD_PATCHED
    engine = load_engine(result.path, build=False)  # fresh for the fine-tune's own model.keras
    batch = np.random.default_rng(3).uniform(0, 255, (6, engine.image_size, engine.image_size, 3)).astype(np.float32)
    assert_parity(engine, keras_outputs(result.path, batch), batch)
    before = load_engine(source, build=False).run(batch)
    assert np.abs(engine.run(batch)["probabilities"] - before["probabilities"]).max() > 1e-3  # a new head
    assert np.array_equal(engine.run(batch)["pooled"], before["pooled"])  # the same backbone


def test_patching_refuses_a_weight_the_graph_does_not_hold(tiny_checkpoints):
    from animalcls.core.errors import CheckpointError
    from animalcls.serving.convert_onnx import patched_graph

    graph = (tiny_checkpoints["transfer"] / onnx_store.ONNX_FILE).read_bytes()
    stranger = np.full((3, 7), 0.123, np.float32)
    with pytest.raises(CheckpointError, match="0 initializers"):
        patched_graph(graph, [(stranger, stranger + 1)])


def test_sessions_on_the_shared_pool_answer_as_sessions_with_their_own(tiny_checkpoints):
    """The app's set-up (one thread pool for both models) in a fresh process, against the default."""
    code = (
        "import sys, numpy as np\n"
        "from animalcls.serving import onnx_engine\n"
        "shared = sys.argv[1] == 'shared'\n"
        "assert not shared or onnx_engine.share_thread_pool()\n"
        f"folders = {[str(p) for p in tiny_checkpoints.values()]!r}\n"
        "engines = [onnx_engine.load_engine(f, build=False) for f in folders]\n"
        "batch = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)\n"
        "print(' '.join(repr(float(v)) for e in engines for v in e.probabilities(batch).ravel()))\n"
        "import onnxruntime as ort\n"  # a library user's own plain session works unless the pool is shared
        "ort.InferenceSession(engines[0].path.read_bytes(), providers=['CPUExecutionProvider'])\n"
    )
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", code, mode],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        )
        for mode in ("own", "shared")
    }
    assert runs["own"].returncode == 0, runs["own"].stderr[-2000:]
    assert "use_per_session_threads must be false" in runs["shared"].stderr  # why only the app shares it
    own = np.array(runs["own"].stdout.splitlines()[0].split(), float)
    shared = np.array(runs["shared"].stdout.splitlines()[0].split(), float)
    assert own.size == shared.size > 0 and np.abs(own - shared).max() <= 1e-6
