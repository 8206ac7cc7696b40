"""One visitor's "Teach" panel: photos per class, then both models' taught heads. No Gradio, and
no TensorFlow at import; the app keeps one `TeachSession` per browser session (gr.State), so
what a visitor teaches is theirs alone. The photos stay in memory; the taught models are
written as checkpoints into the app's fine-tune store (`save_taught_sides`), owned by the
visitor's session like a fine-tune, so the Classify tab can use them.

Bounded: at most `TeachLimits.max_photos` photos per session, each file at most `max_mb`, kept
as 8-bit RGB at the largest model input (224 px: about 150 KB each); at most `max_classes`
classes of the visitor's own. Unusable uploads are skipped with a note saying why.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.errors import AnimalclsError, ImageError
from animalcls.data.teach_folders import MIN_PHOTOS, class_name_of, union_classes

KEEP_SIZE = 224  # photos are kept at the largest input size of the bundled models
NAME_PATTERN = re.compile(r"^[\w][\w '\-]{0,39}$")


@dataclass(frozen=True)
class TeachLimits:
    max_photos: int = 60
    max_mb: float = 10.0
    max_classes: int = 5


@dataclass
class TeachSession:
    """The photos a visitor added (class -> 8-bit RGB arrays) and the heads taught from them."""

    photos: dict[str, list[np.ndarray]] = field(default_factory=dict)
    taught: dict[str, Any] = field(default_factory=dict)  # kind -> teach.Taught
    sources: dict[str, Path] = field(default_factory=dict)  # kind -> the checkpoint it was taught from
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> class -> pooled, no mirrors
    saved: dict[str, str] = field(default_factory=dict)  # kind -> the name of its taught checkpoint

    def count(self) -> int:
        return sum(len(v) for v in self.photos.values())

    def add(self, name: str, files: Sequence[str], limits: TeachLimits, base: Sequence[str] = ()) -> list[str]:
        """Add the usable photos among `files` to class `name`; returns a note per skipped file."""
        from animalcls.serving.inference import load_image

        name = checked_class_name(name)
        own = [c for c in self.photos if c not in base]
        if name not in self.photos and name not in base and len(own) >= limits.max_classes:
            raise AnimalclsError(f"At most {limits.max_classes} new classes per session; clear to start over.")
        notes, kept = [], []
        for file in files:
            label = Path(file).name
            if self.count() + len(kept) >= limits.max_photos:
                notes.append(f"{label}: skipped, the session holds at most {limits.max_photos} photos.")
                continue
            try:
                size = Path(file).stat().st_size
            except OSError:
                notes.append(f"{label}: skipped, the upload could not be read.")
                continue
            if size > limits.max_mb * 2**20:
                notes.append(f"{label}: skipped, larger than {limits.max_mb:g} MB.")
                continue
            try:
                kept.append(_thumbnail(load_image(file)))
            except ImageError as exc:
                notes.append(f"{label}: skipped, {exc}")
        if kept:
            self.photos.setdefault(name, []).extend(kept)
            self.taught.clear()  # the heads no longer match the photos
            self.saved.clear()
        return notes

    def summary(self) -> list[list[Any]]:
        return [[name, len(arrays)] for name, arrays in self.photos.items()]


def checked_class_name(name: str | None) -> str:
    text = (name or "").strip()
    if not NAME_PATTERN.match(text):
        raise AnimalclsError("Name the class first: 1-40 letters, digits, spaces, ' or -, e.g. dog.")
    return class_name_of(text)


def _thumbnail(image: Any) -> np.ndarray:
    """8-bit RGB, the longer side at most KEEP_SIZE: the models resize it to their input."""
    image = image.copy()
    image.thumbnail((KEEP_SIZE, KEEP_SIZE))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------- models (shared, read-only)

_EXTRACTORS: dict[str, Any] = {}
_LOCK = threading.Lock()


def base_side(folder: Path) -> dict[str, Any]:
    """What teaching a side needs from its checkpoint, loaded once per process: the feature
    extractor, the head, the stored features and the input size. Shared by every session:
    nothing in it is ever changed."""
    key = str(Path(folder).resolve())
    with _LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = _load_side(Path(folder))
        return _EXTRACTORS[key]


def _load_side(folder: Path) -> dict[str, Any]:
    from animalcls.heads.reader import read_dense_head
    from animalcls.heads.teach import pooled, stored_features
    from animalcls.serving.inference import load_predictor

    stored = stored_features(folder)  # first: a side without stored features fails fast
    predictor = load_predictor(folder)  # the Classify tab's, shared: one ONNX session per model
    extract = pooled(predictor.outputs)
    return {
        "extract": extract,
        "head": read_dense_head(folder).as_head(),
        "stored": stored,
        "size": predictor.image_size,
        "name": folder.name,
    }


def model_input(photos: Sequence[np.ndarray], size: int) -> np.ndarray:
    from PIL import Image

    from animalcls.data.preprocessing import to_model_input

    return np.stack([to_model_input(Image.fromarray(p), size) for p in photos]).astype(np.float32)


def teach_sides(
    session: TeachSession,
    sides: dict[str, Path | None],
    epochs: int = 10,
    on_step: Callable[[float, str], None] | None = None,
) -> list[str]:
    """Teach every available side the session's photos (mirrors included); returns notes
    (a side that cannot be taught says why). Raises when there is nothing to teach."""
    from animalcls.heads.teach import TrainSettings, score, teach_head, with_mirrors

    _check_ready(session)
    notes, step = [], on_step or (lambda fraction, what: None)
    session.taught.clear()
    session.saved.clear()
    for i, (kind, folder) in enumerate(sides.items()):
        if folder is None:
            continue
        try:
            side = base_side(folder)
        except AnimalclsError as exc:
            notes.append(f"The {kind} model cannot be taught: {exc}")
            continue
        step(i / len(sides), f"{kind}: reading {session.count()} photos")
        start = time.perf_counter()
        names = union_classes(side["stored"].class_names, list(session.photos), list(session.photos))
        train = {n: side["extract"](with_mirrors(model_input(p, side["size"]))) for n, p in session.photos.items()}
        step((i + 0.5) / len(sides), f"{kind}: training the head")
        taught = teach_head(side["head"], side["stored"], names, train, TrainSettings(epochs=epochs))
        taught.seconds["total"] = time.perf_counter() - start
        score(taught, side["stored"], {})  # the original classes, on their stored test features
        taught.scores["original_classes_before"] = _accuracy(side)
        session.taught[kind], session.sources[kind] = taught, Path(folder)
        session.features[kind] = {name: f[: len(f) // 2] for name, f in train.items()}  # the mirrors follow
    return notes


def new_classes(session: TeachSession, kind: str) -> list[str]:
    """The classes a taught side knows that its checkpoint did not."""
    known = base_side(session.sources[kind])["stored"].class_names
    return [name for name in session.taught[kind].class_names if name not in known]


def save_taught_sides(session: TeachSession, root: Path, epochs: int = 10) -> dict[str, Path]:
    """Write each taught side as a new checkpoint folder under `root` (the app's fine-tune
    store); returns kind -> folder and records the names in `session.saved`. The first save
    of a side loads its Keras model (kept for the next fine-tune or teach of the same file)."""
    from animalcls.core.settings import finetune_folder
    from animalcls.heads.finetune_head import source_model
    from animalcls.heads.taught import save_taught, training_record
    from animalcls.heads.teach import TrainSettings, stored_summary

    folders = {}
    for kind, taught in session.taught.items():
        source, stored = session.sources[kind], base_side(session.sources[kind])["stored"]
        training = training_record(taught, TrainSettings(epochs=epochs), "onnxruntime")
        dataset = {
            "teach_session": True,
            "new_classes": new_classes(session, kind),
            "photos": {name: len(arrays) for name, arrays in session.photos.items()},
            "stored_features": stored_summary(stored),
            "scores": taught.scores,
        }
        imagenet = _imagenet_features(session) if kind != "transfer" else None
        with source_model(source) as (model, _key):
            out = finetune_folder(source, root)
            folder = save_taught(source, model, taught, out, training, dataset, session.features[kind], imagenet)
        folders[kind], session.saved[kind] = folder, folder.name
    return folders


def _imagenet_features(session: TeachSession) -> dict[str, np.ndarray] | None:
    """The taught transfer side's pooled features of the session's photos when they are the
    ImageNet Lite0's at 224 px (its detector says its pooled features are), as the Classify tab
    uses them: what a scratch detector's neighbours in ImageNet space need."""
    from animalcls.trust import scope

    source = session.sources.get("transfer")
    if source is None or "transfer" not in session.features:
        return None
    try:
        from_pool = scope.pooled_imagenet(source)
    except AnimalclsError:
        return None
    if from_pool and base_side(source)["size"] == scope.IMAGENET_IMAGE_SIZE:
        return session.features["transfer"]
    return None


