"""One resumable run of the robust from-scratch recipe on photos decoded once, with the epoch
chosen on the validation photos, plain and degraded (never on the test split).

The training photos are cached as uint8 and augmented a batch at a time inside the graph
(`batch_augment`); every epoch ends with a backup (`keras.callbacks.BackupAndRestore`), so the
same call after an interruption continues from the last finished epoch with the very batches an
uninterrupted run would have drawn (only dropout's masks differ after a resume: Keras backs up
no seed state). `scripts/train_scratch_robust.py` is its command line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image, ImageFilter

from animalcls.core.atomic import write_json
from animalcls.data.batch_augment import BatchAugment, decode_once, training_dataset
from animalcls.data.preprocessing import to_model_input

log = logging.getLogger(__name__)

BACKUP_DIR = "backup"
BEST_WEIGHTS = "best.weights.h5"
HISTORY_FILE = "history.json"
BEST_FILE = "best.json"

# The views the epoch is chosen on: the photos as they are, and two a photo from elsewhere
# brings (the same as scripts/robustness.py's "blur (Gaussian r=2)" and "downscale to 48 px").
VAL_VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "plain": lambda image: image,
    "blur2": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "down48": lambda image: image.resize((48, 48)).resize(image.size),
}


@dataclass
class RunConfig:
    """The recipe: AdamW, cosine decay after a linear warm-up, label smoothing, MixUp/CutMix."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 128
    epochs: int = 80
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    dropout: float = 0.2
    bn_momentum: float = 0.9
    seed: int = 42
    augment: dict[str, Any] = field(default_factory=dict)  # BatchAugment overrides
    # Weights of an earlier run of this recipe to continue from (a second cosine cycle); never
    # pretrained ones: that would erase what the scratch model is there to show.
    init: str | None = None

    def batch_augment(self) -> BatchAugment:
        return BatchAugment(self.image_size, **self.augment)

    def train_config(self) -> Any:
        from animalcls.training.train import TrainConfig

        return TrainConfig(
            model="scratch",
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            cosine=True,
            warmup_epochs=self.warmup_epochs,
            label_smoothing=self.label_smoothing,
            dropout=self.dropout,
            bn_momentum=self.bn_momentum,
            seed=self.seed,
            backbone=self.backbone,
            image_size=self.image_size,
            weights=None,
            robust_augment=True,
            mix=self.batch_augment().mix_p,
        )


@dataclass
class RunResult:
    history: dict[str, list[float]]
    best_epoch: int  # 1-based
    best_score: float
    fit_seconds: float  # this call's share; a resumed run adds to the earlier calls'
    images_per_second: float


def run(
    config: RunConfig,
    train_photos: Sequence[str],
    train_labels: Sequence[int],
    val_photos: Sequence[str],
    val_labels: Sequence[int],
    num_classes: int,
    out: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunResult:
    """Train (or resume) into `out`: backup/, history.json, best.weights.h5 and best.json.
    `extra_callbacks` run last, after the epoch's backup is written."""
    from animalcls.models import builders as models
    from animalcls.training.train import CosineWarmup, HistoryRecorder, compile_model

    out.mkdir(parents=True, exist_ok=True)
    start_epoch = finished_epochs(out)
    augment = config.batch_augment()
    photos = decode_once(train_photos, augment.cache_size)
    dataset, steps = training_dataset(
        photos, train_labels, num_classes, augment, config.batch_size, config.seed, start_epoch
    )
    keras.utils.set_random_seed(config.seed)
    model = models.build_scratch(config.backbone, num_classes, config.image_size, config.dropout, config.bn_momentum)
    train_config = config.train_config()
    compile_model(model, train_config)
    if config.init and start_epoch == 0:  # a resumed call gets its weights from the backup
        model.load_weights(config.init)
    history = _history_so_far(out, start_epoch)
    recorder = HistoryRecorder(out / HISTORY_FILE, _log_epochs(on_epoch))
    recorder.history = history  # a resumed run appends to the epochs it kept
    selector = EpochSelector(val_views(val_photos, config.image_size), np.asarray(val_labels), out, history)
    callbacks = [
        selector,  # first: adds the degraded validation accuracies to the logs the others see
        CosineWarmup(config.learning_rate, config.epochs, config.warmup_epochs),
        # History before backup: a crash between the two leaves a longer history, which the
        # next call cuts to the backed-up epochs.
        recorder,
        keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR), delete_checkpoint=False),
        *extra_callbacks,
    ]
    plain = selector.views["plain"]
    began = time.perf_counter()
    model.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=config.epochs,
        initial_epoch=start_epoch,
        verbose=0,
        validation_data=(plain, np.eye(num_classes, dtype=np.float32)[np.asarray(val_labels)]),
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - began
    ran = config.epochs - start_epoch
    best = json.loads((out / BEST_FILE).read_text())
    return RunResult(
        history, best["epoch"], best["score"], seconds, ran * steps * config.batch_size / max(seconds, 1e-9)
    )


