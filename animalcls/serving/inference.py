"""Inference: image sanitising, cached model loading and a forward pass through ONNX Runtime
(TensorFlow as the fallback). Serving through ONNX imports neither TensorFlow nor Keras."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.core.settings import ENGINE_ENV
from animalcls.data.preprocessing import to_model_input
from animalcls.serving.forward import Forward
from animalcls.serving.model_cache import FileCache
from animalcls.store.checkpoints import MODEL_FILE, Checkpoint, check_model_archive, load_checkpoint

log = logging.getLogger(__name__)

# Decompression-bomb cap: 40 MP covers any camera photo; larger inputs are refused before
# decoding. PIL's own warning threshold is raised to an error at this size.
# The file types load_image serves (PIL decodes them all): folder prediction lists files by
# these, the app's examples gallery by these less TIFF (browsers show none). Training reads
# fewer (data.IMAGE_EXTENSIONS: what TensorFlow decodes).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# The PIL decoders tried, whatever a file's name says: the formats the page names, nothing else
# (no ICO/TGA/PPM, no EPS, which PIL hands to Ghostscript). A camera's MPO opens as JPEG.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 50 * 1024 * 1024

# Images are shrunk (8-bit, before any float conversion) to at least this many times the
# largest model input per side; the models' own antialiased resize does the rest.
REDUCE_MARGIN = 2
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})
_REDUCE_AS = {"P": "RGBA", "PA": "RGBA", "1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I"}

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def load_image(source: ImageInput, max_side: int | None = None) -> Image.Image:
    """Any supported input -> an RGB PIL image, EXIF orientation applied, first frame only.

    With `max_side` (the largest input size of the models that will see it), the image is
    shrunk while still 8-bit, before any float conversion: a JPEG is decoded at a reduced DCT
    scale (`draft`) and anything larger is box-reduced by whole factors, keeping each side at
    least 2 x `max_side`, so the models' antialiased resize sees practically the same picture
    while a 6000 px upload never becomes a 6000 px float array (see REDUCE_MARGIN).

    Raises ImageError with a message fit for a user on anything that is not a usable image.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_side)
    if isinstance(source, Image.Image):
        return _sanitise(source, max_side)
    if isinstance(source, bytes):
        if not source:
            raise ImageError("The uploaded data is an empty file (0 bytes).")
        return _open(io.BytesIO(source), "the uploaded data", max_side)
    path = Path(source)
    _check_file(path)
    return _open(path, path.name, max_side)


def check_image_file(path: str | Path) -> None:
    """Raise ImageError (the reason) unless `path` is a usable image as far as its size and
    header tell: a non-empty file within MAX_FILE_BYTES, in IMAGE_FORMATS, within MAX_PIXELS.
    Reads the header only, so a decompression bomb is refused without being decoded."""
    path = Path(path)
    _check_file(path)
    _open(path, path.name, decode=False)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file.")
    if not path.is_file():
        raise ImageError(f"Image file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path.name} is an empty file (0 bytes).")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path.name} is larger than {MAX_FILE_BYTES // 2**20} MB; use a smaller image.")


def _open(handle: Any, what: str, max_side: int | None = None, decode: bool = True) -> Image.Image | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=IMAGE_FORMATS) as image:
                _check_size(image.width, image.height, what)
                if not decode:
                    return None
                if max_side and image.format == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale, never below the requested size.
                    image.draft(None, (REDUCE_MARGIN * max_side, REDUCE_MARGIN * max_side))
                return _sanitise(image, max_side)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if "exceeds limit" in str(exc) or "decompression bomb" in str(exc).lower():
            raise ImageError(f"{what} is too large to decode safely (over {MAX_PIXELS:,} pixels).") from None
        raise ImageError(f"{what} is not an image (supported: JPEG, PNG, GIF, BMP, WebP, TIFF).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{what} is corrupt or truncated and cannot be decoded ({exc}).") from None


def _check_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"{what} is {width}x{height}, over the {MAX_PIXELS:,}-pixel limit; use a smaller image.")
    if width < 1 or height < 1:
        raise ImageError(f"{what} has no pixels.")


