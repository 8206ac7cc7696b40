"""When to trust an answer: from ONE forward pass per model, the class probabilities, the
"none of the five" verdict (`scope`) and, on request, where the model looked (`cam`).

The engine hands back `feature_map`, `pooled` and `probabilities` for a batch
(`explain.feature_forward`: ONNX Runtime's graph has the three outputs; else a TensorFlow adapter). A
scratch model's detector also needs the ImageNet Lite0's pooled features: a transfer model on the
frozen ImageNet Lite0 at 224 px computes exactly those in its own pass, so `answer_all` reuses
them; otherwise `imagenet_features` runs one (the bundled transfer model, else TensorFlow).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from animalcls.core.errors import AnimalclsError
from animalcls.data.preprocessing import to_model_input
from animalcls.heads.reader import DenseHead, HeadError, read_dense_head
from animalcls.serving.inference import Predictor, load_image, load_predictor
from animalcls.serving.model_cache import FileCache
from animalcls.trust import cam, scope

BATCH = 16  # photos per forward pass in the CLI: bounded memory whatever the number of files


@dataclass
class Answer:
    """One model's answer for one photo. `out_of_scope`/`scope_score` are None when the
    checkpoint has no usable scope files; `heatmap` (h, w, summing to 1) only when asked for."""

    label: str
    probabilities: dict[str, float]
    out_of_scope: bool | None
    scope_score: float | None
    heatmap: np.ndarray | None = None
    seconds: float = 0.0  # the forward pass of the batch this photo was in

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        ranked = sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)[:top]
        return {
            "probabilities": dict(ranked),
            "label": self.label,
            "out_of_scope": self.out_of_scope,
            "scope_score": self.scope_score,
        }


def forward_outputs(predictor: Predictor, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature_map, pooled, probabilities) of one forward pass, on the predictor's engine."""
    from animalcls.trust.explain import feature_forward

    return feature_forward(predictor)(batch)


# Bounded like the models (model_cache.MODELS_KEPT): a detector holds its training features.
_SCOPES: FileCache[tuple[scope.ScopeDetector | None, str]] = FileCache()


def load_detector(folder: Path, manifest: dict[str, Any]) -> tuple[scope.ScopeDetector | None, str]:
    """(the checkpoint's scope detector, "") or (None, why there is none), read once (while it
    stays among the most recently used)."""
    path = Path(folder).resolve() / scope.SCOPE_JSON
    return _SCOPES.get(path, None, lambda: _read_detector(Path(folder), manifest))


def _read_detector(folder: Path, manifest: dict[str, Any]) -> tuple[scope.ScopeDetector | None, str]:
    if not scope.has_scope(folder):
        return None, (
            f"{manifest.get('name', folder.name)} has no {scope.SCOPE_JSON}, so it cannot tell a photo of "
            "none of its classes (build one with scripts/build_scope.py)"
        )
    try:
        detector = scope.load_scope(folder)
        scope.check_matches(detector, manifest, folder)
    except scope.ScopeError as exc:
        return None, f"its scope files are unusable ({exc})"
    return detector, ""


class Judge:
    """A Predictor with its scope detector and head weights: answers with verdicts."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.detector, self.scope_note = load_detector(predictor.path, predictor.manifest)

    @property
    def class_names(self) -> list[str]:
        return list(self.predictor.class_names)

    @property
    def needs_imagenet(self) -> bool:
        return self.detector is not None and self.detector.needs_imagenet_features

    @property
    def gives_imagenet(self) -> bool:
        """Its pooled features are the ImageNet Lite0's at 224 px (a frozen-base transfer model)."""
        return (
            self.detector is not None
            and self.detector.imagenet_from_pool
            and self.predictor.image_size == scope.IMAGENET_IMAGE_SIZE
        )

    def head(self) -> DenseHead:
        return read_dense_head(self.predictor.path)

    def _head_or_none(self) -> DenseHead | None:
        try:
            return self.head()
        except HeadError:
            return None

    def answer(
        self, photos: Sequence[Image.Image], imagenet: np.ndarray | None = None, heatmaps: bool = False
    ) -> tuple[list[Answer], np.ndarray]:
        """Answers for decoded RGB photos, and the pooled features of the same pass."""
        size, names = self.predictor.image_size, self.class_names
        batch = np.stack([to_model_input(photo, size) for photo in photos])
        start = time.perf_counter()
        feature_map, pooled, probabilities = forward_outputs(self.predictor, batch)
        seconds = time.perf_counter() - start
        flags, scores = [None] * len(photos), [None] * len(photos)
        if self.detector is not None:
            decided, scored = self.detector.decide(probabilities, pooled, imagenet)
            flags, scores = [bool(f) for f in decided], [float(s) for s in scored]
        maps: list[np.ndarray | None] = [None] * len(photos)
        head = self._head_or_none() if heatmaps else None
        if head is not None:  # a head that is not a Dense chain on the pooled vector gives no map
            raw = cam.grad_cam(head, feature_map, pooled, np.argmax(probabilities, axis=1))
            maps = [cam.normalise(m) for m in raw]
        answers = [
            Answer(names[int(np.argmax(p))], dict(zip(names, map(float, p))), f, s, m, seconds)
            for p, f, s, m in zip(probabilities, flags, scores, maps)
        ]
        return answers, pooled


