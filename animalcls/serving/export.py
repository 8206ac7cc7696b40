"""`python -m animalcls export CKPT --format {onnx,savedmodel,tflite} --out DIR`.

Every export holds the serving graph (raw RGB 0-255 in, preprocessing inside; outputs
`probabilities`, `pooled`, `feature_map` from one forward pass), `labels.txt` (the class order)
and a README saying how to call it. The folder is filled under a temporary name, checked
against the Keras model on a few images, then renamed into place; an existing DIR is refused.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import atomic_dir
from animalcls.core.errors import CheckpointError
from animalcls.store import onnx_store

FORMATS = ("onnx", "savedmodel", "tflite")
# Largest |probability difference| from Keras that an export may show.
TOLERANCE = {"onnx": 1e-5, "savedmodel": 1e-5, "tflite": 1e-3}
ARTIFACT = {"onnx": "model.onnx", "savedmodel": "saved_model", "tflite": "model.tflite"}
LABELS_FILE = "labels.txt"
SIGNATURE = "serving_default"


def check_destination(out: str | Path) -> Path:
    """The output folder, refused before any slow work if it exists or cannot be made."""
    out = Path(out).expanduser()
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new --out folder.")
    if not out.parent.is_dir():
        raise CheckpointError(f"Folder {out.parent} does not exist (the parent of --out).")
    return out


def export_checkpoint(folder: str | Path, fmt: str, out: str | Path) -> tuple[Path, float]:
    """Export the checkpoint in `folder` to the new folder `out`; returns the folder and the
    largest |Δp| against Keras measured on a small batch of test images."""
    from animalcls.store.checkpoints import load_checkpoint

    if fmt not in FORMATS:
        raise ValueError(f"Unknown format '{fmt}': choose one of {', '.join(FORMATS)}.")
    out = check_destination(out)
    checkpoint = load_checkpoint(folder)
    with atomic_dir(out) as tmp:
        WRITERS[fmt](checkpoint.model, checkpoint.image_size, tmp / ARTIFACT[fmt])
        (tmp / LABELS_FILE).write_text("".join(f"{name}\n" for name in checkpoint.class_names))
        delta = max_probability_delta(checkpoint.model, tmp, fmt, checkpoint.image_size)
        if delta > TOLERANCE[fmt]:
            raise CheckpointError(f"The {fmt} export differs from Keras by {delta:.2g} (allowed {TOLERANCE[fmt]}).")
        shapes = output_shapes(checkpoint.model)
        (tmp / "README.md").write_text(export_readme(checkpoint.manifest, fmt, shapes, delta))
    return out, delta


def _write_onnx(model: Any, image_size: int, path: Path) -> None:
    from animalcls.serving.convert_onnx import to_onnx_bytes

    path.write_bytes(to_onnx_bytes(model, image_size))


def _write_savedmodel(model: Any, image_size: int, path: Path) -> None:
    import keras
    import tensorflow as tf

    from animalcls.serving.forward import outputs_model

    serving = outputs_model(model)
    archive = keras.export.ExportArchive()
    archive.track(serving)
    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=onnx_store.INPUT_NAME)
    archive.add_endpoint(SIGNATURE, lambda image: serving(image, training=False), input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def _write_tflite(model: Any, image_size: int, path: Path) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        _write_savedmodel(model, image_size, Path(scratch) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(scratch) / "saved_model"))
        path.write_bytes(converter.convert())


WRITERS: dict[str, Callable[[Any, int, Path], None]] = {
    "onnx": _write_onnx,
    "savedmodel": _write_savedmodel,
    "tflite": _write_tflite,
}


def load_export(folder: str | Path, fmt: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function running an export the way its README says: batch -> the three outputs."""
    artifact = str(Path(folder) / ARTIFACT[fmt])
    if fmt == "onnx":
        from animalcls.serving.onnx_engine import (
            make_session,  # a plain InferenceSession fails after share_thread_pool()
        )

        session = make_session(Path(artifact))
        names = [output.name for output in session.get_outputs()]
        return lambda batch: dict(zip(names, session.run(names, {onnx_store.INPUT_NAME: batch})))
    if fmt == "savedmodel":
        import tensorflow as tf

        signature = tf.saved_model.load(artifact).signatures[SIGNATURE]
        return lambda batch: {name: value.numpy() for name, value in signature(image=tf.constant(batch)).items()}
    runner = _litert_interpreter(artifact).get_signature_runner(SIGNATURE)
    return lambda batch: runner(image=batch)


def _litert_interpreter(path: str) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own interpreter, while TF still ships it
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


def max_probability_delta(model: Any, folder: Path, fmt: str, image_size: int) -> float:
    from animalcls.serving.convert_onnx import check_images

    batch = check_images(image_size)
    expected = np.asarray(model(batch, training=False))
    got = load_export(folder, fmt)(batch)["probabilities"]
    return float(np.abs(got - expected).max())


def output_shapes(model: Any) -> dict[str, tuple]:
    from animalcls.serving.forward import outputs_model

    return {name: tuple(tensor.shape) for name, tensor in outputs_model(model).output.items()}


def export_readme(manifest: dict[str, Any], fmt: str, shapes: dict[str, tuple], delta: float) -> str:
    from animalcls.serving.export_readme import render

    return render(manifest, fmt, ARTIFACT[fmt], shapes, delta, TOLERANCE[fmt])
