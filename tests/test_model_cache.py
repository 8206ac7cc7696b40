"""The process-wide model cache is bounded: the least recently used model is unloaded, a model
whose folder is deleted is unloaded at the next load, and a model a request still holds keeps
working after it left the cache."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_checkpoint

from animalcls.serving import inference
from animalcls.serving.model_cache import MODELS_KEPT
from animalcls.trust import verdicts as trust


@pytest.fixture
def copies(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> list[Path]:
    """MODELS_KEPT + 2 copies of the tiny transfer checkpoint (as a visitor's fine-tunes are)."""
    inference._CACHE.clear()
    trust._SCOPES.clear()
    return [copy_checkpoint(tiny_checkpoints["transfer"], tmp_path / f"ft-{i}") for i in range(MODELS_KEPT + 2)]


def _released(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def _batch(predictor: inference.Predictor) -> np.ndarray:
    return np.zeros((1, predictor.image_size, predictor.image_size, 3), np.float32)


def test_using_more_models_than_kept_unloads_the_least_recently_used(copies: list[Path]):
    first = inference.load_predictor(copies[0])
    first_ref, first_judge = weakref.ref(first), weakref.ref(trust.Judge(first))
    expected = first.forward(_batch(first))
    held = inference.load_predictor(copies[1])  # a request still using it when it leaves the cache
    del first
    for folder in copies[2:]:
        trust.Judge(inference.load_predictor(folder))  # a model and its scope detector, as classify loads them
        inference.load_predictor(copies[2])  # the most recently used stays
    cached = [Path(p).parent for p in inference._CACHE.paths()]
    assert len(cached) == MODELS_KEPT and copies[2] in cached
    assert copies[0] not in cached and copies[1] not in cached
    assert len(trust._SCOPES) <= MODELS_KEPT
    assert _released(first_ref) and _released(first_judge)
    np.testing.assert_allclose(held.forward(_batch(held)), expected, atol=1e-6)  # still works when evicted


def test_a_deleted_checkpoint_is_unloaded_at_the_next_load(copies: list[Path]):
    gone = inference.load_predictor(copies[0])
    trust.Judge(gone)
    ref = weakref.ref(gone)
    del gone
    shutil.rmtree(copies[0])
    inference.load_predictor(copies[1])
    trust.load_detector(copies[1], inference.load_predictor(copies[1]).manifest)
    assert [Path(p).parent for p in inference._CACHE.paths()] == [copies[1]]
    assert all(copies[0] not in Path(p).parents for p in trust._SCOPES.paths())
    assert _released(ref)