def _sanitise(image: Image.Image, max_side: int | None = None) -> Image.Image:
    """First frame, shrunk to `max_side` (see load_image), EXIF orientation, then RGB from any
    mode (P, LA, RGBA, CMYK, I;16, 1...)."""
    _check_size(image.width, image.height, "The image")
    if getattr(image, "is_animated", False):
        image.seek(0)
    image.load()  # decode now, so a truncated file fails here with a clear message
    if max_side:
        image = _reduce(image, max_side)
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _scale_to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent regions would otherwise become black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reduce(image: Image.Image, max_side: int) -> Image.Image:
    """Box-reduce by whole factors per axis while each side stays >= REDUCE_MARGIN x max_side."""
    factors = tuple(max(1, side // (REDUCE_MARGIN * max_side)) for side in image.size)
    if factors == (1, 1):
        return image
    if image.mode not in _REDUCIBLE_MODES:
        # Palette indices cannot be averaged; 16-bit goes to 32-bit, scaled to 8 bits later.
        image = image.convert(_REDUCE_AS.get(image.mode, "RGB"))
    return image.reduce(factors)


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    array = np.asarray(image, dtype=np.float64)
    top = array.max()
    scaled = array * (255.0 / top) if top > 0 else array
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")


def _from_array(array: np.ndarray, max_side: int | None = None) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"An image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}.")
    _check_size(array.shape[1], array.shape[0], "The image array")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        peak = float(np.nanmax(array)) if array.size else 0.0
        array = np.clip(array * 255.0 if peak <= 1.0 else array, 0, 255).astype(np.uint8)
    return _sanitise(Image.fromarray(array), max_side)


ENGINES = ("auto", "onnx", "tf")


def requested_engine(engine: str | None = None) -> str:
    """The engine asked for: `engine`, else $ANIMALCLS_ENGINE, else "auto" (ONNX Runtime when
    it is installed, TensorFlow otherwise or when no ONNX graph can be had)."""
    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if choice not in ENGINES:
        raise ValueError(f"Unknown inference engine {choice!r}: choose one of {', '.join(ENGINES)}.")
    return choice


@dataclass
class Predictor:
    """A `Checkpoint` with a forward pass through ONNX Runtime (`onnx` set) or a compiled
    TensorFlow function (`onnx` None; the Keras model loads on first use). Thread-safe."""

    checkpoint: Checkpoint
    onnx: Any = None
    _outputs: Forward | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    path = property(lambda self: self.checkpoint.path)
    manifest = property(lambda self: self.checkpoint.manifest)
    class_names = property(lambda self: self.checkpoint.class_names)
    image_size = property(lambda self: self.checkpoint.image_size)
    engine = property(lambda self: "tf" if self.onnx is None else "onnx")

    @property
    def model(self) -> Any:
        """The Keras model (loads TensorFlow if this predictor serves through ONNX)."""
        with self._lock:
            if self.checkpoint.model is None:
                self.checkpoint.model = load_checkpoint(self.path).model
        return self.checkpoint.model

    @property
    def outputs(self) -> Forward:
        """The forward pass with named outputs (probabilities, pooled, feature_map) on this
        predictor's engine: `predictor.outputs(batch, ("pooled",))["pooled"]`."""
        if self._outputs is None:
            model = self.model if self.onnx is None else None  # outside the lock: `model` takes it
            with self._lock:
                if self._outputs is None:
                    self._outputs = Forward(self.image_size, self.onnx, model)
        return self._outputs

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """The (N, C) probabilities of a batch of model inputs."""
        return self.outputs(batch)["probabilities"]

    def predict(self, images: Sequence[ImageInput]) -> list[dict[str, float]]:
        batch = np.stack([to_model_input(load_image(image, self.image_size), self.image_size) for image in images])
        probabilities = self.forward(batch)
        return [dict(zip(self.class_names, map(float, row))) for row in probabilities]


# Loaded models, keyed by model file, its mtime and the engine: a bounded, least recently used
# cache (model_cache.MODELS_KEPT); a model whose folder is deleted or changed leaves it.
_CACHE: FileCache[Predictor] = FileCache()


def load_predictor(path: str | Path, engine: str | None = None) -> Predictor:
    """Load a checkpoint once per process and engine (while it stays among the most recently
    used); a changed model file is reloaded."""
    folder = Path(path).resolve()
    choice = requested_engine(engine)
    return _CACHE.get(folder / MODEL_FILE, choice, lambda: _load(folder, choice))


def _load(folder: Path, choice: str) -> Predictor:
    checkpoint = load_checkpoint(folder, load_model=False)  # a broken folder fails here, any engine
    check_model_archive(folder)
    onnx = None if choice == "tf" else _onnx_engine(folder, required=choice == "onnx")
    predictor = Predictor(checkpoint, onnx)
    if onnx is None:
        predictor.model  # noqa: B018 - load the Keras model now, so its errors surface here
    return predictor


def _onnx_engine(folder: Path, required: bool) -> Any:
    """The checkpoint's ONNX Runtime engine (its graph built once if need be), or None to
    use TensorFlow; with `required` the reason is raised instead."""
    from importlib.util import find_spec

    from animalcls.serving.onnx_engine import load_engine, onnxruntime_available

    required = required or find_spec("tensorflow") is None  # no fallback: say why ONNX failed
    if not onnxruntime_available():
        if required:
            raise AnimalclsError("onnxruntime is not installed (pip install onnxruntime).")
        return None
    try:
        return load_engine(folder)
    except Exception as exc:  # noqa: BLE001 - any failure here leaves TensorFlow to serve
        if required:
            raise
        log.info("%s is served through TensorFlow (%s)", folder.name, exc)
        return None


def predict(images: ImageInput | Sequence[ImageInput], model: Predictor | str | Path) -> list[dict[str, float]]:
    """Class probabilities for each image: file paths, bytes, PIL images or numpy arrays.

    `model` is a Predictor or a checkpoint folder (loaded once and cached).
    """
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    batch = [images] if isinstance(images, (str, Path, bytes, Image.Image, np.ndarray)) else list(images)
    return predictor.predict(batch)


def top_k(probabilities: dict[str, float], k: int = 5) -> list[tuple[str, float]]:
    return sorted(probabilities.items(), key=lambda item: item[1], reverse=True)[:k]
