"""The typed manifest: validation, round trips of real files, and the two builders."""

from __future__ import annotations

import json

import pytest

from animalcls.core.errors import CheckpointError
from animalcls.store import checkpoints
from animalcls.store.manifest import Manifest

GOOD = {
    "name": "m",
    "kind": "transfer",
    "backbone": "tiny",
    "image_size": 32,
    "class_names": ["cat", "spider"],
    "training": {"epochs": 3},
    "dataset": {"root_name": "raw-img"},
}


def test_bundled_manifests_round_trip_unchanged() -> None:
    pair = checkpoints.default_pair()
    if not pair:
        pytest.skip("no bundled checkpoints")
    for folder in pair.values():
        data = json.loads((folder / checkpoints.MANIFEST_FILE).read_text())
        assert Manifest.from_json(data, folder).to_json() == data


def test_unknown_keys_survive_a_round_trip() -> None:
    manifest = Manifest.from_json({**GOOD, "future_field": {"x": 1}})
    assert manifest.extra == {"future_field": {"x": 1}}
    assert manifest.to_json()["future_field"] == {"x": 1}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "other"}, "kind must be one of"),
        ({"image_size": "224"}, "image_size must be a positive whole number"),
        ({"image_size": 0}, "image_size must be a positive whole number"),
        ({"class_names": ["cat", "cat"]}, "class_names must be a non-empty list of unique names"),
        ({"class_names": []}, "class_names must be a non-empty list of unique names"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"training": [1]}, "training must be an object"),
    ],
)
def test_a_field_a_reader_could_not_use_is_named(change: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Manifest.from_json({**GOOD, **change}, "here")


def test_missing_keys_and_non_objects_are_refused() -> None:
    with pytest.raises(CheckpointError, match="lacks: class_names"):
        Manifest.from_json({k: v for k, v in GOOD.items() if k != "class_names"})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        Manifest.from_json(["not", "a", "dict"])


def test_new_stamps_time_and_versions() -> None:
    manifest = Manifest.new("run", "scratch", "tiny", 32, ["cat", "spider"], training={"epochs": 1})
    assert manifest.created and manifest.versions["python"]
    assert "numpy" in manifest.versions
    with pytest.raises(CheckpointError, match="kind must be one of"):
        Manifest.new("run", "teacher", "tiny", 32, ["cat", "spider"])


def test_derive_keeps_the_model_facts_and_records_provenance() -> None:
    source = Manifest.from_json({**GOOD, "files": ["model.keras"], "created": "2020-01-01T00:00:00+00:00"})
    child = source.derive(
        "child",
        {"epochs": 1},
        {"split": "recorded"},
        class_names=["cat", "spider", "dog"],
        finetuned_from={"class_names": ["cat", "spider"]},
    )
    data = child.to_json()
    assert data["name"] == "child" and data["backbone"] == "tiny" and data["image_size"] == 32
    assert data["class_names"] == ["cat", "spider", "dog"]
    assert data["finetuned_from"] == {"name": "m", "lineage": ["m"], "class_names": ["cat", "spider"]}
    assert data["training"] == {"epochs": 1, "source_training": {"epochs": 3}}
    assert data["dataset"] == {"split": "recorded"} and "files" not in data
    assert data["created"] != "2020-01-01T00:00:00+00:00"


def test_the_store_refuses_a_bad_manifest_before_writing(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="image_size"):
        checkpoints.save_checkpoint(tmp_path / "out", model=None, manifest={**GOOD, "image_size": -1})
    assert not (tmp_path / "out").exists()
