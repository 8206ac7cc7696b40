"""A taught head as a checkpoint folder, for the CLI (`finetune --data`) and the app's Teach panel.

`save_taught` writes the source's model with the taught head (the backbone and hidden layers
as they were, a wider output layer), a manifest derived from the source's that records what
trained, the usual history and evaluation, and a "none of the five" detector inherited from the
source and widened to the new classes (`taught_detector`), so the taught model is served,
explained and checked like any other checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.settings import POOL_LAYER
from animalcls.heads.numpy_head import Head

log = logging.getLogger(__name__)


@dataclass
class Taught:
    """A head trained for the union of classes, and how it did."""

    head: Head
    class_names: list[str]
    history: dict[str, list[float]]
    seconds: dict[str, float]
    cancelled: bool = False
    evaluation: dict[str, Any] | None = None
    scores: dict[str, Any] = field(default_factory=dict)


def taught_model(model: Any, head: Head) -> Any:
    """`model` with its head replaced by `head` (a new output layer of `head.num_classes` units);
    the backbone layers are shared, not copied."""
    import keras
    from keras import layers

    from animalcls.core.settings import PREDICTIONS_LAYER

    pool = model.get_layer(POOL_LAYER)
    x = pool.output
    for layer in model.layers[model.layers.index(pool) + 1 : -1]:
        x = layer(x)
    out = layers.Dense(head.num_classes, activation="softmax", name=PREDICTIONS_LAYER)(x)
    taught = keras.Model(model.inputs, out, name=model.name)
    for name, kernel, bias in zip([*head.hidden_names, PREDICTIONS_LAYER], head.kernels, head.biases):
        taught.get_layer(name).set_weights([kernel, bias])
    return taught


def training_record(taught: Taught, settings: Any, engine: str) -> dict[str, Any]:
    """The manifest's `training` for a taught head (`settings`: teach.TrainSettings): how it trained, exactly."""
    return {
        "method": "teach: head on stored + new pooled features (backbone frozen)",
        "finetune": True,
        "teach": True,
        "unfreeze_layers": 0,
        "epochs": settings.epochs,
        "epochs_run": len(taught.history["loss"]),
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "optimizer": "adam",
        "loss": "class-balanced cross-entropy",
        "seed": settings.seed,
        "new_columns": "imprinted (centred mean penultimate activation)",
        "new_class_limit": f"each new class wins on at most {settings.max_claimed:.0%} of the stored training "
        "photos of the original classes (its bias lowered after training)",
        "mirrored_new_photos": True,
        "feature_engine": engine,
        "cancelled": taught.cancelled,
        "seconds": {k: round(v, 2) for k, v in taught.seconds.items()},
    }


def save_taught(
    source: Path,
    model: Any,
    taught: Taught,
    out_dir: Path,
    training: dict[str, Any],
    dataset: dict[str, Any],
    new_features: dict[str, np.ndarray] | None = None,
    imagenet_features: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write `taught` as the checkpoint folder `out_dir`, derived from `source` (whose Keras
    model is `model`); with `new_features` (class -> pooled features of its training photos)
    the source's detector is widened to the new classes (`imagenet_features`, the same photos'
    ImageNet Lite0 features, for a detector whose neighbours live in that space). Returns the folder."""
    from animalcls.heads.derive import derived_manifest, save_derived
    from animalcls.store import checkpoints

    source_classes = list(checkpoints.read_manifest(source)["class_names"])
    manifest = derived_manifest(
        source,
        out_dir.name,
        training,
        dataset,
        class_names=list(taught.class_names),
        finetuned_from={"class_names": source_classes},
    )
    model = taught_model(model, taught.head)
    path = save_derived(out_dir, model, manifest, taught.history, taught.evaluation)
    if new_features is not None:
        _save_detector(source, path, taught, new_features, imagenet_features)
    return path


def _save_detector(
    source: Path,
    folder: Path,
    taught: Taught,
    new_features: dict[str, np.ndarray],
    imagenet_features: dict[str, np.ndarray] | None,
) -> None:
    """Best effort: without a detector the taught model still classifies, unchecked."""
    from animalcls.core.atomic import file_sha256
    from animalcls.store.checkpoints import MODEL_FILE
    from animalcls.trust import scope

    try:
        if not scope.has_scope(source):
            return
        detector = taught_detector(scope.load_scope(source), taught, new_features, imagenet_features)
        if detector is None:
            return
        detector.info.update(model_sha256=file_sha256(folder / MODEL_FILE), inherited_from=source.name)
        scope.save_scope(folder, detector)
    except Exception as exc:  # noqa: BLE001 - the taught model stands without a detector
        log.info("the taught model has no none-of-the-five detector (%s).", exc)


def taught_detector(
    source: Any,
    taught: Taught,
    new_features: dict[str, np.ndarray],
    imagenet_features: dict[str, np.ndarray] | None = None,
) -> Any | None:
    """The source's scope.ScopeDetector for the taught classes: the new photos join its training
    photos (so the kNN score knows them, and teaching the taught model again keeps them), its
    top-probability score reads the taught head, and its threshold and weights stay. A kNN in
    ImageNet space takes the new photos' `imagenet_features`. None when the detector cannot know
    a new class (an ImageNet score without that class's synsets) or lacks the features it needs."""
    from animalcls.trust.scope import IMAGENET_SYNSETS

    new = [name for name in taught.class_names if name not in source.class_names]
    if "imagenet" in source.score_names and any(name not in IMAGENET_SYNSETS for name in new):
        return None
    knn_features = new_features
    if source.knn_space == "imagenet" and not source.imagenet_from_pool:
        if imagenet_features is None or set(imagenet_features) != set(new_features):
            return None
        knn_features = imagenet_features
    index = {name: i for i, name in enumerate(taught.class_names)}
    remap = np.asarray([index[name] for name in source.class_names])
    rows = [(name, np.asarray(f, np.float32)) for name, f in new_features.items() if len(f)]
    features = np.concatenate([source.train_features, *(f for _, f in rows)]).astype(source.train_features.dtype)
    labels = np.concatenate([remap[source.train_labels], *(np.full(len(f), index[n]) for n, f in rows)])
    files = [*source.train_files, *(f"taught/{name}/{i}" for name, f in rows for i in range(len(f)))]
    knn = source.knn
    if knn is not None:
        added = [knn.project(knn_features[name]) for name, _ in rows]
        knn = replace(knn, reference=np.concatenate([knn.reference, *added]).astype(knn.reference.dtype))
    head = [(k.astype(np.float32), b.astype(np.float32)) for k, b in zip(taught.head.kernels, taught.head.biases)]
    return replace(
        source,
        class_names=list(taught.class_names),
        train_features=features,
        train_labels=labels.astype(source.train_labels.dtype),
        train_files=files,
        knn=knn,
        calibration_head=head,
        info={**source.info, "taught_classes": new},
        test_labels=None if source.test_labels is None else remap[source.test_labels],
    )
