"""Named outputs of a checkpoint's forward pass, whichever engine runs it.

One pass of a model gives three arrays, named as the ONNX serving graph names them
(`onnx_store.OUTPUTS`):

* `probabilities` (N, C): the model's softmax output;
* `pooled` (N, D): the output of the pooling layer `POOL_LAYER`;
* `feature_map` (N, h, w, D): the backbone's last feature map, the pooling layer's input.

`Forward` gives any of them for a batch, through the checkpoint's ONNX Runtime engine or
through Keras (`onnx_engine.onnx_forward` gives one for a checkpoint's fresh ONNX graph);
`forward_paths` runs one over image files in bounded batches. `outputs_model` is
the one Keras sub-model that returns them; it lives here, beside the serving graph's names,
because every consumer of those outputs (the ONNX conversion, the Keras fallback of serving and
heatmaps, the feature cache, the detector's arrays) builds through it. Importing this module
imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from animalcls.core.errors import CheckpointError
from animalcls.core.settings import POOL_LAYER
from animalcls.store.onnx_store import OUTPUTS

BatchHook = Callable[[int, int | None], None]  # (batches done, batches in all)
T = TypeVar("T")


def outputs_model(model: Any, names: Sequence[str] = OUTPUTS) -> Any:
    """A keras.Model sharing `model`'s layers (no copy), with the same input, whose output is
    the dict {name: tensor} of `names` (any of OUTPUTS), all from ONE forward pass."""
    import keras

    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"Unknown outputs {unknown}: choose among {', '.join(OUTPUTS)}.")
    tensors = {"probabilities": model.output}
    if set(names) - {"probabilities"}:
        try:
            pool = model.get_layer(POOL_LAYER)
        except ValueError:
            raise CheckpointError(f"Model {model.name} has no '{POOL_LAYER}' layer: no pooled features.") from None
        # The pooling layer's input, not the nested backbone's `.output` (that one lives in the
        # backbone's own graph and would pull its input layer in twice).
        tensors.update(pooled=pool.output, feature_map=pool.input)
    return keras.Model(model.input, {name: tensors[name] for name in names}, name=f"{model.name}_outputs")


class Forward:
    """One model's forward pass returning named outputs (any of OUTPUTS) for a batch of raw
    RGB 0-255 images (N, S, S, 3): through ONNX Runtime when `engine` is set (its graph gives
    all three in one pass), else through the Keras `model`, one compiled `outputs_model` per
    set of names asked, built on first use. Thread-safe."""

    def __init__(self, image_size: int, engine: Any = None, model: Any = None) -> None:
        if (engine is None) == (model is None):
            raise ValueError("A Forward runs either an ONNX Runtime engine or a Keras model.")
        self.image_size, self.engine, self.model = image_size, engine, model
        self._compiled: dict[tuple[str, ...], Callable[[Any], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray, names: Sequence[str] = ("probabilities",)) -> dict[str, np.ndarray]:
        if self.engine is not None:
            return self.engine.run(batch, tuple(names))
        import tensorflow as tf

        outputs = self._keras(tuple(names))(tf.constant(batch, tf.float32))
        return {name: outputs[name].numpy() for name in names}

    def over(
        self,
        batches: Iterable[np.ndarray],
        names: Sequence[str] = ("probabilities",),
        on_batch: BatchHook | None = None,
        steps: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The outputs of each batch in turn, concatenated: memory bounded by one batch's
        activations. `on_batch(done, steps)` after each; at least one batch is needed."""
        parts: list[dict[str, np.ndarray]] = []
        for step, batch in enumerate(batches, 1):
            parts.append(self(batch, names))
            if on_batch:
                on_batch(step, steps)
        if not parts:
            raise ValueError("No images to run the model on.")
        return {name: np.concatenate([part[name] for part in parts]) for name in names}

    def _keras(self, names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
        with self._lock:
            if names not in self._compiled:
                import tensorflow as tf

                adapter = outputs_model(self.model, names)
                spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)
                # A fixed signature traces once, whatever the batch: eager calls were 5x slower at batch 1.
                self._compiled[names] = tf.function(
                    lambda x: adapter(x, training=False), input_signature=[spec], autograph=False
                )
            return self._compiled[names]


def forward_paths(
    forward: Forward,
    paths: Sequence[str],
    names: Sequence[str] = ("probabilities",),
    batch_size: int = 32,
    on_batch: BatchHook | None = None,
) -> dict[str, np.ndarray]:
    """Named outputs for image files, in file order, `batch_size` at a time; decoded and
    resized by the evaluation pipeline (`data.dataset.make_dataset`, tf.data), as the test
    split's recorded predictions and the detector's arrays were."""
    from animalcls.data.dataset import make_dataset

    if not paths:
        raise ValueError("No image paths given.")
    dataset = make_dataset(paths, [0] * len(paths), 1, forward.image_size, batch_size, training=False)
    batches = (images.numpy() for images, _ in dataset)
    return forward.over(batches, names, on_batch, steps=-(-len(paths) // batch_size))


def slices(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` (a list, an array) `size` at a time: the bounded batches a Forward runs over."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
