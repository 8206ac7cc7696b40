"""The "none of the five" detector's scores, in NumPy: the top probability, ImageNet animal
log-odds, the distance to the k nearest training photos, and the logistic combiner over them
(the detector that uses them, and its files: scope.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ANIMAL_SYNSETS = 398  # ImageNet-1k classes 0-397 are animals
KNN_DIMENSIONS = 64


def maxprob_score(probabilities: np.ndarray) -> np.ndarray:
    """1 - the top class probability."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(axis=1)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]


def imagenet_log_odds(animal_logits: np.ndarray, synsets: Sequence[int]) -> np.ndarray:
    """log P(another ImageNet animal) - log P(one of `synsets`), from the 398 animal logits."""
    logits = np.asarray(animal_logits, dtype=np.float64)
    inside = np.zeros(logits.shape[1], dtype=bool)
    inside[list(synsets)] = True
    return logsumexp(logits[:, ~inside]) - logsumexp(logits[:, inside])


def imagenet_score(
    imagenet_features: np.ndarray, kernel: np.ndarray, bias: np.ndarray, synsets: Sequence[int]
) -> np.ndarray:
    """`imagenet_log_odds` from pooled Lite0 features and the head's animal columns."""
    kernel = np.asarray(kernel, dtype=np.float32)[:, :ANIMAL_SYNSETS]
    logits = np.asarray(imagenet_features, dtype=np.float32) @ kernel + np.asarray(bias, np.float32)[:ANIMAL_SYNSETS]
    return imagenet_log_odds(logits, synsets)


def unit_rows(features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def knn_score(features: np.ndarray, reference_unit: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """1 - mean cosine similarity to the `k` most similar reference rows (unit-normalised).
    `skip_self` drops each row's best match, for scoring the reference photos themselves."""
    similarity = unit_rows(features) @ reference_unit.T
    take = min(k + int(skip_self), similarity.shape[1])
    nearest = -np.sort(-similarity, axis=1)[:, int(skip_self) : take]
    return 1.0 - nearest.mean(axis=1).astype(np.float64)


@dataclass
class KnnReference:
    """Training photos for the kNN score, in a PCA of their features: x -> (x - mean) @ projection."""

    mean: np.ndarray
    projection: np.ndarray
    reference: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, dimensions: int = KNN_DIMENSIONS) -> KnnReference:
        array = np.asarray(features, dtype=np.float32)
        mean = array.mean(axis=0)
        _, _, components = np.linalg.svd(array - mean, full_matrices=False)
        projection = components[:dimensions].T.astype(np.float16)
        return cls(mean, projection, ((array - mean) @ projection.astype(np.float32)).astype(np.float16))

    def project(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float32) - self.mean) @ self.projection.astype(np.float32)

    def score(self, features: np.ndarray, k: int) -> np.ndarray:
        return knn_score(self.project(features), unit_rows(self.reference), k)


@dataclass
class Combiner:
    """A logistic regression over standardised scores: z = sum(coef * (s - mean) / scale) + b."""

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def __call__(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        stacked = np.stack([scores[n] for n in self.names], axis=1)
        return ((stacked - self.mean) / self.scale) @ self.coef + self.intercept

    def to_json(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Combiner:
        return cls(
            list(data["names"]),
            np.asarray(data["mean"], np.float64),
            np.asarray(data["scale"], np.float64),
            np.asarray(data["coef"], np.float64),
            float(data["intercept"]),
        )