def judge_for(folder: str | Path, engine: str | None = None) -> Judge:
    """A Judge for a checkpoint folder, on `engine` (see inference.load_predictor)."""
    return Judge(load_predictor(folder, engine))


def answer_all(
    judges: Sequence[Judge], photos: Sequence[Image.Image], heatmaps: bool = False, provider: Judge | None = None
) -> list[list[Answer]]:
    """Each judge's answers for `photos`, one forward pass each. A judge whose pooled features
    are the ImageNet Lite0's runs first and lends them to those that need them (scratch)."""
    order = sorted(range(len(judges)), key=lambda i: not judges[i].gives_imagenet)
    imagenet: np.ndarray | None = None
    out: list[list[Answer]] = [[] for _ in judges]
    for i in order:
        judge = judges[i]
        if judge.needs_imagenet and imagenet is None:
            imagenet = imagenet_features(photos, provider)
        out[i], pooled = judge.answer(photos, imagenet if judge.needs_imagenet else None, heatmaps)
        if judge.gives_imagenet and imagenet is None:
            imagenet = pooled
    return out


_IMAGENET_MODEL: list[Any] = []
_LOCK = threading.Lock()


def imagenet_features(photos: Sequence[Image.Image], provider: Judge | None = None) -> np.ndarray:
    """Pooled ImageNet Lite0 features at 224 px: from `provider` or the bundled transfer model
    when its pooled features are those (no TensorFlow with ONNX), else a TensorFlow Lite0."""
    batch = np.stack([to_model_input(photo, scope.IMAGENET_IMAGE_SIZE) for photo in photos])
    return imagenet_features_of(batch, provider)


def imagenet_features_of(batch: np.ndarray, provider: Judge | None = None) -> np.ndarray:
    """`imagenet_features` of photos already made 224 px model inputs."""
    provider = provider or bundled_provider()
    if provider is not None and provider.gives_imagenet:
        return forward_outputs(provider.predictor, batch)[1]
    with _LOCK:
        if not _IMAGENET_MODEL:
            from animalcls.trust.scope_build import imagenet_feature_model

            _IMAGENET_MODEL.append(imagenet_feature_model())
    return np.asarray(_IMAGENET_MODEL[0](batch, training=False))


Verdicts = tuple[np.ndarray, list[bool | None], list[float | None]]


class InputJudge:
    """A Judge for photos already decoded to model inputs (folder prediction): called with one
    batch per size of `sizes` (the model's, then 224 px when its detector needs ImageNet features
    its own pass does not give), it returns (probabilities, out_of_scope, scope_score)."""

    def __init__(self, judge: Judge) -> None:
        self.judge, self.class_names = judge, judge.class_names
        self.provider = bundled_provider() if judge.needs_imagenet else None
        extra = (scope.IMAGENET_IMAGE_SIZE,) if judge.needs_imagenet else ()
        self.sizes: tuple[int, ...] = (judge.predictor.image_size, *extra)

    def __call__(self, inputs: Sequence[np.ndarray]) -> Verdicts:
        _, pooled, probabilities = forward_outputs(self.judge.predictor, inputs[0])
        detector, n = self.judge.detector, len(probabilities)
        if detector is None:
            return probabilities, [None] * n, [None] * n
        imagenet = imagenet_features_of(inputs[1], self.provider) if self.judge.needs_imagenet else None
        flags, scores = detector.decide(probabilities, pooled, imagenet)
        return probabilities, [bool(f) for f in flags], [float(x) for x in scores]


def bundled_provider() -> Judge | None:
    """The bundled transfer checkpoint as a source of ImageNet features, if it is one."""
    from animalcls.store.checkpoints import default_pair

    try:
        folder = default_pair().get("transfer")
        judge = judge_for(folder) if folder else None
    except (AnimalclsError, OSError):
        return None
    return judge if judge is not None and judge.gives_imagenet else None


def answer_files(judge: Judge, images: Sequence[str], heatmaps: bool = False, update: Any = None) -> list[Answer]:
    """Answers for image files, in batches of `BATCH`; `update(done, total)` after each."""
    answers: list[Answer] = []
    provider = bundled_provider() if judge.needs_imagenet else None
    for start in range(0, len(images), BATCH):
        photos = [load_image(path) for path in images[start : start + BATCH]]
        answers += answer_all([judge], photos, heatmaps, provider)[0]
        if update:
            update(len(answers), len(images))
    return answers


def rejection_rate(judge: Judge, images: Sequence[str], update: Any = None) -> dict[str, Any] | None:
    """The share of `images` the checkpoint's detector flags as none of its classes, or None
    without a detector: {"flagged", "n", "rate", "threshold"}."""
    if judge.detector is None or not images:
        return None
    flags = [a.out_of_scope for a in answer_files(judge, images, update=update)]
    return {
        "flagged": int(sum(flags)),
        "n": len(flags),
        "rate": float(np.mean(flags)),
        "threshold": float(judge.detector.threshold),
    }


def none_of_line(class_names: Sequence[str]) -> str:
    return "probably none of: " + ", ".join(class_names)
