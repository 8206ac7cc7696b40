"""The README written into each export folder: input, outputs, class order and how to call it."""

from __future__ import annotations

from typing import Any

CALLS = {
    "onnx": """```python
import numpy as np, onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("{artifact}", providers=["CPUExecutionProvider"])
image = Image.open("photo.jpg").convert("RGB").resize(({size}, {size}), Image.BILINEAR)
batch = np.asarray(image, dtype=np.float32)[None]          # (1, {size}, {size}, 3), 0-255
probabilities = session.run(["probabilities"], {{"image": batch}})[0][0]
labels = open("labels.txt").read().split()
print(max(zip(probabilities, labels)))
```""",
    "savedmodel": """```python
import tensorflow as tf

serve = tf.saved_model.load("{artifact}").signatures["serving_default"]
image = tf.io.decode_image(tf.io.read_file("photo.jpg"), channels=3, expand_animations=False)
batch = tf.image.resize(image, ({size}, {size}), antialias=True)[None]   # float32 0-255
probabilities = serve(image=batch)["probabilities"].numpy()[0]
labels = open("labels.txt").read().split()
print(max(zip(probabilities, labels)))
```
TF Serving: the signature `serving_default` takes `image` and returns the three outputs.""",
    "tflite": """```python
import numpy as np
from ai_edge_litert.interpreter import Interpreter   # pip install ai-edge-litert
from PIL import Image                                # (or tf.lite.Interpreter)

runner = Interpreter(model_path="{artifact}").get_signature_runner("serving_default")
image = Image.open("photo.jpg").convert("RGB").resize(({size}, {size}), Image.BILINEAR)
batch = np.asarray(image, dtype=np.float32)[None]          # (1, {size}, {size}, 3), 0-255
probabilities = runner(image=batch)["probabilities"][0]
labels = open("labels.txt").read().split()
print(max(zip(probabilities, labels)))
```""",
}

TITLES = {"onnx": "ONNX (opset 17)", "savedmodel": "TensorFlow SavedModel", "tflite": "TFLite / LiteRT"}


def render(
    manifest: dict[str, Any], fmt: str, artifact: str, shapes: dict[str, tuple], delta: float, tolerance: float
) -> str:
    size = int(manifest["image_size"])
    classes = ", ".join(f"{index} {name}" for index, name in enumerate(manifest["class_names"]))
    rows = [
        f"| input `image` | float32 (N, {size}, {size}, 3): RGB 0-255, not normalised; any batch size N |",
        f"| output `probabilities` | float32 {_shape(shapes['probabilities'])}: softmax over the classes, in order |",
        f"| output `pooled` | float32 {_shape(shapes['pooled'])}: the pooled backbone features |",
        f"| output `feature_map` | float32 {_shape(shapes['feature_map'])}: the backbone's last feature map |",
        f"| classes (`labels.txt`) | {classes} |",
        f"| inside the model | {manifest.get('preprocessing', 'preprocessing')} |",
        f"| checked at export | probabilities within {delta:.1e} of the Keras model's on 4 synthetic images "
        f"(allowed {tolerance:g}) |",
    ]
    return "\n".join(
        [
            f"# {manifest['name']}: {TITLES[fmt]} export",
            "",
            f"Exported by animalcls from the {manifest['kind']} checkpoint `{manifest['name']}` "
            f"({manifest['backbone']} backbone). The three outputs come from one forward pass.",
            "",
            "| | |",
            "|---|---|",
            f"| file | `{artifact}` |",
            *rows,
            "",
            f"Resize photos to {size}x{size} without cropping; the models were trained on photos resized "
            "with antialiased bilinear interpolation (`tf.image.resize(..., antialias=True)`). PIL's "
            "`BILINEAR` is close but not identical: it cost the 128 px scratch model about a point of accuracy.",
            "",
            "## How to call it",
            "",
            CALLS[fmt].format(artifact=artifact, size=size),
            "",
        ]
    )


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("N" if dim is None else str(dim) for dim in shape) + ")"
