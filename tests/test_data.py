import json
import shutil

import numpy as np
import pytest
from conftest import make_dataset, make_image
from PIL import Image

from animalcls.core.errors import DataError
from animalcls.data import dataset as data


def test_scan_animals10_layout_maps_italian_folders(synthetic_data):
    scan = data.scan_folder(synthetic_data)
    assert scan.root.name == "raw-img"
    assert scan.class_names == ("cat", "spider", "butterfly", "elephant", "chicken")
    assert scan.counts() == {name: 10 for name in scan.class_names}
    assert scan.class_folders["cat"] == "gatto"
    # cane (dog) is present on disk but not selected
    assert not any(s.rel.startswith("cane/") for s in scan.samples)


def test_scan_english_layout_and_custom_classes(tmp_path):
    root = make_dataset(tmp_path / "en", per_class=4, italian=False)
    scan = data.scan_folder(root, ["dog", "cat"])
    assert scan.class_names == ("dog", "cat")
    assert {s.label for s in scan.samples if s.rel.startswith("dog/")} == {0}


def test_corrupt_and_non_image_files_are_skipped_and_reported(synthetic_data):
    folder = synthetic_data / "raw-img" / "gatto"
    (folder / "notes.txt").write_text("hello")
    (folder / "fake.jpg").write_bytes(b"definitely not a jpeg")
    good = (folder / "gatto_000.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    scan = data.scan_folder(synthetic_data)
    skipped = {rel for rel, _ in scan.skipped}
    assert skipped == {"gatto/notes.txt", "gatto/fake.jpg", "gatto/truncated.jpg"}
    assert scan.counts()["cat"] == 10
    assert "Skipped 3" in scan.skipped_report()


def test_missing_class_folder_names_class_and_folder(synthetic_data):
    shutil.rmtree(synthetic_data / "raw-img" / "ragno")
    with pytest.raises(DataError, match=r"spider.*raw-img.*'spider/' or 'ragno/'"):
        data.scan_folder(synthetic_data)


def test_empty_class_folder_is_a_clear_error(synthetic_data):
    folder = synthetic_data / "raw-img" / "farfalla"
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"xx")
    with pytest.raises(DataError, match="butterfly.*no readable images.*farfalla"):
        data.scan_folder(synthetic_data)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.scan_folder(tmp_path / "nope")


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=20)
    scan = data.scan_folder(root)
    first, second = data.split_scan(scan, seed=7), data.split_scan(scan, seed=7)
    assert first.to_json() == second.to_json()
    assert data.split_scan(scan, seed=8).test != first.test
    summary = first.summary()
    assert summary["sizes"] == {"train": 70, "val": 10, "test": 20}
    assert all(n == 4 for n in summary["per_class"]["test"].values())
    parts = [set(rel for rel, _ in getattr(first, p)) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_byte_identical_duplicates_stay_on_one_side(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=20)
    folder = root / "raw-img" / "gatto"
    for i in range(8):  # many copies of one photo under other names
        shutil.copy(folder / "gatto_000.jpg", folder / f"copy_{i}.jpg")
    split = data.split_scan(data.scan_folder(root), seed=1)
    copies = {"gatto/gatto_000.jpg", *(f"gatto/copy_{i}.jpg" for i in range(8))}
    sides = [p for p in ("train", "val", "test") if copies & {rel for rel, _ in getattr(split, p)}]
    assert len(sides) == 1


def test_split_manifest_round_trips_with_relative_paths(tmp_path, synthetic_data):
    split = data.split_scan(data.scan_folder(synthetic_data))
    split.save(tmp_path / "split.json")
    loaded = data.Split.load(tmp_path / "split.json")
    assert loaded.to_json() == split.to_json()
    assert all(not rel.startswith("/") for rel, _ in loaded.train)


def test_locate_root_prefers_path_relative_to_checkpoint(tmp_path, synthetic_data):
    split = data.split_scan(data.scan_folder(synthetic_data))
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_data, moved)
    checkpoint = moved / "ckpt"
    checkpoint.mkdir()
    split.root = "/nonexistent/raw-img"
    split.root_relative = "../raw-img"
    assert split.locate_root(checkpoint) == (moved / "raw-img").resolve()
    split.root_relative = None
    assert split.locate_root(checkpoint) is None


