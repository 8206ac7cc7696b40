"""Heatmaps: the numpy CAM against TensorFlow's GradientTape, files and CLI, the quadrant test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import COLOURS, REPO, make_image
from PIL import Image

from animalcls.cli.main import main
from animalcls.heads.reader import read_dense_head
from animalcls.trust import cam
from animalcls.trust.explain import explain, feature_forward, quadrant_canvas, quadrant_hits


def _batch(size: int, count: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def _tape_cams(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference Grad-CAM and Grad-CAM++ from real gradients of the top class's logit."""
    import tensorflow as tf

    from animalcls.models.builders import BACKBONE_LAYER, POOL_LAYER

    pool = model.get_layer(POOL_LAYER)
    head = [layer for layer in model.layers[model.layers.index(pool) + 1 :] if "dropout" not in layer.name]
    with tf.GradientTape() as tape:
        a = model.get_layer(BACKBONE_LAYER)(tf.constant(batch), training=False)
        tape.watch(a)
        x = pool(a)
        for layer in head[:-1]:
            x = layer(x)
        logits = tf.matmul(x, head[-1].kernel) + head[-1].bias
        classes = tf.argmax(logits, axis=1)
        score = tf.gather(logits, classes, batch_dims=1)
    g, a = tape.gradient(score, a).numpy().astype(np.float64), a.numpy().astype(np.float64)
    gradcam = np.maximum(np.einsum("nhwd,nd->nhw", a, g.mean(axis=(1, 2))), 0)
    alpha = g**2 / (2 * g**2 + a.sum(axis=(1, 2))[:, None, None] * g**3 + 1e-30)
    plus = np.maximum(np.einsum("nhwd,nd->nhw", a, (alpha * np.maximum(g, 0)).sum(axis=(1, 2))), 0)
    return gradcam, plus, classes.numpy()


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_numpy_cams_equal_gradient_tape(tiny_checkpoints, kind):
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(tiny_checkpoints[kind])
    batch = _batch(predictor.image_size)
    feature_map, pooled, probabilities = feature_forward(predictor)(batch)
    head = read_dense_head(predictor.path)
    ref_gradcam, ref_plus, ref_classes = _tape_cams(predictor.model, batch)
    classes = probabilities.argmax(axis=1)
    assert (classes == ref_classes).all()
    assert feature_map.shape[1:3] == (8, 8) and pooled.shape == (4, feature_map.shape[-1])
    ours = cam.grad_cam(head, feature_map, pooled, classes)
    assert ref_gradcam.max() > 0
    np.testing.assert_allclose(ours, ref_gradcam, atol=1e-5 * ref_gradcam.max())
    np.testing.assert_allclose(
        cam.grad_cam_plus_plus(head, feature_map, pooled, classes), ref_plus, atol=1e-5 * max(ref_plus.max(), 1e-12)
    )


def test_head_weights_read_without_keras_reproduce_the_model(tiny_checkpoints):
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(tiny_checkpoints["transfer"])
    head = read_dense_head(predictor.path)
    assert [layer.activation for layer in head.layers] == ["relu", "softmax"]
    np.testing.assert_array_equal(head.layers[0].kernel, predictor.model.get_layer("fc512").kernel.numpy())
    _, pooled, probabilities = feature_forward(predictor)(_batch(predictor.image_size))
    logits = head.logits(pooled)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(1, keepdims=True), probabilities, atol=1e-5)


def test_explanations_sum_to_one_and_overlay_the_photo(tiny_checkpoints, tmp_path):
    from animalcls.serving.inference import predict

    photo = make_image(tmp_path / "a.png", COLOURS["gatto"], size=40)
    [result] = explain(photo, tiny_checkpoints["scratch"])
    assert result.heatmap.shape == (8, 8) and (result.heatmap >= 0).all()
    assert result.heatmap.sum() == pytest.approx(1.0)
    expected = predict(photo, tiny_checkpoints["scratch"])[0]  # the plain forward pass
    assert result.probabilities == pytest.approx(expected, abs=1e-5)
    assert result.label == max(expected, key=expected.get)
    shown = result.overlay()
    assert shown.size == (40, 40) and shown.mode == "RGB"
    assert np.abs(np.asarray(shown, float) - np.asarray(Image.open(photo), float)).mean() > 5


def test_normalise_and_quadrant_mass():
    assert cam.normalise(np.zeros((3, 3))).sum() == pytest.approx(1.0)
    heatmap = np.zeros((7, 7))
    heatmap[5:, :2] = 1.0  # bottom-left
    assert cam.quadrant_mass(heatmap, 2) > 0.9 and cam.quadrant_mass(heatmap, 1) < 0.01
    assert quadrant_hits(np.stack([heatmap, heatmap]), [2, 0]).tolist() == [True, False]


