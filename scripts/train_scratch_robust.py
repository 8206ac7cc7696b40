"""Train the robust from-scratch recipe on the CPU, resumably, and compare it with the bundled
scratch model (issue: "A scratch model worth comparing").

    python scripts/train_scratch_robust.py --data ../shared/data/animals10-offline/raw-img \\
        --cross-source ../shared/data/cross-source-val/raw-img

Three stages, each skipped when its output exists, so rerunning the same command after an
interruption resumes where it stopped:

1. train: EfficientNet-Lite0 from random initialisation on the 2,100 training photos of the
   bundled split (photos decoded once, batches augmented in the graph: animalcls/data/batch_augment.py),
   the epoch chosen on the 300 validation photos plain, blurred and downscaled
   (animalcls/training/scratch_run.py). Log: OUT/train.log; per-epoch history: OUT/history.json.
2. checkpoint: the best epoch's weights as a complete checkpoint folder,
   OUT/scratch-efficientnet_lite0 (evaluated on the test split: the only time it is read).
3. compare: validation views, cross-source photos and the test split under each degradation of
   scripts/robustness.py, old (bundled) vs new, as OUT/compare.json and a Markdown table.

4. adopt (only when named in --stages): if the new model is better than the bundled one on every
   validation view, on the cross-source photos and under every degradation of the test split, it
   replaces checkpoints/scratch-efficientnet_lite0 (same split.json), and what derives from it is
   rebuilt: model.onnx, test_predictions.json, the "none of the five" detector (scripts/build_scope.py)
   and checkpoints/robustness.json (scripts/robustness.py). Otherwise it says by how much it lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from animalcls.core.atomic import write_json

REPO = Path(__file__).resolve().parents[1]

BUNDLED = REPO / "checkpoints" / "scratch-efficientnet_lite0"
NAME = "scratch-efficientnet_lite0"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the raw-img folder of the bundled split")
    parser.add_argument("--split", default=str(BUNDLED / "split.json"))
    parser.add_argument("--cross-source", help="photos of the five classes from other sources (compare stage only)")
    parser.add_argument("--out", default=str(REPO / "runs" / "scratch-robust"))
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42, help="the batches' permutations and augmentations")
    parser.add_argument(
        "--init-weights",
        help="continue from this run's best.weights.h5 (an earlier run of this recipe) with a new cosine cycle",
    )
    parser.add_argument("--limit", type=int, help="only the first N train and val photos (a dry run)")
    parser.add_argument(
        "--stages", nargs="+", default=["train", "checkpoint", "compare"], choices=["train", "checkpoint", "compare"]
    )
    args = parser.parse_args()
    for flag in ("epochs", "image_size", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not Path(args.data).is_dir():
        parser.error(f"--data {args.data} is not a folder")
    if not Path(args.split).is_file():
        parser.error(f"--split {args.split} is not a file")
    if args.init_weights and not Path(args.init_weights).is_file():
        parser.error(f"--init-weights {args.init_weights} is not a file")
    return args


def train_stage(args: argparse.Namespace, out: Path) -> None:
    from animalcls.data import dataset as data
    from animalcls.training.scratch_run import RunConfig, finished_epochs, run

    if finished_epochs(out) >= args.epochs:
        logging.info("all %d epochs already trained in %s", args.epochs, out)
        return
    split = data.Split.load(Path(args.split))
    root = data.dataset_root(args.data)
    train_paths, train_labels = split.paths("train", root)
    val_paths, val_labels = split.paths("val", root)
    if args.limit:
        train_paths, train_labels = train_paths[: args.limit], train_labels[: args.limit]
        val_paths, val_labels = val_paths[: args.limit], val_labels[: args.limit]
    config = RunConfig(
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        init=args.init_weights,
    )
    (out / "config.json").write_text(
        json.dumps({**config.__dict__, "augment": config.batch_augment().to_json()}, indent=1)
    )
    result = run(config, train_paths, train_labels, val_paths, val_labels, len(split.class_names), out)
    info_file = out / "run.json"
    earlier = json.loads(info_file.read_text())["fit_seconds"] if info_file.is_file() else 0.0
    total = earlier + result.fit_seconds
    config_json = config.train_config().to_json()
    info_file.write_text(
        json.dumps(
            {
                "variant": "robust-graph",
                "config": {**config_json, "epochs_run": len(result.history.get("loss", []))},
                "augment": config.batch_augment().to_json(),
                "precision": "float32",
                "backend": "tensorflow",
                "keras": __import__("keras").__version__,
                "device": "cpu (2 cores)",
                "fit_seconds": round(total, 1),
                "train_images_per_second": round(result.images_per_second, 1),
                "best_epoch": result.best_epoch,
                "init": f"{Path(args.init_weights).parent.name} (an earlier run of this recipe)"
                if args.init_weights
                else None,
                "pack": None,
            },
            indent=1,
        )
    )
    logging.info(
        "best epoch %d (selection score %.4f); %.0f s of training", result.best_epoch, result.best_score, total
    )


def checkpoint_stage(args: argparse.Namespace, out: Path) -> Path:
    target = out / NAME
    if not target.exists():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "adopt_device_weights.py"),
                "--weights",
                str(out / "best.weights.h5"),
                "--info",
                str(out / "run.json"),
                "--history",
                str(out / "history.json"),
                "--data",
                args.data,
                "--split",
                args.split,
                "--out",
                str(target),
                "--name",
                NAME,
            ],
            check=True,
        )
    return target


def compare_stage(args: argparse.Namespace, out: Path, candidate: Path) -> None:
    robustness = out / "robustness.json"
    if not robustness.is_file():
        run_robustness(args, "--kinds", "scratch", "--scratch", str(candidate), "--out", str(robustness))
    old = out / "robustness-bundled.json"
    if not old.is_file():
        run_robustness(args, "--kinds", "scratch", "--out", str(old))
    validation = out / "validation.json"
    if not validation.is_file():
        write_json(validation, {"bundled": val_accuracies(args, BUNDLED), "new": val_accuracies(args, candidate)})
    tables = json.loads(old.read_text())["scratch"], json.loads(robustness.read_text())["scratch"]
    print(compare_table(*tables, json.loads(validation.read_text()), out))


def run_robustness(args: argparse.Namespace, *more: str) -> None:
    """scripts/robustness.py on --data, with `more` arguments, and --cross-source when given."""
    extra = ["--cross-source", args.cross_source] if args.cross_source else []
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "robustness.py"), "--data", args.data, *more, *extra], check=True
    )


def val_accuracies(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Accuracy of a checkpoint on each validation view the epoch was chosen on (scratch_run.VAL_VIEWS)."""
    import numpy as np

    from animalcls.data import dataset
    from animalcls.serving.forward import slices
    from animalcls.serving.inference import load_predictor
    from animalcls.training.scratch_run import val_views

    predictor = load_predictor(folder)
    paths, labels = dataset.Split.load(Path(args.split)).paths("val", dataset.dataset_root(args.data))
    views = val_views(paths, predictor.image_size)
    return {
        name: float((predictor.outputs.over(slices(x, 64))["probabilities"].argmax(1) == np.asarray(labels)).mean())
        for name, x in views.items()
    }


