"""Fine-tuning a head on features stored with the checkpoint (no photos), and the bounded,
per-session fine-tune store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import stored_finetune

from animalcls.core.errors import AnimalclsError, CheckpointError
from animalcls.data import dataset as data
from animalcls.webapp.sessions import FinetuneStore, SessionModels, StoreLimits, new_session


@pytest.fixture
def photo_less(tiny_checkpoints, tmp_path, monkeypatch):
    """A copy of the tiny transfer checkpoint with stored features and its photos out of reach."""
    from animalcls.serving.features import backbone_key
    from animalcls.store import checkpoints
    from animalcls.store.stored_features import extract_parts, save_features

    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ckpts" / "transfer-tiny"
    shutil.copytree(tiny_checkpoints["transfer"], folder)
    split = data.Split.load(folder / "split.json")
    split.root = str(split.locate_root(tiny_checkpoints["transfer"]))
    model = checkpoints.load_checkpoint(folder).model
    save_features(folder, backbone_key(model), extract_parts(model, split))
    saved = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**saved, "root_relative": "../gone"}))
    return folder


@pytest.mark.slow
def test_head_finetune_on_stored_features_reads_no_photo(photo_less, tmp_path):
    from animalcls.heads.finetune import finetune
    from animalcls.store.stored_features import find_features

    assert data.Split.load(photo_less / "split.json").locate_root(photo_less) is None
    stored = find_features(photo_less, [photo_less.parent])
    assert stored.sizes() == {"train": 35, "val": 5, "test": 10}
    assert stored.parts["train"][0].shape[1] > 0
    result = finetune(photo_less, epochs=2, out_dir=tmp_path / "ft" / "a", stored=stored)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["training"]["method"] == "stored-features" and manifest["training"]["flip"] is False
    assert result.evaluation["n"] == 10 and len(result.history["loss"]) == 2
    assert (result.path / "confusion_matrix.png").is_file() and "/" not in json.dumps(manifest["finetuned_from"])
    # A head-only fine-tune finds its source's features by name; the source's own were used.
    assert find_features(result.path, [photo_less.parent]).folder == photo_less
    with pytest.raises(AnimalclsError, match="needs the photos"):
        finetune(photo_less, epochs=1, unfreeze_layers=2, out_dir=tmp_path / "ft" / "b", stored=stored)


def test_features_of_another_backbone_are_refused(photo_less, tiny_checkpoints, tmp_path):
    from animalcls.heads.finetune import finetune
    from animalcls.store.stored_features import load_features, save_features

    stored = load_features(photo_less)
    save_features(photo_less, "another-backbone", stored.parts)
    with pytest.raises(CheckpointError, match="another backbone"):
        finetune(photo_less, epochs=1, out_dir=tmp_path / "ft" / "c", stored=load_features(photo_less))


def test_store_keeps_the_newest_within_count_and_bytes_never_the_protected(tmp_path):
    root = tmp_path / "finetunes"
    folders = [stored_finetune(root, f"t-ft-{i}", 1000, age=100 - i) for i in range(5)]  # 0 is oldest
    bundled = tmp_path / "checkpoints" / "transfer"
    bundled.mkdir(parents=True)
    store = FinetuneStore(root, StoreLimits(max_count=3, max_bytes=10**6), protected=[bundled])
    assert store.prune(keep=[folders[4]]) == ["t-ft-0", "t-ft-1"]
    store.limits = StoreLimits(max_count=10, max_bytes=2100)
    assert store.prune(keep=[folders[4], folders[2]]) == ["t-ft-3"]  # kept ones stay even if older
    assert sorted(p.name for p in store.stored()) == ["t-ft-2", "t-ft-4"] and bundled.is_dir()


def test_sessions_only_use_server_models_and_their_own(tmp_path):
    root = tmp_path / "finetunes"
    mine = stored_finetune(root, "transfer-ft-1", 10, age=1)
    default = tmp_path / "checkpoints" / "transfer-x"
    default.mkdir(parents=True)
    sessions = SessionModels(lambda: {"scratch": None, "transfer": default}, FinetuneStore(root))
    stranger, owner = new_session(), {**new_session(), "owned": ["transfer-ft-1"]}
    for name in ("transfer-ft-1", "../finetunes/transfer-ft-1", str(mine), ".hidden"):
        with pytest.raises(AnimalclsError):
            sessions.choose(stranger, name, "transfer")
    chosen = sessions.choose(owner, "transfer-ft-1", "transfer")
    assert sessions.paths(chosen)["transfer"] == mine and sessions.paths(stranger)["transfer"] == default
    shutil.rmtree(mine)  # removed to make room: the session falls back to the default
    assert sessions.paths(chosen)["transfer"] == default


def test_the_train_part_borrowed_from_scope_npz_is_checked_against_its_hash(tmp_path):
    import numpy as np

    from animalcls.store.checkpoints import default_pair
    from animalcls.store.stored_features import FEATURES_FILE, load_features

    bundled = default_pair().get("transfer")
    if bundled is None or not (bundled / FEATURES_FILE).is_file():
        pytest.skip("no bundled transfer checkpoint with stored features")
    folder = tmp_path / bundled.name
    folder.mkdir()
    for name in ("scope.npz", "scope.json", "manifest.json"):
        shutil.copy(bundled / name, folder / name)
    with np.load(bundled / FEATURES_FILE) as full:  # a features.npz that leaves its train part to scope.npz
        np.savez(folder / FEATURES_FILE, **{k: full[k] for k in full.files if not k.startswith("train_")})
    stored = load_features(folder)
    assert len(stored.parts["train"][0]) == len(stored.parts["train"][1]) > 0
    payload = bytearray((folder / "scope.npz").read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # one flipped byte in the middle of an array
    (folder / "scope.npz").write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="does not match"):
        load_features(folder)


@pytest.mark.slow
def test_chained_head_finetunes_keep_short_names_their_lineage_and_their_features(photo_less, tmp_path):
    from animalcls.core.settings import finetune_folder
    from animalcls.heads.finetune import finetune
    from animalcls.store.stored_features import find_features

    root, search = tmp_path / "finetunes", [photo_less.parent, tmp_path / "finetunes"]
    chain = [photo_less]
    for step in range(3):
        source = chain[-1]
        stored = find_features(source, search)
        assert stored is not None and stored.folder == photo_less, step
        chain.append(finetune(source, epochs=1, out_dir=finetune_folder(source, root), stored=stored).path)
        if step == 1:
            shutil.rmtree(chain[1])  # the first fine-tune removed to make room (the store's cap)
    names = [folder.name for folder in chain[1:]]
    assert all(name.startswith("transfer-tiny-ft-") and name.count("-ft-") == 1 for name in names), names
    assert len(set(names)) == 3 and max(map(len, names)) <= len("transfer-tiny-ft-20260101-120000-99")
    lineage = json.loads((chain[3] / "manifest.json").read_text())["finetuned_from"]["lineage"]
    assert lineage == ["transfer-tiny", *names[:2]]
    assert find_features(chain[3], search).folder == photo_less


def test_the_bundled_transfer_checkpoint_stores_each_feature_once():
    """train and test live in scope.npz (the detector and teaching read them there), only val in
    features.npz; the loader still returns every part."""
    from animalcls.store.checkpoints import default_pair
    from animalcls.store.stored_features import load_features

    folder = default_pair()["transfer"]
    with np.load(folder / "features.npz") as stored:
        assert sorted(stored.files) == ["backbone_key", "val_features", "val_labels"]
    loaded = load_features(folder)
    assert loaded.sizes() == {"train": 2100, "val": 300, "test": 600}
    assert sum(p.stat().st_size for p in folder.glob("*.npz")) <= 7.5 * 2**20
