import json
import os
import subprocess
import sys

import pytest

from animalcls.cli import build_parser, main
from conftest import REPO, make_dataset, make_image


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_every_command():
    text = build_parser().format_help()
    for command in ("train", "evaluate", "predict", "finetune", "download", "push"):
        assert command in text
    assert "cat, spider, butterfly, elephant, chicken" in text


def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    data_dir = make_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "ck"
    code, stdout, _ = _run(capsys, "train", "--data", data_dir, "--model", "scratch", "--backbone", "tiny",
                           "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--bn-momentum", "0.9",
                           "--strong-augment", "--out", out)
    assert code == 0, stdout
    assert "backbone tiny" in stdout and "test accuracy" in stdout
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert (training["bn_momentum"], training["strong_augment"], training["batch_size"]) == (0.9, True, 8)

    code, stdout, _ = _run(capsys, "evaluate", out, "--json", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= report["accuracy"] <= 1 and len(report["confusion_matrix"]) == 5
    assert report["n"] == 8  # the recorded test split: 20 % of 40
    assert "weighted avg" in stdout

    code, stdout, _ = _run(capsys, "evaluate", out, "--data", data_dir)
    assert code == 0 and "support" in stdout

    image = make_image(tmp_path / "x.jpg", (200, 10, 10))
    code, stdout, _ = _run(capsys, "predict", out, image, "--json", "--top", "3")
    assert code == 0
    result = json.loads(stdout)
    assert len(result[str(image)]["probabilities"]) == 3 and result[str(image)]["out_of_scope"] is None


def test_transfer_with_a_local_weights_file(tmp_path, capsys):
    from animalcls.backbones import build_backbone

    weights = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", 32).save_weights(weights)
    data_dir = make_dataset(tmp_path / "data", per_class=6)
    code, stdout, err = _run(capsys, "train", "--data", data_dir, "--model", "transfer", "--backbone", "tiny",
                             "--weights", weights, "--epochs", "1", "--image-size", "32", "--out", tmp_path / "t")
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["weights"] == str(weights)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "{tmp}/nope", "--model", "scratch", "--backbone", "tiny"], "Dataset folder not found"),
        (["train", "--data", "{data}", "--model", "transfer", "--backbone", "tiny", "--weights", "{tmp}/w.h5"],
         "Weights file not found"),
        (["train", "--data", "{data}", "--model", "scratch", "--backbone", "nope"], "Unknown backbone 'nope'"),
        (["train", "--data", "{data}", "--model", "scratch", "--classes", "zebra"], "Class 'zebra' has no folder"),
        (["predict", "{tmp}/no-checkpoint", "{tmp}/x.jpg"], "Checkpoint folder not found"),
        (["predict", "{ckpt}", "{tmp}/bad.jpg"], "bad.jpg is not an image"),
        (["predict", "{ckpt}", "{tmp}/missing.jpg"], "Image file not found"),
        (["evaluate", "{tmp}"], "Missing manifest.json"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, tiny_checkpoints, argv, message):
    data_dir = make_dataset(tmp_path / "data", per_class=2)
    (tmp_path / "bad.jpg").write_text("hello")
    values = {"tmp": tmp_path, "data": data_dir, "ckpt": tiny_checkpoints["scratch"]}
    code, _, err = _run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_subprocess_error_is_one_line_without_tensorflow_noise(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "animalcls", "predict", str(tmp_path), "x.jpg"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: Missing manifest.json in {tmp_path}"]
