"""Keras checkpoint -> ONNX serving graph (tf2onnx), stored next to `model.keras`.

`model.keras` stays the source of truth. The ONNX file is derived from it and keyed by its
sha256 in a sidecar (`onnx_store.SIDECAR_FILE`), so a retrained or edited model is never
served through a stale graph. The serving graph runs ONE forward pass and returns three
named outputs (see `onnx_store.OUTPUTS`):

* `probabilities` (N, C): the model's softmax output, class order of the manifest;
* `pooled` (N, D): the output of the pooling layer `models.POOL_LAYER`;
* `feature_map` (N, h, w, D): the backbone's last feature map, the pooling layer's input.

Its input `image` is (N, S, S, 3) float32 raw RGB 0-255: preprocessing stays in the graph.
This module imports TensorFlow when it converts; serving does not (see `onnx_engine`).
A head-only fine-tune needs no conversion: `patched_graph` gives the source's graph with the
head's initializers replaced (the backbone, and so every other weight, is the source's);
finetune_head checks it against Keras and writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.atomic import bytes_sha256, write_atomic
from animalcls.core.errors import CheckpointError
from animalcls.serving.forward import outputs_model
from animalcls.store import onnx_store

OPSET = 17


def to_onnx_bytes(model: Any, image_size: int) -> bytes:
    """Convert `model` (raw RGB 0-255 in, probabilities out) to a serialised ONNX graph with
    input `image` (None, S, S, 3) float32 and the three named outputs."""
    import tensorflow as tf
    import tf2onnx

    serving = outputs_model(model)

    @tf.function(autograph=False)
    def serve(image: Any) -> dict[str, Any]:
        return serving(image, training=False)

    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=onnx_store.INPUT_NAME)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=(spec,), opset=OPSET)
    names = sorted(output.name for output in proto.graph.output)
    if names != sorted(onnx_store.OUTPUTS):
        raise RuntimeError(f"tf2onnx produced outputs {names}, expected {sorted(onnx_store.OUTPUTS)}")
    return proto.SerializeToString()


def converter_version() -> str:
    from importlib.metadata import version

    return f"tf2onnx {version('tf2onnx')}, opset {OPSET}"


def write_onnx(folder: str | Path, model: Any = None, target: Path | None = None) -> Path:
    """Convert the checkpoint in `folder` and write the graph and its sidecar atomically to
    `target` (default: `folder/model.onnx`). Pass `model` when it is already loaded."""
    from animalcls.store.checkpoints import MODEL_FILE, load_checkpoint, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    keras_sha = onnx_store.file_sha256(folder / MODEL_FILE)  # hash first: what was converted
    if model is None:
        model = load_checkpoint(folder).model
    data = to_onnx_bytes(model, int(manifest["image_size"]))
    target = Path(target) if target else folder / onnx_store.ONNX_FILE
    sidecar = onnx_store.sidecar_for(keras_sha, bytes_sha256(data), int(manifest["image_size"]), converter_version())
    write_atomic(target, lambda handle: handle.write(data))
    # The sidecar goes last: a crash in between leaves a graph whose hash the old sidecar
    # does not match, which is detected as stale.
    onnx_store.write_sidecar(target, sidecar)
    return target


def check_images(image_size: int, count: int = 4) -> np.ndarray:
    """Smooth colour gradients with noise: photo-like statistics without any photo."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    images = []
    for _ in range(count):
        low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        base = low + (high - low) * ramp[:, None, None] * ramp[None, :, None]
        images.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255))
    return np.stack(images).astype(np.float32)


HEAD_PATCHED = "head weights patched into the source's graph"
PATCH_TOLERANCE = 1e-5  # max |delta p| against Keras, as for a converted graph


def patched_graph(graph: bytes, replacements: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """`graph` with the initializer equal to each old array (same shape and values) holding the
    new array instead. Raises CheckpointError unless each old array is exactly one initializer."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph)
    for old, new in replacements:
        found = [
            init
            for init in proto.graph.initializer
            if tuple(init.dims) == old.shape and np.array_equal(numpy_helper.to_array(init), old)
        ]
        if len(found) != 1 or old.shape != new.shape:
            raise CheckpointError(
                f"A head weight of shape {old.shape} is {len(found)} initializers of the graph, not one."
            )
        found[0].CopyFrom(numpy_helper.from_array(np.asarray(new, dtype=old.dtype), found[0].name))
    return proto.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    """`python -m animalcls.serving.convert_onnx CKPT [CKPT ...]`: (re)write each folder's model.onnx."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m animalcls.serving.convert_onnx", description=main.__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT_DIR")
    args = parser.parse_args(argv)
    from animalcls.store.checkpoints import read_manifest

    try:
        folders = [Path(folder) for folder in args.checkpoints]
        for folder in folders:
            read_manifest(folder)  # every argument checked before TensorFlow is imported
        for folder in folders:
            path = write_onnx(folder)
            print(f"{path} ({path.stat().st_size / 2**20:.1f} MB)")
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
