"""Training with the study's presets and callbacks, per-epoch history, progress and cancel hooks."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from animalcls.core.atomic import write_json
from animalcls.core.hooks import BatchHook, EpochHook
from animalcls.training.schedules import cosine_rate


@dataclass
class TrainConfig:
    """One training configuration; the presets below hold the study's."""

    model: str  # "scratch" or "transfer"
    epochs: int
    batch_size: int
    optimizer: str = "adam"  # "adam" or "sgd"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD only
    early_stopping_patience: int | None = None
    reduce_lr_patience: int | None = None
    reduce_lr_factor: float = 0.2
    keep_best: bool = False  # ModelCheckpoint on val_loss, best weights restored at the end
    flip: bool = True  # horizontal-flip augmentation on the training split
    strong_augment: bool = False  # also random crops and brightness/contrast jitter
    # Wide crops, colour jitter, blur/downscale/JPEG/greyscale (augment.RobustAugment), fed from
    # numpy/PIL so any Keras backend trains on the same batches; `mix` is the share of MixUp/CutMix batches.
    robust_augment: bool = False
    mix: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0  # > 0 with "adam" gives AdamW (decoupled weight decay)
    cosine: bool = False  # per-epoch cosine decay to zero after `warmup_epochs` of linear warm-up
    warmup_epochs: int = 0
    dropout: float = 0.0
    bn_momentum: float | None = None  # scratch only: BatchNorm moving-average momentum
    seed: int = 42
    backbone: str | None = None  # None: backbones.default_backbone()
    image_size: int | None = None  # None: the backbone's default
    weights: str | None = "imagenet"  # transfer only: "imagenet" or a weights file path
    distribute: str = "none"  # "none", "mirrored" or "multiworker" (distribute.py)
    mixed_precision: bool = False  # mixed_float16 on GPU, mixed_bfloat16 on CPU

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, TrainConfig] = {
    # InceptionV3, weights=None: Adam 1e-3, batch 15, 20 epochs (the study's 0.92).
    "scratch": TrainConfig(model="scratch", epochs=20, batch_size=15),
    # The study's alternative optimiser for the scratch model.
    "scratch-sgd": TrainConfig(model="scratch", epochs=20, batch_size=15, optimizer="sgd", learning_rate=1e-2),
    # EfficientNet-Lite0 from scratch that learns animals rather than sources (README, "The
    # bundled checkpoints"): robust augmentation, MixUp/CutMix, label smoothing, AdamW, cosine.
    "scratch-robust": TrainConfig(
        model="scratch",
        epochs=150,
        batch_size=128,
        learning_rate=2e-3,
        robust_augment=True,
        mix=0.5,
        label_smoothing=0.1,
        weight_decay=0.05,
        cosine=True,
        warmup_epochs=5,
        dropout=0.2,
        bn_momentum=0.9,
        image_size=160,
        backbone="efficientnet_lite0",
    ),
    # Frozen ImageNet base + GAP/Dense 512/Dense N: Adam 1e-3, batch 64, 7 epochs (the study's 0.99).
    "transfer": TrainConfig(
        model="transfer",
        epochs=7,
        batch_size=64,
        early_stopping_patience=4,
        reduce_lr_patience=5,
        keep_best=True,
    ),
}


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam" and config.weight_decay > 0:
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    raise ValueError(f"Unknown optimizer '{config.optimizer}': use 'adam' or 'sgd'.")


