"""Scale-out training (distribute.py) on a CPU split into two logical devices.

Logical devices must be configured before TensorFlow sets up its devices, which the test
process has long done, so the training runs happen in ONE fresh subprocess that prints a JSON
summary; the tests below read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

# Weights and per-epoch losses of a mirrored run (2 replicas x 4) vs a single-device run
# (batch 8), same seed, no flips, same shuffle. The two compute the same gradients and (with
# synchronised BatchNorm) the same batch statistics; what differs is float32 summation order
# (per-replica partial sums, then the all-reduce; E[x^2]-E[x]^2 for the synced variance).
# That measured 5e-7 after 12 Adam steps. 1e-5 leaves 20x headroom; per-replica BatchNorm
# (the bug this guards against) gave 2e-2 on the weights and 7e-2 on the loss.
TOLERANCE = 1e-5

RUNS = r"""
import json, sys
from pathlib import Path
import numpy as np
from conftest import make_dataset
from animalcls.store import checkpoints
from animalcls.training import distribute
from animalcls.heads.finetune import finetune
from animalcls.training.train import PRESETS
from animalcls.training.workflows import train_checkpoint

tmp = Path(sys.argv[1])
data = make_dataset(tmp / "data", per_class=8)
report = {}
for name, kind, batch, mixed in (("mirrored", "mirrored", 4, False), ("single", "none", 8, False),
                                 ("mixed", "none", 8, True)):
    config = PRESETS["scratch"].replace(backbone="tiny", image_size=32, epochs=3, batch_size=batch, flip=False,
                                        distribute=kind, mixed_precision=mixed)
    path, _, result, _ = train_checkpoint(data, config, tmp / name)
    model = checkpoints.load_checkpoint(path).model
    report[name] = {
        "loss": result.history["loss"],
        "weights": [w.tolist() for w in model.get_weights()],
        "dtypes": sorted({layer.dtype_policy.name for layer in model.layers}),
        "scale_out": checkpoints.read_manifest(path)["training"]["scale_out"],
        "synchronized": [l.synchronized for l in model.get_layer("backbone").layers if hasattr(l, "synchronized")],
    }
tuned = finetune(Path(sys.argv[2]), epochs=1, unfreeze_layers=3, out_dir=tmp / "ft", batch_size=4,
                 distribute_kind="mirrored", mixed_precision=True)
manifest = checkpoints.read_manifest(tuned.path)
layers = checkpoints.load_checkpoint(tuned.path).model.layers
report["finetune"] = {"scale_out": manifest["training"]["scale_out"], "loss": tuned.history["loss"],
                      "dtypes": sorted({layer.dtype_policy.name for layer in layers})}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> dict:
    tmp = tmp_path_factory.mktemp("distribute")
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "ANIMALCLS_CPU_DEVICES": "2",
        "ANIMALCLS_FEATURE_CACHE": str(tmp / "cache"),
    }
    run = subprocess.run(
        [sys.executable, "-c", RUNS, str(tmp), str(tiny_checkpoints["transfer"])],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("REPORT ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("REPORT "))


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_a_single_device_run(runs):
    mirrored, single = runs["mirrored"], runs["single"]
    assert mirrored["scale_out"] == {"strategy": "mirrored", "replicas": 2, "dtype_policy": "float32"}
    assert single["scale_out"]["replicas"] == 1
    assert mirrored["loss"][-1] < mirrored["loss"][0]  # it trained
    np.testing.assert_allclose(mirrored["loss"], single["loss"], atol=TOLERANCE, rtol=0)
    for a, b in zip(mirrored["weights"], single["weights"], strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=TOLERANCE, rtol=0)
    assert mirrored["synchronized"] == [False, False]  # the saved model is a plain one


@pytest.mark.slow
def test_mixed_precision_trains_and_saves_float32(runs):
    mixed = runs["mixed"]
    assert mixed["scale_out"]["dtype_policy"] == "mixed_bfloat16"  # no GPU here
    assert np.isfinite(mixed["loss"]).all() and mixed["loss"][-1] < mixed["loss"][0]
    assert mixed["dtypes"] == ["float32"]


@pytest.mark.slow
def test_finetune_unfreeze_runs_mirrored_in_mixed_precision(runs):
    tuned = runs["finetune"]
    assert tuned["scale_out"] == {"strategy": "mirrored", "replicas": 2, "dtype_policy": "mixed_bfloat16"}
    assert np.isfinite(tuned["loss"]).all()
    assert tuned["dtypes"] == ["float32"]


def test_predictions_stay_float32_under_a_mixed_policy():
    import keras

    from animalcls.models import builders as models

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = models.build_scratch("tiny", 5, 32)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("avg_pool").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ('{"cluster": {}}', "needs a 'cluster' and a 'task'"),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "'worker' list"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not a member"),
    ],
)
def test_bad_tf_config_is_one_error_line_before_tensorflow(tmp_path, tf_config, message):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"PYTHONPATH": str(REPO)}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    for name in ("cat", "spider", "butterfly", "elephant", "chicken"):  # the data check passes
        (tmp_path / name).mkdir()
    code = (
        f"import sys; from animalcls.cli.main import main; rc = main(['train', '--data', {str(tmp_path)!r}, "
        "'--model', 'scratch', '--distribute', 'multiworker']); print('tensorflow' in sys.modules); sys.exit(rc)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2
    assert run.stdout.strip() == "False"
    assert run.stderr.startswith("error: ") and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_valid_tf_config_and_cpu_devices_are_accepted():
    from animalcls.training.distribute import DistributeError, check_request, cpu_devices

    good = '{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 1}}'
    check_request("multiworker", {"TF_CONFIG": good})
    assert cpu_devices({"ANIMALCLS_CPU_DEVICES": "2"}) == 2 and cpu_devices({}) == 1
    with pytest.raises(DistributeError, match="whole number"):
        check_request("mirrored", {"ANIMALCLS_CPU_DEVICES": "two"})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "{ckpt}", "--distribute", "mirrored"], "need --unfreeze N"),
        (["finetune", "{ckpt}", "--mixed-precision"], "need --unfreeze N"),
        (["train", "--data", ".", "--model", "scratch", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_scale_out_argument_errors(tmp_path, capsys, argv, message):
    from animalcls.cli.main import main

    code = main([a.format(ckpt=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


def test_distribute_choice_is_checked_by_the_parser(capsys):
    from animalcls.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", ".", "--model", "scratch", "--distribute", "tpu"])
    assert exit_info.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
