"""Teach a checkpoint your own photos: new classes, more photos of its classes, or both, in seconds.

    plan = plan_teach(checkpoint, "my-photos/", classes=["dog"])   # checks everything, no TensorFlow
    result = run_teach(plan)                                       # writes a NEW checkpoint folder

Works the same for both kinds, with the backbone frozen: the original classes train on the
pooled features the checkpoint stores (`scope.npz`, train split; see scope.py), the folder's
photos (and their mirror images) go through the checkpoint's own backbone once, and only the
head trains, in NumPy (numpy_head.py, head_fit.py): widened to the union of classes, old weights kept,
new columns imprinted. A scratch checkpoint so learns on its own scratch features, a transfer
one on ImageNet features: the few-shot gap between them is the point of the study.

Class order and split rule: teach_data.py. The result is scored on the stored test-split
features of the original classes and on the folder's held-out photos; the manifest records
the classes, which photos trained and which were held out, the rule and the scores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.errors import CheckpointError
from animalcls.core.hooks import TrainHooks
from animalcls.data.teach_folders import TeachPhotos, TeachSplit, plan_split, scan_teach_folder, union_classes
from animalcls.heads.derive import output_folder
from animalcls.heads.head_fit import Recipe, fit_head, fit_output_layer
from animalcls.heads.numpy_head import Head
from animalcls.heads.reader import read_dense_head
from animalcls.heads.taught import Taught
from animalcls.serving.forward import Forward, slices
from animalcls.store import checkpoints
from animalcls.store.stored_features import StoredFeatures, load_features
from animalcls.trust import scope

Extractor = Callable[[np.ndarray], np.ndarray]  # (n, S, S, 3) raw RGB -> (n, dim) pooled features
DEFAULT_EPOCHS = 10
EXTRACT_BATCH = 32  # images per forward pass: a batch of 600 at 224 px took 8 GB in ONNX Runtime


@dataclass
class TrainSettings:
    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 42
    # Train the hidden layers (transfer: Dense 512) too. Off by default: on 2 shared CPU cores a
    # 2-epoch teach of the bundled transfer model took 13.8 s with them, 0.7-1.0 s without
    # (the output layer trains on penultimate activations computed once).
    train_hidden: bool = False
    # The most a new class may claim of the original classes' stored training photos: see limit_new_classes.
    max_claimed: float = 0.01


def pooled(forward: Forward) -> Extractor:
    """Pooled features through `forward` (a checkpoint's serving.forward.Forward, ONNX Runtime
    or Keras), EXTRACT_BATCH images at a time, so memory stays bounded for any batch."""
    return lambda batch: forward.over(slices(batch, EXTRACT_BATCH), ("pooled",))["pooled"]


def stored_features(folder: str | Path) -> StoredFeatures:
    """Read them from the checkpoint's scope.npz; a checkpoint without one cannot be taught."""
    folder = Path(folder)
    if not scope.has_scope(folder):
        raise CheckpointError(
            f"{folder} stores no pooled features of its training photos ({scope.SCOPE_NPZ}), so its classes "
            "cannot keep their training data: build them with scripts/build_scope.py, or fine-tune on the "
            "original dataset instead."
        )
    scope.check_folder_matches(checkpoints.read_manifest(folder), folder)
    return load_features(folder, ("train",), optional=("test",))


@dataclass
class TeachPlan:
    """Everything checked before any slow work."""

    source: Path
    manifest: dict[str, Any]
    photos: TeachPhotos
    split: TeachSplit
    class_names: list[str]
    out_dir: Path
    settings: TrainSettings

    @property
    def new_classes(self) -> list[str]:
        return self.class_names[len(self.manifest["class_names"]) :]


def plan_teach(
    checkpoint_dir: str | Path,
    data_dir: str | Path,
    classes: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = 1e-3,
    seed: int = 42,
) -> TeachPlan:
    """Check the checkpoint, the photos and the output folder; no TensorFlow."""
    source = Path(checkpoint_dir)
    manifest = checkpoints.read_manifest(source)
    checkpoints.check_model_archive(source)
    if not scope.has_scope(source):
        stored_features(source)  # raises the explanation
    if epochs < 1 or not learning_rate > 0:
        raise ValueError(f"Need epochs >= 1 and a learning rate > 0, got {epochs} and {learning_rate}.")
    photos = scan_teach_folder(data_dir, classes)
    names = union_classes(list(manifest["class_names"]), list(photos.photos), classes)
    return TeachPlan(
        source,
        manifest,
        photos,
        plan_split(photos, seed),
        names,
        output_folder(source, out_dir),
        TrainSettings(epochs=epochs, learning_rate=learning_rate, seed=seed),
    )


