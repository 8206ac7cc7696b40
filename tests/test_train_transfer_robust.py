"""scripts/train_transfer_robust.py checks its arguments before any slow work."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_transfer_robust.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_transfer_robust", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def folders(tmp_path):
    checkpoint, data = tmp_path / "ck", tmp_path / "data"
    checkpoint.mkdir()
    data.mkdir()
    (checkpoint / "model.keras").write_bytes(b"")
    return ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--views", "-1"], "--views must be 0 or more"),
        (["--heavy-views", "-2"], "--heavy-views must be 0 or more"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--cross-source", "/no/such/folder"], "--cross-source /no/such/folder is not a folder"),
        (["--select", "best"], "invalid choice"),
    ],
)
def test_bad_values_exit_2_before_tensorflow(folders, extra, message, capsys):
    had_tensorflow = "tensorflow" in sys.modules
    with pytest.raises(SystemExit) as stop:
        _script().parse_args([*folders, *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert had_tensorflow or "tensorflow" not in sys.modules


def test_defaults_are_the_bundled_recipe(folders):
    args = _script().parse_args(folders)
    assert (args.views, args.heavy_views, args.select, args.constant_lr, args.epochs) == (
        1,
        1,
        "worst-class",
        False,
        40,
    )


@pytest.mark.slow
def test_a_short_run_trains_a_fresh_head_and_keeps_the_picked_epoch(tiny_checkpoints, tmp_path):
    import json
    import subprocess

    from animalcls.data.dataset import Split

    folder = tiny_checkpoints["transfer"]
    root = Split.load(folder / "split.json").locate_root(folder)
    out = tmp_path / "out"
    arguments = ["--checkpoint", str(folder), "--data", str(root), "--out", str(out), "--epochs", "3"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--heavy-views", "0"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 3 and {"precision", "recall", "val_worst_class", "learning_rate"} <= set(history)
    assert history["learning_rate"][0] > history["learning_rate"][-1]  # cosine decay per epoch
    picked = json.loads((out / "manifest.json").read_text())["training"]["best_epoch"]
    assert 1 <= picked <= 3 and f"best epoch {picked}:" in done.stdout
    assert json.loads((out / "eval.json").read_text())["n"] > 0
