"""Workflows composed from the library: scan -> split -> build -> fit -> evaluate -> draw -> save.
The CLI and the app call these; each stage lives in its own module."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from animalcls.core.atomic import work_dir
from animalcls.core.errors import Cancelled
from animalcls.core.hooks import TrainHooks
from animalcls.core.labels import resolve_classes
from animalcls.data import dataset as data
from animalcls.models import backbones
from animalcls.models import builders as models
from animalcls.store import checkpoints
from animalcls.store.manifest import Manifest
from animalcls.training import distribute, evaluate, plots
from animalcls.training.train import FitResult, TrainConfig, fit

log = logging.getLogger(__name__)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill in the backbone and image size a config leaves open."""
    backbone = config.backbone or backbones.default_backbone()
    size = config.image_size or backbones.get_backbone(backbone).default_image_size
    return config.replace(backbone=backbone, image_size=size)


def build_model(config: TrainConfig, num_classes: int) -> keras.Model:
    if config.model == "scratch":
        return models.build_scratch(config.backbone, num_classes, config.image_size, config.dropout, config.bn_momentum)
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


def datasets_for(split: data.Split, config: TrainConfig, replicas: int = 1) -> tuple[Any, Any, int]:
    """Training (shuffled, flipped) and validation pipelines of global batches
    (`config.batch_size` per replica), and training steps per epoch."""
    n = len(split.class_names)
    train_paths, train_labels = split.paths("train")
    val_paths, val_labels = split.paths("val")
    # Keras's distributed evaluate fails on a batch that does not split evenly over the
    # replicas (AddN shape mismatch): validation drops at most replicas - 1 photos.
    keep = len(val_paths) - len(val_paths) % replicas
    val_paths, val_labels = val_paths[:keep], val_labels[:keep]
    batch = config.batch_size * replicas
    kwargs = dict(num_classes=n, image_size=config.image_size, batch_size=batch, seed=config.seed)
    val_ds = data.make_dataset(val_paths, val_labels, training=False, **kwargs) if val_paths else None
    if config.robust_augment:
        # The numpy/PIL stream is a plain Python iterator: it is not sharded (single-worker only).
        from animalcls.data import augment

        recipe = augment.RobustAugment(config.image_size, flip=config.flip)
        stream = augment.batch_stream(
            augment.load_photos(train_paths), train_labels, n, recipe, batch, config.seed, config.mix
        )
        return stream, val_ds, augment.steps_per_epoch(len(train_paths), batch)
    train_ds = data.make_dataset(
        train_paths, train_labels, training=config.flip, strong_augment=config.strong_augment, **kwargs
    )
    if replicas > 1 or config.distribute != "none":
        train_ds = distribute.shard_by_data(train_ds)
        val_ds = distribute.shard_by_data(val_ds) if val_ds is not None else None
    return train_ds, val_ds, -(-len(train_paths) // batch)


def train_checkpoint(
    data_dir: str | Path,
    config: TrainConfig,
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    hooks: TrainHooks | None = None,
) -> tuple[Path | None, data.Scan, FitResult, dict[str, Any]]:
    """Train one model on a folder of photos and write a complete checkpoint folder (on a
    multi-worker run only the chief writes it; the others return None as the path).
    Cancelling (hooks.cancel) keeps the epochs that finished; before the first, it raises
    errors.Cancelled and writes nothing."""
    hooks = hooks or TrainHooks()
    out_dir = Path(out_dir)
    if out_dir.exists():  # checked first: finding out after the training would waste all of it
        raise checkpoints.CheckpointError(f"Checkpoint folder already exists: {out_dir} (choose another --out).")
    config = resolve_config(config)
    n_classes = len(resolve_classes(classes))
    # The strategy first: TensorFlow's devices (and a multi-worker cluster) are set up before any op.
    plan = distribute.make_plan(config.distribute, config.mixed_precision)
    # Non-chief workers of a cluster train too but write nothing: their scratch folder is their own.
    work_target = out_dir if plan.is_chief else out_dir.with_name(f"{out_dir.name}-worker-{os.getpid()}")
    with work_dir(work_target) as workdir:
        with distribute.training_scope(plan):
            keras.utils.set_random_seed(config.seed)
            # Build first: a missing weights file or bad backbone fails before a long folder scan.
            model = build_model(config, n_classes)
            if plan.replicas > 1:
                distribute.set_batchnorm_sync(model, True)
            scan, split = scan_and_split(data_dir, classes, config.seed, hooks.on_scan)
            train_ds, val_ds, steps = datasets_for(split, config, plan.replicas)
            result = fit(model, config, train_ds, val_ds, workdir, steps, hooks.on_batch, hooks.on_epoch, hooks.cancel)
        require_an_epoch(result)
        if plan.kind != "none" or plan.policy != "float32":
            model = distribute.float32_copy(
                model, lambda: build_model(dataclasses.replace(config, weights=None), n_classes)
            )
        test_paths, test_labels = split.paths("test")
        evaluation = evaluate.evaluate_paths(
            model, test_paths, test_labels, scan.class_names, config.image_size, on_batch=hooks.on_eval
        )
        if not plan.is_chief:
            return None, scan, result, evaluation
        split.root_relative = os.path.relpath(split.root, out_dir.resolve())
        manifest = make_manifest(name or out_dir.name, config, scan, split, result, plan.describe())
        path = save_with_figures(out_dir, model, manifest, result.history, evaluation, split)
    write_serving_graph(path, model)
    return path, scan, result, evaluation


def require_an_epoch(result: FitResult) -> None:
    """A run cancelled before its first epoch finished has nothing worth saving."""
    if result.cancelled and not result.history.get("loss"):
        raise Cancelled("Cancelled before the first epoch finished: nothing was saved.")


def write_serving_graph(folder: Path, model: keras.Model) -> None:
    """Add model.onnx next to model.keras, so serving it needs neither a conversion nor
    TensorFlow. Best effort: without it the graph is built on first use, or TF serves."""
    from animalcls.serving.onnx_engine import conversion_available

    if not conversion_available():
        return
    from animalcls.serving.convert_onnx import write_onnx

    try:
        write_onnx(folder, model)
    except Exception as exc:  # noqa: BLE001 - the checkpoint itself is complete and saved
        log.warning("no ONNX graph written for %s (%s); it is built on first use.", folder.name, exc)


def make_manifest(
    name: str,
    config: TrainConfig,
    scan: data.Scan,
    split: data.Split,
    result: FitResult,
    scale_out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = backbones.get_backbone(config.backbone)
    return Manifest.new(
        name,
        config.model,
        config.backbone,
        config.image_size,
        list(scan.class_names),
        preprocessing=spec.preprocessing.describe(),
        weights=config.weights if config.model == "transfer" else None,
        training={
            **config.to_json(),
            "seconds": round(result.seconds, 1),
            "epochs_run": len(result.history.get("loss", [])),
            "best_epoch": result.best_epoch,
            "cancelled": result.cancelled,
            **({"scale_out": scale_out} if scale_out else {}),
        },
        dataset={
            **split.summary(),
            "class_folders": scan.class_folders,
            "skipped": [{"path": rel, "reason": why} for rel, why in scan.skipped],
            "split_file": checkpoints.SPLIT_FILE,
        },
    ).to_json()


def save_with_figures(
    out_dir: Path,
    model: Any,
    manifest: dict[str, Any],
    history: dict[str, list[float]],
    evaluation: dict[str, Any],
    split: data.Split,
    write_model: Callable[[Path], None] | None = None,
    draw: bool = True,
) -> Path:
    """Draw the training curves and confusion matrix (unless not `draw`), then save the
    checkpoint folder (`write_model`: see checkpoints.save_checkpoint)."""
    note = plots.loss_note(manifest.get("training") or {}, len(manifest["class_names"]))
    figures = plots.checkpoint_figures(history, evaluation, manifest["name"], note) if draw else {}
    return checkpoints.save_checkpoint(
        out_dir, model, manifest, history, evaluation, split, figures=figures, write_model=write_model
    )


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    data_dir: str | Path | None = None,
    on_batch: Callable[[int, int | None], None] | None = None,
    engine: str | None = None,
    include_training: bool = False,
    selection: tuple[list[str], list[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate on the recorded test split, or on the images of the checkpoint's classes in
    `data_dir` when given. Photos of `data_dir` that the checkpoint trained or validated on
    (named in its split.json) are left out unless `include_training`. The result's "photos"
    says which photos were scored. The forward passes run on `engine` (see inference.load_predictor).
    `selection`: `evaluation_paths`' answer when the caller already has it (the folder is then
    not scanned again)."""
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(checkpoint_dir, engine)
    checkpoint = predictor.checkpoint
    paths, labels, photos = selection or evaluation_paths(checkpoint.path, data_dir, include_training)
    result = evaluate.evaluate_paths(
        None, paths, labels, checkpoint.class_names, checkpoint.image_size, on_batch=on_batch, forward=predictor.outputs
    )
    return {**result, "photos": photos}


def evaluation_paths(
    checkpoint_dir: str | Path,
    data_dir: str | Path | None = None,
    include_training: bool = False,
) -> tuple[list[str], list[int], dict[str, Any]]:
    """(image files, labels, what they are) that `evaluate_checkpoint` scores: the recorded test
    split, or the images of the checkpoint's classes in `data_dir` (see `_photos_in`)."""
    folder = Path(checkpoint_dir)
    if data_dir is not None:
        return _photos_in(folder, data_dir, include_training)
    split = data.Split.load(_split_file(folder))
    root = split.require_root(folder)
    paths, labels = split.paths("test", root)
    photos = {
        "description": f"the recorded test split: {len(paths)} photos of {root}",
        "root": str(root),
        "test_split": len(paths),
        "outside_split": 0,
        "training": 0,
        "training_left_out": 0,
    }
    return paths, labels, photos


def _photos_in(folder: Path, data_dir: str | Path, include_training: bool) -> tuple[list[str], list[int], dict]:
    """The images of `data_dir` to score, and what they are, for the report."""
    scan = data.scan_folder(data_dir, checkpoints.read_manifest(folder)["class_names"])
    split_file = folder / checkpoints.SPLIT_FILE
    split = data.Split.load(split_file) if split_file.is_file() else None
    learned = {rel for rel, _ in (split.train + split.val)} if split else set()
    tested = {rel for rel, _ in split.test} if split else set()
    samples = [s for s in scan.samples if include_training or s.rel not in learned]
    if not samples:
        raise data.DataError(
            f"Every photo of {scan.root} was used to train or validate this checkpoint: nothing is left to test on "
            "(--include-training-photos scores them anyway, which is not a test score)."
        )
    training = sum(s.rel in learned for s in scan.samples)
    counts = {
        "root": str(scan.root),
        "test_split": sum(s.rel in tested for s in samples),
        "training": training if include_training else 0,
        "training_left_out": 0 if include_training else training,
    }
    counts["outside_split"] = len(samples) - counts["test_split"] - counts["training"]
    text = f"{len(samples)} photos of {scan.root}: "
    if split is None:
        text += "the checkpoint records no split, so it cannot tell its training photos from others"
    else:
        text += (
            f"{counts['test_split']} of the checkpoint's recorded test split, "
            f"{counts['outside_split']} in none of its splits"
        )
    if counts["training"]:
        text += f", and {training} TRAINING/VALIDATION photos the model learned from: this is not a test score"
    elif counts["training_left_out"]:
        text += f"; left out {training} training/validation photos (--include-training-photos scores them too)"
    return [str(scan.root / s.rel) for s in samples], [s.label for s in samples], {"description": text, **counts}


def _split_file(folder: Path) -> Path:
    path = folder / checkpoints.SPLIT_FILE
    if not path.is_file():
        raise checkpoints.CheckpointError(f"{folder} has no {checkpoints.SPLIT_FILE}: pass --data DIR.")
    return path
