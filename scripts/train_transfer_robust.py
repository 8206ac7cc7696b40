"""Retrain a transfer checkpoint's head on frozen-backbone features of augmented and degraded
views of the training photos, so it holds up on blurred, downscaled or recompressed photos.

    python scripts/train_transfer_robust.py --checkpoint checkpoints/transfer-efficientnet_lite0 \\
        --data ../shared/data/animals10-offline/raw-img --out runs/transfer-robust-efficientnet_lite0

Uses the checkpoint's own split (train for the head, val for picking the epoch; the test photos
are only evaluated). Each training photo gives its plain view and `--views` views drawn by
augment.RobustAugment; the validation score is the mean over the plain photos and each
degradation of scripts/robustness.py, so the epoch is picked for robustness too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# Degradations stronger than the default recipe's: the frozen features need to see them often.
HEAD_AUGMENT = dict(crop_scale=(0.35, 1.0), blur_p=0.4, downscale_p=0.4, jpeg_p=0.3, grey_p=0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--views", type=int, default=2, help="augmented views per training photo (default 2)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    args = parser.parse_args()
    if not (Path(args.checkpoint) / "model.keras").is_file():
        parser.error(f"--checkpoint {args.checkpoint} holds no model.keras")
    from animalcls.logs import quiet_tensorflow

    quiet_tensorflow()
    import keras
    from PIL import Image

    from animalcls import augment, checkpoints, data, evaluate, models, workflows
    from animalcls.features import feature_model
    from animalcls.inference import to_model_input
    from animalcls.train import FitResult, HistoryRecorder, TrainConfig
    from robustness import DEGRADATIONS

    source = checkpoints.load_checkpoint(args.checkpoint)
    model, size = source.model, source.image_size
    split = data.Split.load(Path(args.checkpoint) / checkpoints.SPLIT_FILE)
    scan = data.scan_folder(args.data, split.class_names)
    n = len(split.class_names)
    extractor = feature_model(model)
    start = time.perf_counter()

    def features(photos: list, view) -> np.ndarray:
        """Pooled features of view(photo) for every photo, 64 at a time (bounded memory)."""
        out = []
        for i in range(0, len(photos), 64):
            out.append(extractor.predict_on_batch(np.stack([view(p) for p in photos[i : i + 64]])))
        return np.concatenate(out)

    train_paths, train_labels = split.paths("train", scan.root)
    photos = augment.load_photos(train_paths)
    recipe = augment.RobustAugment(size, **HEAD_AUGMENT)
    rng = np.random.default_rng(split.seed)
    parts = [features(photos, lambda p: to_model_input(p, size))]
    for _ in range(args.views):
        parts.append(features(photos, lambda p: recipe(p, rng).astype(np.float32)))
    x_train = np.concatenate(parts)
    y_train = keras.utils.to_categorical(np.tile(train_labels, args.views + 1), n)
    print(f"train features {x_train.shape} in {time.perf_counter() - start:.0f} s", flush=True)
    val_paths, val_labels = split.paths("val", scan.root)
    val_photos = augment.load_photos(val_paths)
    x_val = np.concatenate(
        [features(val_photos, lambda p, fn=fn: to_model_input(fn(p), size)) for fn in DEGRADATIONS.values()]
    )
    y_val = keras.utils.to_categorical(np.tile(val_labels, len(DEGRADATIONS)), n)
    print(f"val features {x_val.shape} in {time.perf_counter() - start:.0f} s", flush=True)

    head = models.head_on_features(model)
    head.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"],
    )
    workdir = Path(args.out).parent / f".{Path(args.out).name}.work"
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = HistoryRecorder()
    best = keras.callbacks.ModelCheckpoint(
        str(workdir / "head.weights.h5"), monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    fit_start = time.perf_counter()
    head.fit(x_train, y_train, batch_size=64, epochs=args.epochs, validation_data=(x_val, y_val),
             callbacks=[recorder, best], verbose=0, shuffle=True)
    head.load_weights(workdir / "head.weights.h5")  # shares its layers with `model`
    losses = recorder.history["val_loss"]
    best_epoch = int(np.argmin(losses)) + 1
    print(f"best epoch {best_epoch}: val (plain + degraded) accuracy {recorder.history['val_accuracy'][best_epoch - 1]:.4f}")

    out = Path(args.out)
    split.root = str(scan.root.resolve())
    split.root_relative = os.path.relpath(split.root, out.resolve())
    test_paths, test_labels = split.paths("test", scan.root)
    evaluation = evaluate.evaluate_paths(model, test_paths, test_labels, scan.class_names, size)
    config = TrainConfig(**{k: v for k, v in source.manifest["training"].items() if k in TrainConfig.__dataclass_fields__})
    config = config.replace(epochs=args.epochs, learning_rate=args.learning_rate, label_smoothing=args.label_smoothing,
                            robust_augment=True, keep_best=True)
    result = FitResult(recorder.history, time.perf_counter() - fit_start, False, best_epoch)
    manifest = workflows.make_manifest(out.name, config, scan, split, result)
    manifest["training"]["where"] = {
        "script": "scripts/train_transfer_robust.py",
        "started_from": Path(args.checkpoint).name,
        "method": f"head retrained on frozen features of the plain photo and {args.views} RobustAugment views "
        "per training photo; epoch picked on the validation photos plain and under each degradation",
        "augment": recipe.to_json(),
        "feature_seconds": round(fit_start - start, 1),
    }
    workflows.save_with_figures(out, model, manifest, recorder.history, evaluation, split)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    print(f"{out}: test accuracy {evaluation['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
