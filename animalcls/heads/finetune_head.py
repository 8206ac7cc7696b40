"""The head-only fine-tune's fast parts (finetune.py wires them in):

* `source_model`: the source checkpoint's Keras model and backbone key, loaded once per process
  and reused by the next fine-tune of the same `model.keras` (loading it took 1.5-6 s, the
  backbone fingerprint 0.1-0.3 s). Only the head's weights change during a head-only
  fine-tune; they are put back when the fine-tune ends, so the next one starts from the file.
* `train_head`: the head trained in NumPy (head_fit.py, the one head trainer), its weights
  then written into the Keras model that is saved.
* `head_patched_writer`: writes the new model.keras as the source's file with only the head's
  weight arrays replaced (the architecture and every other weight are the source's). Keras's
  own save of the 17 MB transfer model took 1-3 s on 2 shared cores, walking ~250 layers.
  The source's model.onnx is patched the same way, so the fine-tune is served through ONNX
  Runtime at once instead of converted on first use.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import file_sha256
from animalcls.core.hooks import TrainHooks
from animalcls.heads.reader import KERAS_WEIGHTS, dense_weight_groups, head_layers, read_dense_head
from animalcls.store.checkpoints import MODEL_FILE, load_checkpoint, read_manifest

log = logging.getLogger(__name__)

_LOCK = threading.Lock()  # one user of the cached model at a time
_CACHED: dict[str, Any] = {}  # "stamp" -> (path, mtime_ns, size), "model", "key"


@contextmanager
def source_model(source: Path) -> Iterator[tuple[Any, str]]:
    """(Keras model, features.backbone_key of it) of the checkpoint `source`, cached while its
    model.keras is unchanged. The head's weights are restored on exit; hold no reference after."""
    from animalcls.serving.features import backbone_key

    keras_file = Path(source) / MODEL_FILE
    with _LOCK:
        stat = keras_file.stat()
        stamp = (str(keras_file.resolve()), stat.st_mtime_ns, stat.st_size)
        if _CACHED.get("stamp") != stamp:
            _CACHED.clear()
            model = load_checkpoint(source).model
            _CACHED.update(stamp=stamp, model=model, key=backbone_key(model))
        model = _CACHED["model"]
        head = head_layers(model)
        saved = [layer.get_weights() for layer in head]
        try:
            yield model, _CACHED["key"]
        finally:
            for layer, weights in zip(head, saved):
                layer.set_weights(weights)


def train_head(
    model: Any,
    config: Any,
    train: tuple[np.ndarray, list[int]],
    val: tuple[np.ndarray, list[int]] | None,
    test_x: np.ndarray,
    flipped: np.ndarray | None,
    hooks: TrainHooks,
) -> tuple[Any, np.ndarray]:
    """(train.FitResult, test probabilities) with the head trained by the one head trainer
    (head_fit, NumPy, following every head setting of `config`) and written into `model`."""
    from animalcls.core.errors import CheckpointError
    from animalcls.heads import head_fit
    from animalcls.heads.reader import HeadError
    from animalcls.training.train import FitResult

    try:
        head = read_dense_head(model).as_head()
    except HeadError as exc:
        raise CheckpointError(f"Only a head of Dense layers can be fine-tuned head-only: {exc}") from None
    recipe = head_fit.Recipe.from_config(config)
    labelled = (train[0], np.asarray(train[1]))
    held = (val[0], np.asarray(val[1])) if val is not None and len(val[1]) else None
    fitted = head_fit.fit_head(head, labelled, held, recipe, flipped, hooks.on_batch, hooks.on_epoch, hooks.cancel)
    for layer, kernel, bias in zip(head_layers(model), fitted.head.kernels, fitted.head.biases):
        layer.set_weights([kernel, bias])
    probabilities = fitted.head.probabilities(test_x)
    if hooks.on_eval:
        hooks.on_eval(len(test_x), len(test_x))
    return FitResult(fitted.history, fitted.seconds, fitted.cancelled, fitted.best_epoch), probabilities


def head_patched_writer(source: Path, model: Any) -> Callable[[Path], None]:
    """A `write_model` for checkpoints.save_checkpoint: `source`'s model.keras with the Dense
    layers after the pooling layer holding `model`'s current head weights, and beside it the
    serving graph patched the same way (see `write_patched_graph`). Only for a model loaded
    from that file whose backbone did not change (a head-only fine-tune)."""
    new_weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in head_layers(model)}

    def write(path: Path) -> None:
        import h5py

        with zipfile.ZipFile(Path(source) / MODEL_FILE) as archive:
            parts = {info.filename: archive.read(info) for info in archive.infolist()}
        groups = dense_weight_groups(json.loads(parts["config.json"]))
        buffer, replaced = io.BytesIO(parts[KERAS_WEIGHTS]), []
        with h5py.File(buffer, "r+") as handle:
            for name, arrays in new_weights.items():
                variables = handle["layers"][groups[name]]["vars"]
                for i, array in enumerate(arrays):
                    if variables[str(i)].shape != array.shape:
                        raise ValueError(f"{name}: stored {variables[str(i)].shape}, new {array.shape}")
                    replaced.append((np.asarray(variables[str(i)]), array))
                    variables[str(i)][...] = array
        parts[KERAS_WEIGHTS] = buffer.getvalue()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # as Keras writes it
            for name, data in parts.items():
                archive.writestr(name, data)
        # Each 17 MB model.keras hashed once, its manifest read once, for both derived files.
        derived = Derived(
            Path(source), path.parent, file_sha256(Path(source) / MODEL_FILE), file_sha256(path), read_manifest(source)
        )
        write_patched_graph(derived, replaced, model)
        inherit_scope(derived)

    return write


