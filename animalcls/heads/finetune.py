"""Fast fine-tuning of a transfer checkpoint into a NEW checkpoint folder.

With the backbone frozen (the default) the backbone's output never changes, so it is computed
once per image and flip into the feature cache (features.py) and only the head trains, in NumPy
(heads.head_fit, the one head trainer); its weights go back into the full model, which is saved
with the new head. With `unfreeze_layers > 0` the top backbone layers train too,
which needs real images every epoch (slow). The source checkpoint is only ever read.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import work_dir
from animalcls.core.errors import CheckpointError, DataError
from animalcls.core.hooks import TrainHooks
from animalcls.data import dataset as data
from animalcls.heads.derive import derived_manifest, output_folder, save_derived
from animalcls.heads.finetune_head import head_patched_writer, source_model, train_head
from animalcls.models import builders as models
from animalcls.serving.features import FeatureCache, cached_feature_groups, pooled_forward
from animalcls.store import checkpoints
from animalcls.store.stored_features import StoredFeatures
from animalcls.training import distribute, evaluate
from animalcls.training.train import PRESETS, FitResult, TrainConfig, fit
from animalcls.training.workflows import datasets_for, require_an_epoch

FEATURE_BATCH = 32


@dataclass
class FinetuneResult:
    path: Path  # the NEW checkpoint folder
    source: Path  # the checkpoint it started from
    evaluation: dict[str, Any]  # test split, evaluate.evaluation_report format
    history: dict[str, list[float]]
    seconds: float
    cancelled: bool


def finetune(
    checkpoint_dir: Path,
    data_dir: Path | None = None,
    epochs: int = 5,
    learning_rate: float = 1e-3,
    unfreeze_layers: int = 0,
    out_dir: Path | None = None,
    hooks: TrainHooks | None = None,
    batch_size: int = 64,
    stored: StoredFeatures | None = None,
    distribute_kind: str = "none",
    mixed_precision: bool = False,
    figures: bool = True,
) -> FinetuneResult:
    """Continue training a transfer checkpoint on its recorded split and save the result as a
    new checkpoint folder (default: runs/finetunes/<source>-ft-<time>).

    With `stored` (stored_features.find_features), the head trains on those stored pooled
    features and is evaluated on the stored test features: no photo is read, so this works
    where the dataset is absent. No flip augmentation then (only unflipped features are stored).

    Cancelling (hooks.cancel) during training stops after the current batch and saves the
    epochs that finished (the unfinished one is undone), marked cancelled. Before the first
    epoch finished it raises errors.Cancelled and saves nothing (during feature extraction:
    features.FeatureExtractionCancelled, a subclass).

    `distribute_kind` and `mixed_precision` (distribute.py) apply to `unfreeze_layers > 0`
    only: the head alone trains on cached features in seconds, with nothing to scale out.

    `figures=False` leaves the curves and confusion matrix PNGs out of the new folder (the
    app draws them when shown): drawing them took 1-3 s of a warm head-only fine-tune.
    """
    import keras

    start = time.perf_counter()
    hooks = hooks or TrainHooks()
    source = Path(checkpoint_dir)
    manifest = checkpoints.read_manifest(source)
    if manifest["kind"] != "transfer":
        raise CheckpointError(
            f"{source} is a {manifest['kind']} checkpoint: only transfer checkpoints (frozen pretrained "
            "backbone + head) can be fine-tuned."
        )
    if epochs < 1 or unfreeze_layers < 0:
        raise ValueError(f"Need epochs >= 1 and unfreeze_layers >= 0, got {epochs} and {unfreeze_layers}.")
    distribute.check_finetune_request(unfreeze_layers, distribute_kind, mixed_precision)
    out_dir = output_folder(source, out_dir)
    if stored is not None and unfreeze_layers > 0:
        raise DataError("Unfreezing backbone layers needs the photos; stored features only train the head.")
    split = _load_split(source, manifest, data_dir, hooks) if stored is None else _recorded_split(source, manifest)
    config = finetune_config(manifest, epochs, learning_rate, batch_size).replace(
        distribute=distribute_kind, mixed_precision=mixed_precision
    )
    located = Path(split.root) if split.root else split.locate_root(source)
    split.root_relative = os.path.relpath(located, out_dir.parent.resolve() / out_dir.name) if located else None
    with work_dir(out_dir) as workdir, ExitStack() as stack:
        if unfreeze_layers > 0:
            model, result, evaluation, extra = _train_images(source, split, config, unfreeze_layers, workdir, hooks)
        else:
            keras.utils.set_random_seed(config.seed)
            # Cached across fine-tunes of the same file; its head is restored when this one ends.
            model, key = stack.enter_context(source_model(source))
            if stored is not None:
                result, evaluation, extra = _train_stored(model, key, stored, split, config, workdir, hooks)
            else:
                result, evaluation, extra = _train_features(model, key, source, split, config, workdir, hooks)
        seconds = time.perf_counter() - start
        new_manifest = _manifest(manifest, source, out_dir, split, config, unfreeze_layers, result, seconds, extra)
        # Head-only: the source's model.keras with the head's weights replaced (no Keras save).
        writer = None if unfreeze_layers > 0 else head_patched_writer(source, model)
        path = save_derived(out_dir, model, new_manifest, result.history, evaluation, split, writer, figures)
    return FinetuneResult(path, source, evaluation, result.history, time.perf_counter() - start, result.cancelled)


def _load_split(source: Path, manifest: dict[str, Any], data_dir: Path | None, hooks: TrainHooks) -> data.Split:
    """The checkpoint's recorded split (rooted where the dataset is on this machine, or at
    `data_dir`); without split.json, a fresh scan and split of `data_dir`. `split.root` is set
    to the folder actually used."""
    class_names = list(manifest["class_names"])
    split_file = source / checkpoints.SPLIT_FILE
    if not split_file.is_file():
        if data_dir is None:
            raise DataError(
                f"{source} records no dataset split ({checkpoints.SPLIT_FILE}): pass --data DIR "
                "(or choose the dataset folder) to fine-tune on."
            )
        scan = data.scan_folder(data_dir, class_names, progress=hooks.on_scan)
        split = data.split_scan(scan, seed=int(manifest.get("training", {}).get("seed", 42)))
        split.root = str(scan.root.resolve())
        return split
    split = data.Split.load(split_file)
    if list(split.class_names) != class_names:
        raise CheckpointError(f"{split_file} lists classes {split.class_names}, the manifest {class_names}.")
    root = data.dataset_root(data_dir).resolve() if data_dir is not None else split.locate_root(source)
    if root is None:
        raise DataError(
            f"The dataset {source.name} was trained on ({split.describe()}) is not on this machine: pass "
            "--data DIR (or choose the dataset folder) to fine-tune on."
        )
    recorded = [rel for part in ("train", "val", "test") for rel, _ in getattr(split, part)]
    missing = [rel for rel in recorded if not (root / rel).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the recorded split are missing under {root}, e.g. {missing[0]}: "
            "pass --data DIR pointing at the dataset the checkpoint was trained on."
        )
    split.root = str(root)
    return split


def _recorded_split(source: Path, manifest: dict[str, Any]) -> data.Split:
    """The source's split.json for the record (sizes, classes); its photos are not needed."""
    split_file = source / checkpoints.SPLIT_FILE
    if not split_file.is_file():
        raise CheckpointError(f"Checkpoint {source.name} records no dataset split ({checkpoints.SPLIT_FILE}).")
    split = data.Split.load(split_file)
    if list(split.class_names) != list(manifest["class_names"]):
        raise CheckpointError(f"The split of {source.name} lists other classes than its manifest.")
    return split