def _accuracy(side: dict[str, Any]) -> float | None:
    """The untaught head's accuracy on the stored test features of its classes, if stored."""
    test = side["stored"].part("test")
    return None if test is None else float((side["head"].probabilities(test[0]).argmax(1) == test[1]).mean())


def _check_ready(session: TeachSession) -> None:
    if not session.photos:
        raise AnimalclsError("Add photos first: name a class, drop a few photos of it, press Add photos.")
    small = [name for name, arrays in session.photos.items() if len(arrays) < MIN_PHOTOS]
    if small:
        raise AnimalclsError(f"Class '{small[0]}' has one photo: add at least {MIN_PHOTOS} (10 or more work well).")


def classify(session: TeachSession, kinds: Sequence[str], image: Any) -> dict[str, dict[str, float] | None]:
    """Each taught side's probabilities for one photo (None for a side not taught), through the
    checkpoint it was taught from (even if the server now serves another one on that side)."""
    out: dict[str, dict[str, float] | None] = {}
    for kind in kinds:
        taught = session.taught.get(kind)
        if taught is None:
            out[kind] = None
            continue
        side = base_side(session.sources[kind])
        features = side["extract"](model_input([_thumbnail(image)], side["size"]))
        out[kind] = dict(zip(taught.class_names, map(float, taught.head.probabilities(features)[0])))
    return out