def compare_table(old: dict, new: dict, validation: dict, out: Path) -> str:
    best = json.loads((out / "best.json").read_text())
    run = json.loads((out / "run.json").read_text())
    lines = ["| | bundled scratch | new scratch |", "|---|---|---|"]
    for name, value in old["degraded_test_accuracy"].items():
        lines.append(f"| test, {name} | {value:.3f} | {new['degraded_test_accuracy'][name]:.3f} |")
    if old.get("cross_source") and new.get("cross_source"):
        lines.append(
            f"| cross-source, all | {old['cross_source']['accuracy']:.3f} | {new['cross_source']['accuracy']:.3f} |"
        )
        for cls, value in old["cross_source"]["per_class"].items():
            lines.append(f"| cross-source, {cls} | {value:.3f} | {new['cross_source']['per_class'][cls]:.3f} |")
    for name, value in validation["bundled"].items():
        lines.append(
            f"| validation, {name} (new: epoch {best['epoch']}) | {value:.3f} | {validation['new'][name]:.3f} |"
        )
    lines.append(f"| training img/s, wall s | | {run['train_images_per_second']}, {run['fit_seconds']} |")
    return "\n".join(lines)


def losses(out: Path) -> list[str]:
    """Every comparison the new model does not win, as text (empty: it wins them all)."""
    old = json.loads((out / "robustness-bundled.json").read_text())["scratch"]
    new = json.loads((out / "robustness.json").read_text())["scratch"]
    validation = json.loads((out / "validation.json").read_text())
    rows = [(f"validation {k}", v, validation["new"][k]) for k, v in validation["bundled"].items()]
    rows += [(f"test {k}", v, new["degraded_test_accuracy"][k]) for k, v in old["degraded_test_accuracy"].items()]
    if old.get("cross_source"):
        rows.append(("cross-source", old["cross_source"]["accuracy"], new["cross_source"]["accuracy"]))
    return [f"{name}: {after:.3f} vs {before:.3f} bundled" for name, before, after in rows if after <= before]


def adopt_stage(args: argparse.Namespace, out: Path, candidate: Path) -> None:
    lost = losses(out)
    if lost:
        raise SystemExit("not adopted: the new model does not win " + "; ".join(lost))
    import shutil

    from animalcls.core.atomic import replace_dir
    from animalcls.serving.convert_onnx import write_onnx
    from animalcls.store.checkpoints import SPLIT_FILE
    from animalcls.trust.cells import PREDICTIONS_FILE, compute_predictions, save_predictions

    staging = BUNDLED.with_name(f".{BUNDLED.name}.adopt")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(candidate, staging)
    shutil.copy2(BUNDLED / SPLIT_FILE, staging / SPLIT_FILE)  # the same split, relative to checkpoints/
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["dataset"]["root_relative"] = json.loads((BUNDLED / "manifest.json").read_text())["dataset"][
        "root_relative"
    ]
    write_json(staging / "manifest.json", manifest)
    write_onnx(staging)
    replace_dir(staging, BUNDLED)
    root = Path(args.data).resolve()
    save_predictions(BUNDLED, compute_predictions(BUNDLED, root), target=BUNDLED / PREDICTIONS_FILE)
    scripts = REPO / "scripts"
    shared = Path(args.data).resolve().parents[1]
    subprocess.run(
        [sys.executable, str(scripts / "build_scope.py"), str(BUNDLED), "--shared", str(shared), "--overwrite"],
        check=True,
    )
    run_robustness(args)
    logging.info("adopted %s as %s", candidate, BUNDLED)


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler()],
    )
    from animalcls.core.logs import quiet_tensorflow

    quiet_tensorflow()
    began = time.time()
    if "train" in args.stages:
        train_stage(args, out)
    candidate = out / NAME
    if "checkpoint" in args.stages:
        candidate = checkpoint_stage(args, out)
    if "compare" in args.stages:
        compare_stage(args, out, candidate)
    if "adopt" in args.stages:
        adopt_stage(args, out, candidate)
    logging.info("done in %.0f s", time.time() - began)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
