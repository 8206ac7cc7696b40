"""Where a model looked: heatmaps for its predicted class, and overlays on the photo.

The engine (ONNX Runtime, else TensorFlow) only has to return, from one forward pass,
the backbone's last feature map, the pooled vector and the probabilities; the CAM itself is
numpy (`cam`). Overlays are rendered with PIL and a matplotlib colour map.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from animalcls.core.errors import ImageError
from animalcls.data.preprocessing import to_model_input
from animalcls.heads.reader import DenseHead, read_dense_head
from animalcls.serving.forward import OUTPUTS
from animalcls.serving.inference import ImageInput, Predictor, load_image
from animalcls.trust import cam

DEFAULT_METHOD = "gradcam"
COLOUR_MAP = "jet"
DISPLAY_SIDE = 1024  # overlays are for screens: cap the size so a huge photo costs no gigabytes

# (feature_map (N,h,w,D), pooled (N,D), probabilities (N,C)) from a batch of model inputs.
FeatureForward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class Explanation:
    """One photo's heatmap for the predicted class `label`: `heatmap` is (h, w) at the feature
    map's resolution and sums to 1; `image` is the photo, downscaled for display; the same
    forward pass gave `probabilities` (class -> p), so a caller needs no separate predict."""

    label: str
    probabilities: dict[str, float]
    heatmap: np.ndarray
    image: Image.Image

    @property
    def probability(self) -> float:
        return self.probabilities[self.label]

    def overlay(self, alpha: float = 0.45) -> Image.Image:
        return overlay(self.image, self.heatmap, alpha)


def explain_batch(
    forward: FeatureForward, head: DenseHead, batch: np.ndarray, method: str = DEFAULT_METHOD
) -> tuple[np.ndarray, np.ndarray]:
    """Engine-agnostic core: (probabilities (N,C), heatmaps (N,h,w) each summing to 1) for the
    top class of each input, from one forward pass plus a small numpy computation."""
    feature_map, pooled, probabilities = forward(batch)
    classes = np.argmax(probabilities, axis=1)
    maps = cam.class_activation_map(method, head, feature_map, pooled, classes)
    return probabilities, np.stack([cam.normalise(m) for m in maps])


def explain(
    images: ImageInput | Sequence[ImageInput], model: Predictor | str | Path, method: str = DEFAULT_METHOD
) -> list[Explanation]:
    """Heatmaps of the predicted class for each image (paths, bytes, PIL images or arrays).

    `model` is a Predictor or a checkpoint folder (loaded once and cached)."""
    from animalcls.serving.inference import load_predictor

    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    single = isinstance(images, (str, Path, bytes, Image.Image, np.ndarray))
    photos = [load_image(image) for image in ([images] if single else images)]
    batch = np.stack([to_model_input(photo, predictor.image_size) for photo in photos])
    probabilities, heatmaps = explain_batch(feature_forward(predictor), read_dense_head(predictor.path), batch, method)
    names = predictor.class_names
    return [
        Explanation(names[int(np.argmax(p))], dict(zip(names, map(float, p))), heatmap, _for_display(photo))
        for p, heatmap, photo in zip(probabilities, heatmaps, photos)
    ]


def _for_display(photo: Image.Image) -> Image.Image:
    small = photo.copy()
    small.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return small


# ------------------------------------------------------------------ the engines


def feature_forward(predictor: Predictor) -> FeatureForward:
    """One forward pass returning (feature_map, pooled, probabilities) on the predictor's
    engine (`Predictor.outputs`: ONNX Runtime's graph has the three outputs, else Keras)."""

    def forward(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = predictor.outputs(batch, OUTPUTS)
        return out["feature_map"], out["pooled"], out["probabilities"]

    return forward


# ------------------------------------------------------------------------------- rendering


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The photo with the heatmap (upsampled, scaled to its peak, coloured) blended on top."""
    from matplotlib import colormaps

    photo = image.convert("RGB")
    full = cam.upsample(heatmap, photo.width, photo.height)
    peak = full.max()
    scaled = full / peak if peak > 0 else full
    colours = colormaps[COLOUR_MAP](np.clip(scaled, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * np.asarray(photo, np.float64) + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a temp file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ files, for the CLI

BATCH = 16  # images per forward pass: bounded memory whatever the number of files


@dataclass
class ExplainJob:
    """Checked arguments of `explain`: one overlay path per image, and an optional JSON file."""

    checkpoint: Path
    images: list[str]
    overlays: list[Path]
    json_file: Path | None


def plan_job(checkpoint: Path, images: Sequence[str], out_dir: Path, json_file: Path | None) -> ExplainJob:
    """Check every argument without TensorFlow (manifest, head weights, files, folders) and
    name the overlays `<image stem>.<checkpoint name>.png`, numbered where stems repeat."""
    from animalcls.store.checkpoints import read_manifest

    name = read_manifest(checkpoint)["name"]
    read_dense_head(checkpoint)  # an unsupported or unreadable head fails here, before any TF import
    for image in images:
        if Path(image).is_dir():
            raise ImageError(f"{image} is a folder: explain takes image files (e.g. {Path(image) / '*.jpg'}).")
        if not Path(image).is_file():
            raise ImageError(f"Image file not found: {image}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder.")
    if json_file is not None and (json_file.is_dir() or not json_file.parent.is_dir()):
        raise ValueError(f"--json {json_file}: not a file in an existing folder.")
    seen: dict[str, int] = {}
    overlays = []
    for image in images:
        stem = Path(image).stem
        seen[stem] = seen.get(stem, 0) + 1
        suffix = f"-{seen[stem]}" if seen[stem] > 1 else ""
        overlays.append(out_dir / f"{stem}{suffix}.{name}.png")
    return ExplainJob(checkpoint, list(images), overlays, json_file)


def run_job(
    job: ExplainJob, method: str = DEFAULT_METHOD, update: Callable[[int, int | None], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Write the overlays (atomically, replacing files of the same name) and the JSON file;
    return {image: {"label", "probability", "heatmap", "overlay"}}."""
    from animalcls.core.atomic import write_json

    if job.overlays:
        job.overlays[0].parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for start in range(0, len(job.images), BATCH):
        chunk = job.images[start : start + BATCH]
        for image, explanation, target in zip(chunk, explain(chunk, job.checkpoint, method), job.overlays[start:]):
            save_png(explanation.overlay(), target)
            results[image] = {
                "label": explanation.label,
                "probability": explanation.probability,
                "heatmap": explanation.heatmap.round(8).tolist(),
                "overlay": str(target),
            }
        if update:
            update(min(start + BATCH, len(job.images)), len(job.images))
    if job.json_file is not None:
        write_json(job.json_file.resolve(), results)
    return results


# ------------------------------------------------------------------ the quadrant test


def quadrant_canvas(photo: Image.Image, quadrant: int, grey: int = 128) -> Image.Image:
    """The photo pasted into one quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)
    of a plain grey canvas twice its size: a model that looks at the animal looks there."""
    canvas = Image.new("RGB", (2 * photo.width, 2 * photo.height), (grey, grey, grey))
    canvas.paste(photo.convert("RGB"), ((quadrant % 2) * photo.width, (quadrant // 2) * photo.height))
    return canvas


def quadrant_hits(heatmaps: np.ndarray, quadrants: Sequence[int]) -> np.ndarray:
    """True where a heatmap puts more than half its mass in the photo's quadrant."""
    return np.array([cam.quadrant_mass(h, q) > 0.5 for h, q in zip(heatmaps, quadrants)])