def compile_model(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Categorical cross-entropy with accuracy, precision and recall, as in the study."""
    model.compile(
        optimizer=make_optimizer(config),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[
            "accuracy",
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )
    return model


class CosineWarmup(keras.callbacks.Callback):
    """Sets the learning rate each epoch: linear warm-up, then cosine decay to zero at
    `total_epochs` (an attribute, so a time-budgeted run can shorten the schedule mid-way)."""

    def __init__(self, peak: float, total_epochs: int, warmup_epochs: int = 0) -> None:
        super().__init__()
        self.peak, self.total_epochs, self.warmup_epochs = peak, total_epochs, warmup_epochs

    def rate(self, epoch: int) -> float:
        return cosine_rate(self.peak, self.total_epochs, self.warmup_epochs, epoch)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.learning_rate.assign(self.rate(epoch))


class HistoryRecorder(keras.callbacks.Callback):
    """Keeps the history and writes it to disk after every epoch, so a crashed or cancelled
    run keeps what it had."""

    def __init__(self, path: Path | None = None, on_epoch: EpochHook | None = None) -> None:
        super().__init__()
        self.path, self.on_epoch = path, on_epoch
        self.history: dict[str, list[float]] = {}
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        if self.path is not None:
            write_json(self.path, self.history)
        if self.on_epoch:
            self.on_epoch(epoch + 1, {k: list(v) for k, v in self.history.items()})


class ProgressHook(keras.callbacks.Callback):
    """Reports every training batch to `on_batch(epoch, batch, batches_per_epoch, logs)`."""

    def __init__(self, on_batch: BatchHook, steps: int | None) -> None:
        super().__init__()
        self.on_batch, self.steps, self.epoch = on_batch, steps, 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_batch(self.epoch, batch + 1, self.steps, {k: float(v) for k, v in (logs or {}).items()})


class CancelledMidEpoch(Exception):
    """Raised by CancelHook to leave model.fit() before the unfinished epoch is recorded."""


class CancelHook(keras.callbacks.Callback):
    """Cooperative cancel: leaves fit() after the current batch once `event` is set. It raises
    rather than setting `stop_training`, because Keras would then still end the epoch: the
    unfinished epoch would be validated, recorded in the history and possibly saved by
    ModelCheckpoint as the best. It keeps the weights of the last finished epoch for fit()."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event
        self.cancelled = False
        self.epoch_weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_weights = self.model.get_weights()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.event.is_set():
            self.cancelled = True
            raise CancelledMidEpoch


def study_callbacks(config: TrainConfig, workdir: Path) -> list[keras.callbacks.Callback]:
    """EarlyStopping, ModelCheckpoint (best val_loss) and ReduceLROnPlateau, as configured."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=config.early_stopping_patience))
    if config.keep_best:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(workdir / "best.weights.h5"), monitor="val_loss", save_best_only=True, save_weights_only=True
            )
        )
    if config.reduce_lr_patience and not config.cosine:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                "val_loss", factor=config.reduce_lr_factor, patience=config.reduce_lr_patience
            )
        )
    return callbacks


@dataclass
class FitResult:
    history: dict[str, list[float]]
    seconds: float
    cancelled: bool
    best_epoch: int | None


def fit(
    model: keras.Model,
    config: TrainConfig,
    train_ds: Any,
    val_ds: Any | None,
    workdir: Path,
    steps_per_epoch: int | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    cancel: threading.Event | None = None,
) -> FitResult:
    """Compile and fit `model`; restores the best val_loss weights when `config.keep_best`.
    A cancel keeps only finished epochs: `history` lists them, and the weights are those of
    the last one (or the best one); with none finished, the caller must not save the model."""
    workdir.mkdir(parents=True, exist_ok=True)
    compile_model(model, config)
    recorder = HistoryRecorder(workdir / "history.json", on_epoch)
    callbacks: list[keras.callbacks.Callback] = [recorder]
    if config.cosine:
        callbacks.append(CosineWarmup(config.learning_rate, config.epochs, config.warmup_epochs))
    if val_ds is not None:
        callbacks += study_callbacks(config, workdir)
    if on_batch:
        callbacks.append(ProgressHook(on_batch, steps_per_epoch))
    canceller = CancelHook(cancel) if cancel is not None else None
    callbacks += [canceller] if canceller else []
    start = time.perf_counter()
    # An endless generator (augment.batch_stream) needs the epoch length; a tf.data set knows its own.
    endless = isinstance(train_ds, Iterator)
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
            steps_per_epoch=steps_per_epoch if endless else None,
        )
    except CancelledMidEpoch:
        if canceller is not None and canceller.epoch_weights is not None:
            model.set_weights(canceller.epoch_weights)  # undo the unfinished epoch's batches
    seconds = time.perf_counter() - start
    best = _restore_best(model, workdir, recorder.history) if config.keep_best and val_ds is not None else None
    return FitResult(recorder.history, seconds, bool(canceller and canceller.cancelled), best)


def _restore_best(model: keras.Model, workdir: Path, history: dict[str, list[float]]) -> int | None:
    best_file = workdir / "best.weights.h5"
    losses = history.get("val_loss") or []
    if not best_file.exists() or not losses:
        return None
    model.load_weights(best_file)
    return int(min(range(len(losses)), key=losses.__getitem__)) + 1
