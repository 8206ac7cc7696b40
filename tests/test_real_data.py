"""Slow tests on the real photos in ../shared (skipped where they are absent) and on the
bundled checkpoints."""

import json

import numpy as np
import pytest

from animalcls.data import dataset as data
from animalcls.serving.inference import load_predictor
from animalcls.store import checkpoints
from animalcls.training import workflows

pytestmark = pytest.mark.slow


def test_real_folder_scans_with_the_default_classes(shared_raw):
    scan = data.scan_folder(shared_raw)
    assert scan.counts() == {"cat": 600, "spider": 600, "butterfly": 600, "elephant": 600, "chicken": 600}
    assert scan.skipped == []
    split = data.split_scan(scan)
    assert split.summary()["sizes"] == {"train": 2100, "val": 300, "test": 600}
    assert all(n == 120 for n in split.summary()["per_class"]["test"].values())


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_bundled_checkpoint_reproduces_its_recorded_test_accuracy(shared_raw, kind):
    pair = checkpoints.default_pair()
    if kind not in pair:
        pytest.skip(f"no bundled {kind} checkpoint")
    recorded = json.loads((pair[kind] / "eval.json").read_text())
    again = workflows.evaluate_checkpoint(pair[kind])  # finds the data through split.json
    assert again["n"] == recorded["n"] == 600
    assert again["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.005)
    difference = np.abs(np.array(again["confusion_matrix"]) - np.array(recorded["confusion_matrix"]))
    assert difference.max() <= 3


def test_bundled_models_classify_real_photos(shared_raw):
    pair = checkpoints.default_pair()
    if "transfer" not in pair:
        pytest.skip("no bundled transfer checkpoint")
    predictor = load_predictor(pair["transfer"])
    split = data.Split.load(pair["transfer"] / "split.json")
    paths, labels = split.paths("test", shared_raw)
    picks = [paths[labels.index(label)] for label in range(5)]  # one test photo per class
    results = predictor.predict(picks)
    assert [max(r, key=r.get) for r in results] == predictor.class_names