def test_pipeline_decodes_resizes_and_flips_only_training(tmp_path):
    # left half black, right half white: a flip is visible in the mean of each half
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, 10:] = 255
    path = tmp_path / "half.png"
    Image.fromarray(image).save(path)
    paths, labels = [str(path)] * 64, [1] * 64
    train = data.make_dataset(paths, labels, 3, 16, 64, training=True, seed=0)
    test = data.make_dataset(paths, labels, 3, 16, 64, training=False)
    x_train, y = next(iter(train))
    x_test, _ = next(iter(test))
    assert x_train.shape == (64, 16, 16, 3) and y.shape == (64, 3)
    assert float(x_test.numpy().max()) > 200  # raw 0-255, not normalised
    flipped = (x_train.numpy()[:, :, :8].mean(axis=(1, 2, 3)) > 127).sum()
    assert 10 < flipped < 54  # roughly half the copies flipped
    assert (x_test.numpy()[:, :, :8].mean(axis=(1, 2, 3)) < 127).all()


def test_pipeline_reads_16_bit_png_and_gif(tmp_path):
    Image.fromarray((np.ones((10, 10)) * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    make_image(tmp_path / "a.gif", (10, 200, 10))
    ds = data.make_dataset([str(tmp_path / "deep.png"), str(tmp_path / "a.gif")], [0, 1], 2, 8, 2)
    x, _ = next(iter(ds))
    assert x.shape == (2, 8, 8, 3) and float(x.numpy().max()) <= 255.0


def test_strong_augment_crops_and_jitters_only_training(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    paths, labels = [str(tmp_path / "noise.png")] * 8, [0] * 8
    plain = next(iter(data.make_dataset(paths, labels, 2, 32, 8, training=True)))[0].numpy()
    strong = next(iter(data.make_dataset(paths, labels, 2, 32, 8, training=True, strong_augment=True)))[0].numpy()
    assert strong.shape == (8, 32, 32, 3) and strong.min() >= 0 and strong.max() <= 255
    # flips alone give at most two distinct images; crops and jitter give many
    assert len({x.tobytes() for x in plain}) <= 2
    assert len({x.tobytes() for x in strong}) > 4


def test_saved_split_records_no_absolute_path_and_old_files_still_load(tmp_path, synthetic_data):
    split = data.split_scan(data.scan_folder(synthetic_data), seed=1)
    split.root_relative = "../animals/raw-img"
    split.save(tmp_path / "split.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    assert (
        "root" not in saved
        and str(tmp_path) not in json.dumps(saved)
        and str(synthetic_data) not in json.dumps(split.summary())
    )
    assert saved["root_name"] == "raw-img"
    loaded = data.Split.load(tmp_path / "split.json")
    assert loaded.root == "" and loaded.train == split.train
    (tmp_path / "ckpt").mkdir()
    assert loaded.locate_root(tmp_path / "ckpt") == (synthetic_data / "raw-img").resolve()  # tmp_path/ckpt/../animals
    old = {**saved, "root": str(synthetic_data / "raw-img"), "root_relative": None}  # an old file
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert data.Split.load(tmp_path / "old.json").locate_root(tmp_path) == (synthetic_data / "raw-img").resolve()


def test_bundled_checkpoints_record_no_absolute_path():
    from conftest import REPO

    for path in sorted((REPO / "checkpoints").glob("*/*.json")):
        text = path.read_text()
        assert '"/' not in text and "/work" not in text and "/home" not in text, path


def test_split_version_is_checked_on_load(tmp_path):
    import json

    from animalcls.core.errors import DataError
    from animalcls.data.dataset import SPLIT_VERSION, Split

    split = Split("/data", ["cat", "dog"], 42, 0.2, 0.1, [("cat/a.jpg", 0)], [], [("dog/b.jpg", 1)])
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").version == SPLIT_VERSION
    data = json.loads((tmp_path / "split.json").read_text())
    del data["version"]  # written before versions were recorded: read as version 1
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert Split.load(tmp_path / "old.json").version == 1
    for version in (SPLIT_VERSION + 1, "2", 0):
        (tmp_path / "new.json").write_text(json.dumps({**data, "version": version}))
        with pytest.raises(DataError, match="upgrade animalcls"):
            Split.load(tmp_path / "new.json")
