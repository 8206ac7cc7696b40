"""Workflows composed from the library: scan -> split -> build -> fit -> evaluate -> draw -> save.
The CLI and the app call these; each stage lives in its own module."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from . import backbones, checkpoints, data, evaluate, models, plots
from .hooks import TrainHooks
from .labels import resolve_classes
from .train import FitResult, TrainConfig, fit


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill in the backbone and image size a config leaves open."""
    backbone = config.backbone or backbones.default_backbone()
    size = config.image_size or backbones.get_backbone(backbone).default_image_size
    return config.replace(backbone=backbone, image_size=size)


def build_model(config: TrainConfig, num_classes: int) -> keras.Model:
    if config.model == "scratch":
        return models.build_scratch(
            config.backbone, num_classes, config.image_size, config.dropout, config.bn_momentum
        )
    if config.model == "transfer":
        return models.build_transfer(config.backbone, num_classes, config.image_size, config.weights, config.dropout)
    raise ValueError(f"Unknown model kind '{config.model}': use 'scratch' or 'transfer'.")


def scan_and_split(
    data_dir: str | Path,
    classes: Sequence[str] | None,
    seed: int,
    on_scan: Callable[[int, int], None] | None = None,
) -> tuple[data.Scan, data.Split]:
    scan = data.scan_folder(data_dir, classes, progress=on_scan)
    return scan, data.split_scan(scan, seed=seed)


def datasets_for(split: data.Split, config: TrainConfig) -> tuple[Any, Any, int]:
    """Training (shuffled, flipped) and validation pipelines, and training steps per epoch."""
    n = len(split.class_names)
    train_paths, train_labels = split.paths("train")
    val_paths, val_labels = split.paths("val")
    kwargs = dict(num_classes=n, image_size=config.image_size, batch_size=config.batch_size, seed=config.seed)
    train_ds = data.make_dataset(
        train_paths, train_labels, training=config.flip, strong_augment=config.strong_augment, **kwargs
    )
    val_ds = data.make_dataset(val_paths, val_labels, training=False, **kwargs) if val_paths else None
    return train_ds, val_ds, -(-len(train_paths) // config.batch_size)


def train_checkpoint(
    data_dir: str | Path,
    config: TrainConfig,
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[Path, data.Scan, FitResult, dict[str, Any]]:
    """Train one model on a folder of photos and write a complete checkpoint folder."""
    hooks = hooks or TrainHooks()
    config = resolve_config(config)
    keras.utils.set_random_seed(config.seed)
    # Build first: a missing weights file or bad backbone fails before a long folder scan.
    model = build_model(config, len(resolve_classes(classes)))
    scan, split = scan_and_split(data_dir, classes, config.seed, hooks.on_scan)
    train_ds, val_ds, steps = datasets_for(split, config)
    out_dir = Path(out_dir)
    workdir = out_dir.parent / f".{out_dir.name}.work"
    result = fit(model, config, train_ds, val_ds, workdir, steps, hooks.on_batch, hooks.on_epoch, hooks.cancel)
    test_paths, test_labels = split.paths("test")
    evaluation = evaluate.evaluate_paths(
        model, test_paths, test_labels, scan.class_names, config.image_size, on_batch=hooks.on_eval
    )
    split.root_relative = os.path.relpath(split.root, out_dir.resolve())
    manifest = make_manifest(name or out_dir.name, config, scan, split, result)
    path = save_with_figures(out_dir, model, manifest, result.history, evaluation, split)
    shutil.rmtree(workdir, ignore_errors=True)
    write_serving_graph(path, model)
    return path, scan, result, evaluation


def write_serving_graph(folder: Path, model: keras.Model) -> None:
    """Add model.onnx next to model.keras, so serving it needs neither a conversion nor
    TensorFlow. Best effort: without it the graph is built on first use, or TF serves."""
    from .onnx_engine import conversion_available

    if not conversion_available():
        return
    from .convert_onnx import write_onnx

    try:
        write_onnx(folder, model)
    except Exception as exc:  # noqa: BLE001 - the checkpoint itself is complete and saved
        print(f"warning: no ONNX graph written for {folder.name} ({exc}); it is built on first use.", file=sys.stderr)


def make_manifest(
    name: str, config: TrainConfig, scan: data.Scan, split: data.Split, result: FitResult
) -> dict[str, Any]:
    spec = backbones.get_backbone(config.backbone)
    return {
        "name": name,
        "kind": config.model,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "class_names": list(scan.class_names),
        "preprocessing": spec.preprocessing.describe(),
        "weights": config.weights if config.model == "transfer" else None,
        "training": {
            **config.to_json(),
            "seconds": round(result.seconds, 1),
            "epochs_run": len(result.history.get("loss", [])),
            "best_epoch": result.best_epoch,
            "cancelled": result.cancelled,
        },
        "dataset": {
            **split.summary(),
            "class_folders": scan.class_folders,
            "skipped": [{"path": rel, "reason": why} for rel, why in scan.skipped],
            "split_file": checkpoints.SPLIT_FILE,
        },
        "created": checkpoints.now_iso(),
        "versions": checkpoints.library_versions(),
    }


def save_with_figures(
    out_dir: Path, model: Any, manifest: dict[str, Any], history: dict[str, list[float]],
    evaluation: dict[str, Any], split: data.Split,
) -> Path:
    """Draw the training curves and confusion matrix, then save the checkpoint folder."""
    figures = plots.checkpoint_figures(history, evaluation, manifest["name"])
    return checkpoints.save_checkpoint(out_dir, model, manifest, history, evaluation, split, figures=figures)


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    data_dir: str | Path | None = None,
    on_batch: Callable[[int, int | None], None] | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """Evaluate on the recorded test split, or on every image of the checkpoint's classes
    in `data_dir` when given. The forward passes run on `engine` (see inference.load_predictor)."""
    from .inference import load_predictor

    predictor = load_predictor(checkpoint_dir, engine)
    checkpoint = predictor.checkpoint
    paths, labels = evaluation_paths(checkpoint.path, data_dir, checkpoint.class_names)
    return evaluate.evaluate_paths(
        None, paths, labels, checkpoint.class_names, checkpoint.image_size, on_batch=on_batch, forward=predictor.forward
    )


def evaluation_paths(
    checkpoint_dir: str | Path, data_dir: str | Path | None = None, class_names: Sequence[str] | None = None,
) -> tuple[list[str], list[int]]:
    """(image files, labels) `evaluate_checkpoint` uses: the recorded test split, or every image
    of the checkpoint's classes in `data_dir`."""
    folder = Path(checkpoint_dir)
    if data_dir is None:
        split = data.Split.load(_split_file(folder))
        root = split.locate_root(folder)
        if root is None:
            raise data.DataError(
                f"The recorded dataset folder {split.root} is not on this machine: pass --data DIR to evaluate elsewhere."
            )
        return split.paths("test", root)
    names = class_names or checkpoints.read_manifest(folder)["class_names"]
    scan = data.scan_folder(data_dir, names)
    return [str(scan.root / s.rel) for s in scan.samples], [s.label for s in scan.samples]


def _split_file(folder: Path) -> Path:
    path = folder / checkpoints.SPLIT_FILE
    if not path.is_file():
        raise checkpoints.CheckpointError(f"{folder} has no {checkpoints.SPLIT_FILE}: pass --data DIR.")
    return path
