"""Named outputs of a checkpoint's forward pass, whichever engine runs it.

One pass of a model gives three arrays, named as the ONNX serving graph names them
(`onnx_store.OUTPUTS`):

* `probabilities` (N, C): the model's softmax output;
* `pooled` (N, D): the output of the pooling layer `POOL_LAYER`;
* `feature_map` (N, h, w, D): the backbone's last feature map, the pooling layer's input.

`outputs_model` is the one Keras sub-model that returns them; it lives here, beside the
serving graph's names, because every consumer of those outputs (the ONNX conversion, the
Keras fallback of serving and heatmaps, the feature cache, the detector's arrays) builds
through it. Importing this module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from animalcls.core.errors import CheckpointError
from animalcls.core.settings import POOL_LAYER
from animalcls.store.onnx_store import OUTPUTS


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