def finished_epochs(out: Path) -> int:
    """Epochs an earlier call finished (0 for a fresh run), from the backup's metadata."""
    meta = out / BACKUP_DIR / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0


def val_views(paths: Sequence[str], image_size: int) -> dict[str, np.ndarray]:
    """Each validation view as the model's float32 input, resized as serving resizes."""
    views: dict[str, list[np.ndarray]] = {name: [] for name in VAL_VIEWS}
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        for name, view in VAL_VIEWS.items():
            views[name].append(to_model_input(view(rgb), image_size))
    return {name: np.stack(arrays).astype(np.float32) for name, arrays in views.items()}


def selection_score(accuracies: dict[str, float]) -> float:
    """The mean over the plain and degraded views: an epoch wins by holding up, not by the
    plain photos alone."""
    return float(np.mean([accuracies[f"val_{name}_accuracy"] for name in VAL_VIEWS]))


def _history_so_far(out: Path, epochs: int) -> dict[str, list[float]]:
    path = out / HISTORY_FILE
    if not epochs or not path.is_file():
        return {}
    return {key: values[:epochs] for key, values in json.loads(path.read_text()).items()}


class EpochSelector(keras.callbacks.Callback):
    """After each epoch: accuracy on every validation view, into the logs; the weights of the
    best epoch so far (by `selection_score`) kept in best.weights.h5, written atomically."""

    def __init__(self, views: dict[str, np.ndarray], labels: np.ndarray, out: Path, history: dict) -> None:
        super().__init__()
        self.views, self.labels, self.out = views, labels, out
        best_file = out / BEST_FILE
        self.best = json.loads(best_file.read_text()) if history and best_file.is_file() else {"score": -1.0}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        for name, images in self.views.items():
            predicted = self.model.predict(images, batch_size=100, verbose=0).argmax(1)
            logs[f"val_{name}_accuracy"] = float((predicted == self.labels).mean())
        score = selection_score(logs)
        logs["val_selection_score"] = score
        if score > self.best["score"]:
            tmp = self.out / f".best-{os.getpid()}.weights.h5"
            self.model.save_weights(tmp)
            os.replace(tmp, self.out / BEST_WEIGHTS)
            self.best = {"epoch": epoch + 1, "score": score, **{k: v for k, v in logs.items() if k.startswith("val_")}}
            write_json(self.out / BEST_FILE, self.best)


def _log_epochs(on_epoch: Callable[[int, dict[str, float]], None] | None) -> Callable[[int, dict], None]:
    """HistoryRecorder's epoch hook: one log line per epoch, then the caller's hook with that row."""

    def hook(epoch: int, history: dict[str, list[float]]) -> None:
        row = {key: values[-1] for key, values in history.items()}
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 4) for k, v in row.items()}))
        if on_epoch:
            on_epoch(epoch, row)

    return hook
