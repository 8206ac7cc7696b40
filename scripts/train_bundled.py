"""Retrain the bundled pair: EfficientNet-Lite0 from scratch and by transfer from ImageNet.

    python scripts/train_bundled.py --data ../shared/data/animals10-offline/raw-img
    python scripts/train_bundled.py --data ../shared/data/animals10-offline/raw-img \
        --kinds scratch-robust transfer-robust --out runs/robust

The "-robust" kinds continue from the bundled checkpoints of the same kind (see ROBUST below and
README, "Models that hold up on photos from elsewhere"); they run on CPU here. On a GPU machine,
scripts/train_scratch_device.py trains the scratch-robust recipe from random initialisation.

Writes checkpoints/<kind>-efficientnet_lite0 folders (atomically; an existing folder is only
replaced with --overwrite) and checkpoints/defaults.json. Same split (seed 42) for both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from animalcls.core.logs import quiet_tensorflow  # noqa: E402

# The study's presets adapted to a 3.4 M-parameter backbone, 2,400 training photos and a
# 2-core CPU; see README "Bundled checkpoints" for why each value differs from the study.
CONFIGS = {
    "transfer": dict(epochs=7, batch_size=64, image_size=224),  # the study's preset as is
    "scratch": dict(
        epochs=30,
        batch_size=32,
        image_size=128,
        dropout=0.2,
        bn_momentum=0.9,
        strong_augment=True,
        keep_best=True,
        reduce_lr_patience=3,
        reduce_lr_factor=0.3,
        early_stopping_patience=10,
    ),
}


# kind -> (script, its arguments before --data/--out): each writes <out>/<kind>-efficientnet_lite0.
# Both start from the checkpoints/ folder of their kind; transfer-robust keeps only its frozen
# backbone (the same since commit f62e07c) and trains a fresh head, so rerunning it on the bundled
# folder repeats the bundled model (pass --cross-source as the bundled run did).
ROBUST = {
    "scratch-robust": [
        "train_scratch_device.py",
        "train",
        "--split",
        "checkpoints/scratch-efficientnet_lite0/split.json",
        "--init",
        "checkpoints/scratch-efficientnet_lite0",
        "--variant",
        "robust",
        "--image-size",
        "128",
        "--batch-size",
        "64",
        "--mix",
        "0.3",
        "--learning-rate",
        "1e-3",
        "--warmup-epochs",
        "1",
        "--epochs",
        "60",
        "--budget",
        "2400",
        "--precision",
        "float32",
        "--workers",
        "2",
        "--save-every-epoch",
    ],
    "transfer-robust": ["train_transfer_robust.py", "--checkpoint", "checkpoints/transfer-efficientnet_lite0"],
}


def run_robust(kind: str, data: str, out_root: Path, cross_source: str | None = None) -> Path:
    """Run one "-robust" recipe through its script (a fresh process: it sets its own backend)."""
    import subprocess

    script, *rest = ROBUST[kind]
    target = out_root / f"{kind}-efficientnet_lite0"
    python = [sys.executable, str(REPO / "scripts" / script)]
    if kind == "transfer-robust":
        extra = ["--cross-source", cross_source] if cross_source else []
        subprocess.run([*python, *rest, "--data", data, "--out", str(target), *extra], check=True, cwd=REPO)
        return target
    work = out_root / f".{kind}.device"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    subprocess.run([*python, *rest, "--data", data, "--out", str(work)], check=True, cwd=REPO, env=env)
    subprocess.run(
        [
            *[sys.executable, str(REPO / "scripts" / "adopt_device_weights.py")],
            "--weights",
            str(work / "robust.weights.h5"),
            "--info",
            str(work / "robust.json"),
            "--history",
            str(work / "robust.history.json"),
            "--data",
            data,
            "--split",
            "checkpoints/scratch-efficientnet_lite0/split.json",
            "--out",
            str(target),
        ],
        check=True,
        cwd=REPO,
    )
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--kinds", nargs="+", default=["transfer", "scratch"], choices=sorted([*CONFIGS, *ROBUST]))
    parser.add_argument("--out", default=str(REPO / "checkpoints"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--cross-source",
        metavar="DIR",
        help="photos from other sources: transfer-robust's epoch tie-break (validation only)",
    )
    parser.add_argument("--epochs", type=int, help="override both presets' epochs (for a quick try)")
    parser.add_argument(
        "--strong-augment", action="store_true", help="add random crops and brightness/contrast jitter to the flips"
    )
    args = parser.parse_args()
    quiet_tensorflow()
    from animalcls.cli import progress
    from animalcls.core import atomic
    from animalcls.training import workflows
    from animalcls.training.train import PRESETS

    out_root = Path(args.out)
    for kind in [k for k in args.kinds if k in ROBUST]:
        print(f"{kind}: {run_robust(kind, args.data, out_root, args.cross_source)}", flush=True)
    for kind in [k for k in args.kinds if k in CONFIGS]:
        overrides = {**CONFIGS[kind], **({"epochs": args.epochs} if args.epochs else {})}
        overrides["strong_augment"] = args.strong_augment or overrides.get("strong_augment", False)
        config = PRESETS[kind].replace(backbone="efficientnet_lite0", **overrides)
        target = out_root / f"{kind}-efficientnet_lite0"
        staging = out_root / f".{target.name}.new"
        print(f"== {kind}: {config}", flush=True)
        with progress.TqdmHooks() as hooks:
            path, scan, result, evaluation = workflows.train_checkpoint(
                args.data, config, staging, name=target.name, hooks=hooks
            )
        _adopt(path, target, args.overwrite)
        print(f"{kind}: {result.seconds:.0f} s, test accuracy {evaluation['accuracy']:.4f} -> {target}", flush=True)
    defaults = {
        kind: f"{kind}-efficientnet_lite0" for kind in CONFIGS if (out_root / f"{kind}-efficientnet_lite0").is_dir()
    }
    atomic.write_json(out_root / "defaults.json", defaults)
    print(json.dumps(defaults))
    return 0


def _adopt(path: Path, target: Path, overwrite: bool) -> None:
    """Move the freshly written folder into place (a sibling at the same depth, so the
    split's root_relative still holds)."""
    from animalcls.core.atomic import replace_dir

    if target.exists() and not overwrite:
        raise SystemExit(f"{target} exists; pass --overwrite to replace it (the new run is in {path}).")
    replace_dir(path, target)


if __name__ == "__main__":
    raise SystemExit(main())
