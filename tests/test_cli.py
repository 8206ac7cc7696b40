import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_dataset, make_image

from animalcls.cli.main import build_parser, main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_every_command():
    text = build_parser().format_help()
    for command in ("train", "evaluate", "predict", "finetune", "download", "push"):
        assert command in text
    assert "cat, spider, butterfly, elephant, chicken" in text


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path, capsys):
    data_dir = make_dataset(tmp_path / "data", per_class=8)
    out = tmp_path / "ck"
    code, stdout, _ = _run(
        capsys,
        "train",
        "--data",
        data_dir,
        "--model",
        "scratch",
        "--backbone",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--bn-momentum",
        "0.9",
        "--strong-augment",
        "--out",
        out,
    )
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


@pytest.mark.slow
def test_transfer_with_a_local_weights_file(tmp_path, capsys):
    from animalcls.models.backbones import build_backbone

    weights = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", 32).save_weights(weights)
    data_dir = make_dataset(tmp_path / "data", per_class=6)
    code, stdout, err = _run(
        capsys,
        "train",
        "--data",
        data_dir,
        "--model",
        "transfer",
        "--backbone",
        "tiny",
        "--weights",
        weights,
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--out",
        tmp_path / "t",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["weights"] == str(weights)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "{tmp}/nope", "--model", "scratch", "--backbone", "tiny"], "Dataset folder not found"),
        (
            ["train", "--data", "{data}", "--model", "transfer", "--backbone", "tiny", "--weights", "{tmp}/w.h5"],
            "Weights file not found",
        ),
        (["train", "--data", "{data}", "--model", "scratch", "--backbone", "nope"], "Unknown backbone 'nope'"),
        (
            ["train", "--data", "{data}", "--model", "scratch", "--classes", "cat", "zebra"],
            "Class 'zebra' has no folder",
        ),
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
    run = subprocess.run(
        [sys.executable, "-m", "animalcls", "predict", str(tmp_path), "x.jpg"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: Missing manifest.json in {tmp_path}"]


# Each bad command line, and the start of its one-line message. All are answered before TensorFlow.
NONSENSE = [
    (["train", "--data", "{data}", "--model", "scratch", "--classes", "dog"], "--classes needs at least two"),
    (["train", "--data", "{data}", "--model", "scratch", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "--data", "{data}", "--model", "scratch", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--data", "{data}", "--model", "scratch", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (
        ["train", "--data", "{data}", "--model", "scratch", "--backbone", "tiny", "--image-size", "4"],
        "--image-size must be at least 8 for backbone tiny",
    ),
    (
        ["train", "--data", "{data}", "--model", "scratch", "--backbone", "efficientnet_lite0", "--image-size", "16"],
        "--image-size must be at least 32",
    ),
    (["train", "--data", "{data}", "--model", "scratch", "--learning-rate", "0"], "--learning-rate must be a finite"),
    (["train", "--data", "{data}", "--model", "scratch", "--learning-rate=-1e-3"], "--learning-rate must be"),
    (["train", "--data", "{data}", "--model", "scratch", "--learning-rate", "nan"], "--learning-rate must be"),
    (["train", "--data", "{data}", "--model", "scratch", "--learning-rate", "inf"], "--learning-rate must be"),
    (["train", "--data", "{data}", "--model", "scratch", "--epochs", "two"], "argument --epochs: invalid int"),
    (["train", "--data", "{data}", "--model", "scratch", "--preset", "fast"], "argument --preset: invalid choice"),
    (["train", "--data", "{data}", "--model", "scratch", "--backbone", "nope"], "Unknown backbone 'nope'"),
    (["train", "--data", "{tmp}/nope", "--model", "scratch"], "Dataset folder not found"),
    (
        ["train", "--data", "{data}", "--model", "scratch", "--backbone", "tiny", "--out", "{ckpt}"],
        "Checkpoint folder already exists",
    ),
    (["predict", "{ckpt}", "{tmp}/x.jpg", "--top", "0"], "--top must be at least 1"),
    (["predict", "{ckpt}", "{tmp}/x.jpg", "--top", "-1"], "--top must be at least 1"),
    (["predict", "{ckpt}", "{tmp}/missing.jpg"], "Image file not found"),
    (["predict", "{ckpt}", "{tmp}", "--json"], "with folders use --format jsonl"),
    (["predict", "{ckpt}", "{tmp}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["evaluate", "{ckpt}", "--data", "{tmp}/nope"], "Dataset folder not found"),
    (["finetune", "{ckpt}", "--epochs", "0"], "--epochs must be at least 1"),
    (["finetune", "{ckpt}", "--learning-rate", "0"], "--learning-rate must be"),
    (["finetune", "{ckpt}", "--unfreeze", "-1"], "--unfreeze must be 0 or more"),
    (["finetune", "{ckpt}", "--out", "{ckpt}"], "is the source checkpoint"),
    (["finetune", "{ckpt}", "--out", "{data}"], "Checkpoint folder already exists"),
    (["finetune", "{scratch}"], "only transfer checkpoints can be fine-tuned"),
    # issue 19, "the CLI as a new user met it"
    (
        ["evaluate", "{moved}"],
        "The recorded dataset folder raw-img is not on this machine (looked in {tmp}/a/b/data/raw-img)",
    ),
    (["explain", "{ckpt}", "{photos}"], "{photos} is a folder: explain takes image files"),
    (["evaluate", "{tmp}/x.jpg"], "{tmp}/x.jpg is a file, not a checkpoint folder"),
    (["predict", "{ckpt}", "{tmp}/x.jpg", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["predict", "{ckpt}", "{photos}", "--top", "3"], "--top is for explicit images"),
    (["predict", "{ckpt}", "{empty}"], "No image files in {empty}"),
    (["predict", "{ckpt}", "{empty}", "--format", "jsonl"], "No image files in {empty}"),
    (["push", "{ckpt}", "--repo-id", "not a repo id!!", "--dry-run"], "--repo-id is not a Hub repo id"),
    (["push", "{ckpt}", "--repo-id", "../../etc", "--dry-run"], "--repo-id is not a Hub repo id"),
    (["download", "--repo-id", "../../etc"], "--repo-id is not a Hub repo id"),
    (["evaluate", "{badsplit}"], "Corrupt split file {badsplit}/split.json: Expecting"),
    (["evaluate", "{notsplit}"], "Corrupt split file {notsplit}/split.json: not a split"),
    (["finetune", "{badsplit}"], "Corrupt split file {badsplit}/split.json"),
    (["predict", "{ckpt}", "{photos}", "--output", "{empty}"], "--output {empty} is a folder"),
    (
        ["predict", "{ckpt}", "{tmp}/x.jpg", "--output", "{tmp}/no/dir/out.csv"],
        "the folder {tmp}/no/dir does not exist",
    ),
    (["evaluate", "{ckpt}", "--json", "{tmp}/no/r.json"], "the folder {tmp}/no does not exist"),
    (["evaluate", "{ckpt}", "--data", "{empty}"], "Class 'cat' has no folder in {empty}"),
    (
        ["train", "--data", "{data}", "--model", "scratch", "--classes", "cat", "unicorn"],
        "Class 'unicorn' has no folder",
    ),
    (["export", "{corrupt}", "--format", "onnx", "--out", "{tmp}/exported"], "Corrupt model.keras in {corrupt}"),
]


def _broken_copies(tmp_path, transfer):
    """Copies of a checkpoint as a new user meets them: moved away from its dataset, with a corrupt
    or a not-a-split split.json, with a corrupt model.keras. Plus an empty folder and one of photos."""
    import shutil

    folders = {
        "moved": tmp_path / "a" / "b" / "c" / "moved",
        "badsplit": tmp_path / "badsplit",
        "notsplit": tmp_path / "notsplit",
        "corrupt": tmp_path / "corrupt",
    }
    for folder in folders.values():
        shutil.copytree(transfer, folder)  # split.json's relative dataset root now points nowhere
    (folders["badsplit"] / "split.json").write_text('{"a": 1\n"b": 2}')
    (folders["notsplit"] / "split.json").write_text('{"a": 1}')
    (folders["corrupt"] / "model.keras").write_text("garbage")
    folders["empty"] = tmp_path / "empty"
    folders["empty"].mkdir()
    folders["photos"] = tmp_path / "photos"
    folders["photos"].mkdir()
    make_image(folders["photos"] / "y.jpg", (10, 200, 10))
    return folders


def test_nonsense_arguments_fail_in_one_line_before_tensorflow(tmp_path, tiny_checkpoints):
    """One subprocess runs every case (a fresh interpreter, so sys.modules is honest): each gets
    one `error:` line and status 2, and TensorFlow and Keras are never imported."""
    data_dir = make_dataset(tmp_path / "data", per_class=1)
    make_image(tmp_path / "x.jpg", (200, 10, 10))
    values = {
        "tmp": tmp_path,
        "data": data_dir,
        "ckpt": tiny_checkpoints["transfer"],
        "scratch": tiny_checkpoints["scratch"],
        **_broken_copies(tmp_path, tiny_checkpoints["transfer"]),
    }
    cases = [[a.format(**values) for a in argv] for argv, _ in NONSENSE]
    script = (
        "import contextlib, io, json, sys\n"
        "from animalcls.cli.main import main\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as exit:\n"
        "            code = exit.code\n"
        "    out.append([code, err.getvalue()])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(json.dumps({'results': out, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "ANIMALCLS_FILTER_STDERR": "0"}
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for (argv, message), (code, err) in zip(NONSENSE, report["results"]):
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert message.format(**values) in lines[0], (argv, err)
    assert report["heavy"] == []
    assert not (tmp_path / "no").exists() and not (tmp_path / "exported").exists()  # nothing created for a typo


def test_presets_named_by_the_parser_are_the_trainers():
    from animalcls.cli.checks import PRESET_NAMES
    from animalcls.training.train import PRESETS

    assert tuple(PRESETS) == PRESET_NAMES


def test_train_refuses_an_existing_out_before_training(tmp_path, capsys):
    """Library side of the same check: train_checkpoint fails before building or fitting."""
    from animalcls.core.errors import CheckpointError
    from animalcls.training.train import PRESETS
    from animalcls.training.workflows import train_checkpoint

    out = tmp_path / "exists"
    out.mkdir()
    config = PRESETS["scratch"].replace(backbone="tiny", image_size=32, epochs=50, batch_size=8)
    with pytest.raises(CheckpointError, match="already exists"):
        train_checkpoint(tmp_path / "no-data-needed", config, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # no .exists.work left behind


def test_evaluate_data_leaves_out_the_checkpoints_training_photos(tmp_path, capsys, tiny_checkpoints):
    """A copy of the checkpoint's own dataset plus one new photo: by default only the 10 test-split
    photos and the new one are scored, and the report says so; the flag scores all 51, plainly."""
    import shutil

    from animalcls.data.dataset import Split

    checkpoint = tiny_checkpoints["transfer"]
    split = Split.load(checkpoint / "split.json")
    copy = tmp_path / "copy"
    shutil.copytree(split.locate_root(checkpoint), copy)
    make_image(copy / "gatto" / "new-cat.jpg", (220, 40, 40), seed=99)
    code, out, err = _run(capsys, "evaluate", checkpoint, "--data", copy, "--json", tmp_path / "r.json")
    assert code == 0, err
    photos = json.loads((tmp_path / "r.json").read_text())["photos"]
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 11
    assert (photos["test_split"], photos["outside_split"], photos["training_left_out"]) == (10, 1, 40)
    assert "Photos: 11 photos of" in out and "left out 40 training/validation photos" in out

    code, out, _ = _run(capsys, "evaluate", checkpoint, "--data", copy, "--include-training-photos")
    assert code == 0
    assert "51 photos of" in out and "40 TRAINING/VALIDATION photos" in out and "not a test score" in out

    code, out, _ = _run(capsys, "evaluate", checkpoint)
    assert code == 0 and "Photos: the recorded test split: 10 photos of" in out


def test_predict_scratch_or_transfer_means_the_bundled_default(tmp_path, monkeypatch, tiny_checkpoints):
    import shutil

    from animalcls.cli.checks import resolve_checkpoint
    from animalcls.core.settings import BUNDLED_DIR
    from animalcls.store.checkpoints import default_pair

    chosen = json.loads((BUNDLED_DIR / "defaults.json").read_text())
    monkeypatch.chdir(tmp_path)
    for kind in ("scratch", "transfer"):
        assert resolve_checkpoint(kind) == default_pair()[kind] == BUNDLED_DIR / chosen[kind]
    shutil.copytree(tiny_checkpoints["transfer"], tmp_path / "transfer")  # a folder of that name wins
    assert resolve_checkpoint("transfer").resolve() == tmp_path / "transfer"


@pytest.mark.slow
def test_predict_with_the_bundled_scratch_shortcut(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = make_image(tmp_path / "x.jpg", (200, 10, 10), size=64)
    code, out, err = _run(capsys, "predict", "scratch", image, "--top", "2")
    assert code == 0, err
    assert out.startswith("Model: scratch-efficientnet_lite0 (scratch, efficientnet_lite0)")
    assert len([line for line in out.splitlines() if line.strip().endswith("%")]) == 2


def test_the_librarys_notes_reach_stderr_one_line_each_while_a_command_runs(monkeypatch, capsys):
    """The library only logs; the command line shows its notes and warnings, and nothing else."""
    import logging

    from animalcls.cli import main as cli

    def command(args):
        logging.getLogger("animalcls.heads.finetune_head").info("no detector (%s).", "bad\nfile")
        logging.getLogger("animalcls.training.workflows").warning("no ONNX graph written for %s", "x")
        logging.getLogger("animalcls.serving.model_cache").debug("unloaded")
        return 0

    monkeypatch.setitem(cli.HANDLERS, "explain", command)
    assert main(["explain", "scratch", "photo.jpg"]) == 0
    logging.getLogger("animalcls.training.workflows").warning("after the command")
    err = capsys.readouterr().err
    assert err.splitlines() == ["note: no detector (bad file).", "warning: no ONNX graph written for x"]