def _train_stored(
    model: Any,
    key: str,
    stored: StoredFeatures,
    split: data.Split,
    config: TrainConfig,
    workdir: Path,
    hooks: TrainHooks,
) -> tuple[FitResult, dict[str, Any], dict[str, Any]]:
    """Train the head on stored features; evaluate it on the stored test features."""
    if stored.backbone_key != key:
        raise CheckpointError(f"The stored features of {stored.folder.name} were made by another backbone.")
    expected = {part: len(getattr(split, part)) for part in ("train", "val", "test")}
    if stored.sizes() != expected:
        raise CheckpointError(f"The stored features of {stored.folder.name} do not match its split ({expected}).")
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (stored.parts[p] for p in ("train", "val", "test"))
    result, evaluation, method = _fit_and_test(
        model,
        split,
        config,
        (train_x, train_y.tolist()),
        (val_x, val_y.tolist()),
        (test_x, test_y.tolist()),
        None,
        workdir,
        hooks,
    )
    return (
        result,
        evaluation,
        {"method": "stored-features", "features_from": stored.folder.name, "flip": False, "head_trainer": method},
    )


def _fit_and_test(
    model: Any,
    split: data.Split,
    config: TrainConfig,
    train: tuple[np.ndarray, list[int]],
    val: tuple[np.ndarray, list[int]],
    test: tuple[np.ndarray, list[int]],
    flipped: np.ndarray | None,
    workdir: Path,
    hooks: TrainHooks,
) -> tuple[FitResult, dict[str, Any], str]:
    """Train the head on features (head_fit, NumPy), then score the test features: (fit
    result, evaluation report, which trainer ran)."""
    result, probabilities = train_head(model, config, train, val if len(val[1]) else None, test[0], flipped, hooks)
    method = "numpy"
    require_an_epoch(result)
    evaluation = evaluate.evaluation_report(test[1], probabilities.argmax(axis=1).tolist(), split.class_names)
    return result, evaluation, method