# ---------------------------------------------------------------- features of new photos


def photo_batch(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    """Decode (EXIF, any mode; as the app does) and resize photos into one batch."""
    from animalcls.data.preprocessing import to_model_input
    from animalcls.serving.inference import load_image

    return np.stack([to_model_input(load_image(p), image_size) for p in paths]).astype(np.float32)


def with_mirrors(batch: np.ndarray) -> np.ndarray:
    """The photos, then their mirror images (the study's flip augmentation)."""
    return np.concatenate([batch, batch[:, :, ::-1]])


# ---------------------------------------------------------------- the head


def teach_head(
    base_head: Head,
    stored: StoredFeatures,
    class_names: Sequence[str],
    new_train: dict[str, np.ndarray],
    settings: TrainSettings,
    hooks: TrainHooks | None = None,
) -> Taught:
    """Widen and train `base_head` on the stored features plus `new_train` (class -> pooled
    features of its training photos, mirrors included). The in-memory core of teaching."""
    hooks = hooks or TrainHooks()
    start = time.perf_counter()
    index = {name: i for i, name in enumerate(class_names)}
    stored_hidden = stored.hidden(base_head)
    y = [np.asarray([index[stored.class_names[int(i)]] for i in stored.train_labels])]
    y += [np.full(len(new_train[name]), index[name]) for name in new_train]
    new = {index[n]: f for n, f in new_train.items() if index[n] >= base_head.num_classes}
    widened = base_head.widened(len(class_names), new, stored_hidden.mean(axis=0))
    recipe = Recipe(settings.epochs, settings.batch_size, settings.learning_rate, settings.seed, balanced=True)
    if settings.train_hidden:
        x = np.concatenate([stored.train, *new_train.values()])
        fitted = fit_head(widened, (x, np.concatenate(y)), None, recipe, on_epoch=hooks.on_epoch, cancel=hooks.cancel)
    else:
        x = np.concatenate([stored_hidden, *(base_head.penultimate(f) for f in new_train.values())])
        fitted = fit_output_layer(widened, (x, np.concatenate(y)), recipe, hooks.on_epoch, hooks.cancel)
    old_hidden = fitted.head.penultimate(stored.train) if settings.train_hidden else stored_hidden
    head, _ = limit_new_classes(fitted.head, old_hidden, base_head.num_classes, settings.max_claimed)
    seconds = {"train": time.perf_counter() - start}
    return Taught(head, list(class_names), fitted.history, seconds, fitted.cancelled)


def limit_new_classes(head: Head, old_hidden: np.ndarray, old_classes: int, share: float) -> tuple[Head, list[float]]:
    """A copy of `head` whose new output columns (from `old_classes` on) win on at most `share`
    of `old_hidden` (the original classes' training photos, penultimate activations), by
    lowering each new column's bias; returns it and the amounts lowered.

    Why: the class-balanced loss gives a few new photos the weight of a whole class, so the new
    class's region grows until it holds all of them, and the stored photos of the old classes
    do not push back, because their features are those the model was trained on, more
    separable than a new photo's. On features that do not tell the new animal from the old
    ones (a model trained from scratch on five classes), the new class then claims many old
    photos at test time. The share is read on the training photos, so it is a floor: at test
    time a new class claims somewhat more.
    """
    head = head.copy()
    logits = old_hidden @ head.kernels[-1] + head.biases[-1]
    best_old = logits[:, :old_classes].max(axis=1)
    lowered = []
    for column in range(old_classes, head.num_classes):
        margin = logits[:, column] - best_old  # > 0: the new class wins that photo
        shift = max(0.0, float(np.quantile(margin, 1.0 - share))) if len(margin) else 0.0
        head.biases[-1][column] -= shift
        lowered.append(shift)
    return head, lowered


def score(taught: Taught, stored: StoredFeatures, held_out: dict[str, np.ndarray]) -> None:
    """Fill `taught.evaluation` (the usual report, over the stored test features and the held-out
    photos) and `taught.scores` (accuracy on the original classes and on each folder class)."""
    from animalcls.training.evaluate import evaluation_report

    index = {name: i for i, name in enumerate(taught.class_names)}
    labels, predicted, scores = [], [], {}
    if stored.part("test") is not None:
        test, test_labels = stored.parts["test"]
        truth = [index[stored.class_names[int(i)]] for i in test_labels]
        guess = taught.head.probabilities(test).argmax(axis=1).tolist()
        scores["original_classes"] = {"n": len(truth), "accuracy": float(np.mean(np.equal(truth, guess)))}
        labels, predicted = labels + truth, predicted + guess
    for name, features in held_out.items():
        if len(features):
            guess = taught.head.probabilities(features).argmax(axis=1).tolist()
            scores[name] = {"n": len(guess), "accuracy": float(np.mean(np.equal(guess, index[name])))}
            labels, predicted = labels + [index[name]] * len(guess), predicted + guess
    taught.scores = scores
    taught.evaluation = evaluation_report(labels, predicted, taught.class_names) if labels else None


# ---------------------------------------------------------------- end to end (CLI)


def extract_photos(
    extractor: Extractor,
    root: Path,
    groups: dict[str, list[str]],
    image_size: int,
    mirrors: bool,
    on_progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, np.ndarray]:
    """class -> pooled features of its photos (then of their mirror images when `mirrors`)."""
    from animalcls.core.errors import Cancelled

    total, done, out = sum(len(v) for v in groups.values()), 0, {}
    for name, rels in groups.items():
        plain, mirrored = [], []
        for start in range(0, len(rels), EXTRACT_BATCH):  # decoded a batch at a time: bounded memory
            if cancel is not None and cancel.is_set():
                raise Cancelled("Teaching cancelled while reading the photos; nothing was saved.")
            batch = photo_batch([root / rel for rel in rels[start : start + EXTRACT_BATCH]], image_size)
            features = extractor(with_mirrors(batch) if mirrors else batch)
            plain.append(features[: len(batch)])
            mirrored.append(features[len(batch) :])
            done += len(batch)
            if on_progress:
                on_progress(done, total)
        out[name] = np.concatenate(plain + mirrored) if plain else np.zeros((0, 0), np.float32)
    return out


def run_teach(plan: TeachPlan, hooks: TrainHooks | None = None) -> Any:
    """Extract, train, score and save `plan` as a new checkpoint folder; returns a
    finetune.FinetuneResult."""
    import keras

    from animalcls.heads.finetune import FinetuneResult
    from animalcls.heads.taught import save_taught, training_record
    from animalcls.serving.onnx_engine import onnx_forward

    hooks = hooks or TrainHooks()
    start = time.perf_counter()
    keras.utils.set_random_seed(plan.settings.seed)
    model = checkpoints.load_checkpoint(plan.source).model
    stored = stored_features(plan.source)
    size, root = int(plan.manifest["image_size"]), plan.photos.root
    forward = onnx_forward(plan.source) or Forward(size, model=model)
    engine = "onnxruntime" if forward.engine is not None else "tensorflow"
    extractor = pooled(forward)
    extracting = time.perf_counter()
    train = extract_photos(extractor, root, plan.split.train, size, True, hooks.on_features, hooks.cancel)
    test = extract_photos(extractor, root, plan.split.test, size, False, None, hooks.cancel)
    extract_seconds = time.perf_counter() - extracting
    taught = teach_head(read_dense_head(model).as_head(), stored, plan.class_names, train, plan.settings, hooks)
    score(taught, stored, test)
    taught.seconds.update(extract=extract_seconds, total=time.perf_counter() - start)
    training = training_record(taught, plan.settings, engine)
    plain = {name: features[: len(features) // 2] for name, features in train.items()}  # without the mirrors
    path = save_taught(plan.source, model, taught, plan.out_dir, training, folder_dataset(plan, taught, stored), plain)
    return FinetuneResult(
        path, plan.source, taught.evaluation or {}, taught.history, time.perf_counter() - start, taught.cancelled
    )


def folder_dataset(plan: TeachPlan, taught: Taught, stored: StoredFeatures) -> dict[str, Any]:
    """The manifest's `dataset` for a taught checkpoint: the folder, its split and the scores."""
    photos = plan.photos
    return {
        "teach_folder": photos.root.name,
        "class_folders": photos.folders,
        "new_classes": plan.new_classes,
        "skipped": [{"path": rel, "reason": why} for rel, why in photos.skipped],
        "split": plan.split.summary(),
        "stored_features": stored_summary(stored),
        "scores": taught.scores,
        "source_dataset": _dataset_name(plan.manifest.get("dataset") or {}),
    }


def stored_summary(stored: StoredFeatures) -> dict[str, Any]:
    return {
        "file": scope.SCOPE_NPZ,
        "train": len(stored.train),
        "test": stored.sizes().get("test", 0),
        "classes": stored.class_names,
    }


def _dataset_name(dataset: dict[str, Any]) -> str | None:
    """The source dataset's folder name: `root_name` today, the last part of `root` in older manifests."""
    return dataset.get("root_name") or Path(str(dataset.get("root") or "")).name or None