@dataclass(frozen=True)
class Derived:
    """A head-only fine-tune being written into `folder` from `source`, with what both the
    serving graph and the detector need of the pair."""

    source: Path
    folder: Path
    source_sha256: str  # of source/model.keras
    sha256: str  # of folder/model.keras, the fine-tune's
    source_manifest: dict[str, Any]


def inherit_scope(derived: Derived) -> None:
    """Best effort: the source's "none of the five" detector for its head-only fine-tune (same
    backbone, same classes). Its top-probability score keeps the head it was calibrated with,
    so the fine-tune flags exactly the photos its source flags."""
    from dataclasses import replace

    from animalcls.core.errors import CheckpointError
    from animalcls.trust import scope

    source = derived.source
    if not scope.has_scope(source):
        return
    try:
        detector = scope.load_scope(source)
        scope.check_matches(detector, derived.source_manifest, source, derived.source_sha256)
        layers = read_dense_head(source).layers
        activations = [layer.activation for layer in layers]
        if detector.calibration_head is None and activations != ["relu"] * (len(layers) - 1) + ["softmax"]:
            raise CheckpointError(f"its head's activations {activations} are not ReLU layers and a softmax")
        head = detector.calibration_head or [(layer.kernel, layer.bias) for layer in layers]
        info = {**detector.info, "model_sha256": derived.sha256, "inherited_from": source.name}
        scope.save_scope(derived.folder, replace(detector, calibration_head=head, info=info))
    except Exception as exc:  # noqa: BLE001 - best effort: the fine-tune stands without a detector
        log.info("the fine-tune has no none-of-the-five detector (%s).", exc)


def write_patched_graph(derived: Derived, replaced: list[tuple[np.ndarray, np.ndarray]], model: Any) -> None:
    """Best effort: the fine-tune's model.onnx as the source's graph with the same head weights
    replaced, so serving it needs no conversion (tf2onnx took 4-6 s per model). Without it,
    the graph is converted on first use, as for any checkpoint."""
    from animalcls.serving.onnx_engine import onnxruntime_available

    if not onnxruntime_available():
        return
    try:
        _write_patched_graph(derived, replaced, model)
    except Exception as exc:  # noqa: BLE001 - onnx, onnxruntime and Keras raise their own types; the fine-tune stands
        log.info("no ONNX graph written with the fine-tune (%s); it is built on first use.", exc)


def _write_patched_graph(derived: Derived, replaced: list[tuple[np.ndarray, np.ndarray]], model: Any) -> None:
    """The source's fresh graph with its head patched, checked against `model` (the fine-tuned
    Keras model) within PATCH_TOLERANCE, then written with a sidecar keyed by the fine-tune's model.keras."""
    from animalcls.core.atomic import bytes_sha256, write_atomic
    from animalcls.core.errors import CheckpointError
    from animalcls.serving.convert_onnx import HEAD_PATCHED, PATCH_TOLERANCE, check_images, patched_graph
    from animalcls.serving.onnx_engine import make_session
    from animalcls.store import onnx_store

    source_graph, _ = onnx_store.find_fresh(derived.source, derived.source_sha256)
    if source_graph is None:
        raise CheckpointError(f"{derived.source.name} has no up-to-date model.onnx to patch.")
    data = patched_graph(source_graph.read_bytes(), replaced)
    image_size = int(derived.source_manifest["image_size"])
    batch = check_images(image_size, count=2)
    got = make_session(data).run(["probabilities"], {onnx_store.INPUT_NAME: batch})[0]
    delta = float(np.abs(got - np.asarray(model(batch, training=False))).max())
    if not delta <= PATCH_TOLERANCE:
        raise CheckpointError(f"the patched graph differs from Keras by {delta:.1e} (over {PATCH_TOLERANCE:g}).")
    target = derived.folder / onnx_store.ONNX_FILE
    sidecar = onnx_store.sidecar_for(derived.sha256, bytes_sha256(data), image_size, HEAD_PATCHED)
    write_atomic(target, lambda handle: handle.write(data))
    onnx_store.write_sidecar(target, sidecar)  # last, as convert_onnx.write_onnx does