def finetune_config(manifest: dict[str, Any], epochs: int, learning_rate: float, batch_size: int) -> TrainConfig:
    """The study's transfer preset (EarlyStopping 4, best val_loss kept, ReduceLROnPlateau 5)
    with this run's epochs, learning rate and batch; seed and flip follow the source run."""
    source = manifest.get("training") or {}
    config = PRESETS["transfer"].replace(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        backbone=manifest["backbone"],
        image_size=int(manifest["image_size"]),
        seed=source.get("seed"),
        flip=source.get("flip"),
        dropout=source.get("dropout"),
    )
    # Set even when None: replace() skips None, and "imagenet" would misreport a weights=None run.
    config.weights = manifest.get("weights")
    return config


def _train_features(
    model: Any, key: str, source: Path, split: data.Split, config: TrainConfig, workdir: Path, hooks: TrainHooks
) -> tuple[FitResult, dict[str, Any], dict[str, Any]]:
    """Train the head on cached features; evaluate the head on the test features, which
    equals evaluating the full model on the test images. Missing features are extracted
    through the source's ONNX graph when it has a fresh one (about 2x faster), else TensorFlow."""
    cache = FeatureCache()
    train_paths, train_labels = split.paths("train")
    val_paths, val_labels = split.paths("val")
    test_paths, test_labels = split.paths("test")
    groups = [(train_paths, False), (val_paths, False), (test_paths, False)]
    groups += [(train_paths, True)] if config.flip else []
    arrays = cached_feature_groups(
        model,
        groups,
        cache,
        FEATURE_BATCH,
        hooks.on_features,
        hooks.cancel,
        key=key,
        forward=lambda: pooled_forward(source),
    )
    train_flip_x = arrays[3] if config.flip else None
    result, evaluation, method = _fit_and_test(
        model,
        split,
        config,
        (arrays[0], train_labels),
        (arrays[1], val_labels),
        (arrays[2], test_labels),
        train_flip_x,
        workdir,
        hooks,
    )
    return result, evaluation, {"method": "cached-features", "feature_cache": cache.stats(), "head_trainer": method}


def _train_images(
    source: Path, split: data.Split, config: TrainConfig, unfreeze_layers: int, workdir: Path, hooks: TrainHooks
) -> tuple[Any, FitResult, dict[str, Any], dict[str, Any]]:
    """Train the top backbone layers and the head on image pipelines, on the configured
    strategy and dtype policy; evaluate the (float32) result on images."""
    import keras

    n = len(split.class_names)

    def build() -> Any:
        return models.build_transfer(config.backbone, n, config.image_size, None, config.dropout)

    plan = distribute.make_plan(config.distribute, config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    # Loaded outside the scope and copied into a model built inside it: the mixed policy
    # needs a fresh build anyway, and only the trained model's variables become mirrored.
    weights = checkpoints.load_checkpoint(source).model.get_weights()
    with distribute.training_scope(plan):
        model = build()
        model.set_weights(weights)
        models.unfreeze(model, unfreeze_layers)
        train_ds, val_ds, steps = datasets_for(split, config, plan.replicas)
        result = fit(model, config, train_ds, val_ds, workdir, steps, hooks.on_batch, hooks.on_epoch, hooks.cancel)
    require_an_epoch(result)
    # Saved frozen again, like every transfer checkpoint: the next fine-tune starts from a
    # frozen backbone unless it asks to unfreeze.
    models.unfreeze(model, 0)
    if plan.kind != "none" or plan.policy != "float32":
        model = distribute.float32_copy(model, build)
    test_paths, test_labels = split.paths("test")
    evaluation = evaluate.evaluate_paths(
        model, test_paths, test_labels, split.class_names, config.image_size, on_batch=hooks.on_eval
    )
    return model, result, evaluation, {"method": "images", "scale_out": plan.describe()}


def _manifest(
    source_manifest: dict[str, Any],
    source: Path,
    out_dir: Path,
    split: data.Split,
    config: TrainConfig,
    unfreeze_layers: int,
    result: FitResult,
    seconds: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The source manifest with this run's name, provenance, training and dataset."""
    dataset = {k: v for k, v in (source_manifest.get("dataset") or {}).items() if k != "root"}
    dataset.update(split.summary(), split_file=checkpoints.SPLIT_FILE)
    training = {
        **config.to_json(),
        "finetune": True,
        "unfreeze_layers": unfreeze_layers,
        "seconds": round(seconds, 1),
        "fit_seconds": round(result.seconds, 1),
        "epochs_run": len(result.history.get("loss", [])),
        "best_epoch": result.best_epoch,
        "cancelled": result.cancelled,
        **extra,
    }
    return derived_manifest(source, out_dir.name, training, dataset)
