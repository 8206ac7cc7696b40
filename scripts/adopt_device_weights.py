"""Turn weights trained on the GPU machine (scripts/train_scratch_device.py, JAX backend) into a
complete checkpoint folder here: the TensorFlow-backend model, manifest (saying where and how it
was trained), history, evaluation on the recorded test split, plots and the split itself.

    python scripts/adopt_device_weights.py --weights DIR/robust.weights.h5 --info DIR/robust.json \\
        --history DIR/robust.history.json --data ../shared/data/animals10-offline/raw-img \\
        --split checkpoints/scratch-efficientnet_lite0/split.json --out runs/scratch-robust-efficientnet_lite0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--weights", "--info", "--history", "--data", "--split", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--name", help="checkpoint name (default: the --out folder's name)")
    args = parser.parse_args()
    for name in ("weights", "info", "history", "split"):
        if not Path(getattr(args, name)).is_file():
            parser.error(f"--{name} {getattr(args, name)} is not a file")
    from animalcls.core.logs import quiet_tensorflow

    quiet_tensorflow()
    from animalcls.data import dataset as data
    from animalcls.models import builders as models
    from animalcls.training import evaluate, workflows
    from animalcls.training.train import FitResult, TrainConfig

    info = json.loads(Path(args.info).read_text())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in info["config"].items() if k in fields})
    split = data.Split.load(Path(args.split))
    scan = data.scan_folder(args.data, split.class_names)
    split.root = str(scan.root.resolve())
    out = Path(args.out)
    split.root_relative = os.path.relpath(split.root, out.resolve())
    model = models.build_scratch(
        config.backbone, len(split.class_names), config.image_size, config.dropout, config.bn_momentum
    )
    model.load_weights(args.weights)
    paths, labels = split.paths("test", scan.root)
    evaluation = evaluate.evaluate_paths(model, paths, labels, scan.class_names, config.image_size)
    history = json.loads(Path(args.history).read_text())
    result = FitResult(history, float(info["fit_seconds"]), False, None)
    manifest = workflows.make_manifest(args.name or out.name, config, scan, split, result)
    manifest["training"]["where"] = {
        "script": "scripts/train_scratch_device.py (see README, 'The bundled checkpoints')",
        "device": info["device"],
        "keras_backend": info["backend"],
        "keras": info["keras"],
        "precision": info["precision"],
        "variant": info["variant"],
        "augment": info["augment"],
        "train_images_per_second": info["train_images_per_second"],
        "started_from": info.get("init"),
        "training_photos": "the split's train/val photos"
        + (
            f", re-encoded at {info['pack']['size']} px, JPEG quality {info['pack']['jpeg_quality']}"
            if info.get("pack")
            else ""
        ),
    }
    workflows.save_with_figures(out, model, manifest, history, evaluation, split)
    print(f"{out}: test accuracy {evaluation['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