def test_quadrant_canvas_puts_the_photo_in_its_quadrant():
    photo = Image.new("RGB", (10, 10), (255, 0, 0))
    canvas = np.asarray(quadrant_canvas(photo, 3))
    assert canvas.shape == (20, 20, 3)
    assert (canvas[10:, 10:] == (255, 0, 0)).all() and (canvas[:10] == 128).all()


def test_cli_writes_overlays_and_json(tiny_checkpoints, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    images = [
        make_image(tmp_path / "cat.png", COLOURS["gatto"], 30),
        make_image(tmp_path / "b" / "cat.png", COLOURS["ragno"], 20),
    ]
    out, report = tmp_path / "overlays", tmp_path / "heat.json"
    argv = ["explain", str(tiny_checkpoints["transfer"]), *map(str, images), "--out", str(out), "--json", str(report)]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["cat-2.transfer-tiny.png", "cat.transfer-tiny.png"]
    assert Image.open(out / "cat-2.transfer-tiny.png").size == (20, 20)
    data = json.loads(report.read_text())
    assert list(data) == [str(p) for p in images]
    for value in data.values():
        heatmap = np.array(value["heatmap"])
        assert heatmap.shape == (8, 8) and heatmap.sum() == pytest.approx(1.0, abs=1e-6)
        assert value["label"] in ("cat", "spider", "butterfly", "elephant", "chicken")
    assert main(argv) == 0  # a second run replaces its own files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{ckpt}", "{tmp}/missing.jpg"], "Image file not found"),
        (["{tmp}/nope", "{img}"], "Checkpoint folder not found"),
        (["{ckpt}", "{img}", "--json", "{tmp}/no/such/dir/x.json"], "--json"),
        (["{ckpt}", "{img}", "--out", "{img}"], "--out"),
        (["{nomodel}", "{img}"], "Missing model.keras"),
    ],
)
def test_cli_argument_errors_exit_2_before_tensorflow(tiny_checkpoints, tmp_path, args, message):
    image = make_image(tmp_path / "a.png", COLOURS["gatto"])
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / "manifest.json").write_bytes((tiny_checkpoints["scratch"] / "manifest.json").read_bytes())
    values = {"ckpt": tiny_checkpoints["scratch"], "tmp": tmp_path, "img": image, "nomodel": no_model}
    argv = ["explain", *[a.format(**values) for a in args]]
    code = (
        "import sys; from animalcls.cli.main import main; rc = main(sys.argv[1:]); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules); sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2
    assert run.stdout.split() == ["False", "False"]
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


@pytest.mark.slow
def test_transfer_heatmaps_find_the_photo_in_its_quadrant(shared_raw):
    """8 test photos per class, each pasted into a random quadrant of a grey canvas."""
    from animalcls.serving.inference import load_image, load_predictor, to_model_input
    from animalcls.store.checkpoints import default_pair
    from animalcls.trust.explain import explain_batch

    folder = default_pair()["transfer"]
    predictor = load_predictor(folder)
    rng = np.random.default_rng(7)
    test = json.loads((folder / "split.json").read_text())["test"]
    picks = [path for label in range(5) for path in rng.choice([p for p, y in test if y == label], 8, replace=False)]
    quadrants = rng.integers(0, 4, len(picks))
    batch = np.stack(
        [
            to_model_input(quadrant_canvas(load_image(shared_raw / p), int(q)), predictor.image_size)
            for p, q in zip(picks, quadrants)
        ]
    )
    _, heatmaps = explain_batch(feature_forward(predictor), read_dense_head(folder), batch)
    assert quadrant_hits(heatmaps, quadrants).mean() >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_bundled_models_numpy_cam_equals_gradient_tape_on_real_photos(shared_raw, kind):
    from animalcls.serving.inference import load_image, load_predictor, to_model_input
    from animalcls.store.checkpoints import default_pair

    folder = default_pair()[kind]
    predictor = load_predictor(folder)
    test = json.loads((folder / "split.json").read_text())["test"]
    batch = np.stack([to_model_input(load_image(shared_raw / path), predictor.image_size) for path, _ in test[::150]])
    feature_map, pooled, probabilities = feature_forward(predictor)(batch)
    reference, _, classes = _tape_cams(predictor.model, batch)
    assert (probabilities.argmax(axis=1) == classes).all()
    ours = cam.grad_cam(read_dense_head(folder), feature_map, pooled, classes)
    np.testing.assert_allclose(ours, reference, atol=1e-5 * reference.max())
