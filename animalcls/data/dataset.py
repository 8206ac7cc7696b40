"""Scan and validate image folders, make the split manifest, build tf.data pipelines."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from animalcls.core.errors import DataError
from animalcls.core.labels import folder_candidates, resolve_classes
from animalcls.data.preprocessing import DEFAULT, Preprocessing

# Extensions and decoders tf.data can read; other formats are reported and skipped.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})
TF_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF"})
SPLIT_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """One validated image: its path relative to the dataset root, its label and content hash."""

    rel: str
    label: int
    sha1: str


@dataclass
class Scan:
    """The result of scanning a dataset folder for a class selection."""

    root: Path
    class_names: tuple[str, ...]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    class_folders: dict[str, str] = field(default_factory=dict)  # class -> folder relative to root

    def counts(self) -> dict[str, int]:
        counter = Counter(s.label for s in self.samples)
        return {name: counter.get(i, 0) for i, name in enumerate(self.class_names)}

    def skipped_report(self) -> str:
        lines = [f"Skipped {len(self.skipped)} unreadable file(s):"]
        lines += [f"  {rel}: {reason}" for rel, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class Split:
    """A deterministic train/val/test split, stored as paths relative to the dataset root.

    `root` is where the dataset is on THIS machine, set at run time and never saved: a saved
    split records only `root_relative` (the dataset relative to the checkpoint folder holding
    it), the root folder's name and, for a Hub dataset, its ORG/NAME. Old files that still
    hold an absolute `root` load, and that path is tried last by `locate_root`.
    """

    root: str
    class_names: list[str]
    seed: int
    test_fraction: float
    val_fraction: float
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    version: int = SPLIT_VERSION
    # The dataset root relative to the checkpoint folder holding this split, so a clone in
    # another place (CI, another user) still finds a dataset at the same relative location.
    root_relative: str | None = None
    origin: dict[str, str] = field(default_factory=dict)  # as loaded: root_name, hub_dataset

    def to_json(self) -> dict[str, Any]:
        """The saved form: no absolute path (a clone on another machine has none of them)."""
        saved = {key: value for key, value in asdict(self).items() if key not in ("root", "origin")}
        return {**saved, **self.describe_origin()}

    def describe_origin(self) -> dict[str, str]:
        return dataset_origin(self.root) if self.root else dict(self.origin)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        known = set(cls.__dataclass_fields__) - {"origin"}
        fields = {key: value for key, value in data.items() if key in known}
        fields.setdefault("root", "")
        fields["origin"] = {key: str(data[key]) for key in ("root_name", "hub_dataset") if data.get(key)}
        version = fields.setdefault("version", SPLIT_VERSION)  # files written before versions were recorded
        if not isinstance(version, int) or not 1 <= version <= SPLIT_VERSION:
            raise DataError(
                f"split.json has version {version!r}; this animalcls reads versions 1 to {SPLIT_VERSION}: "
                "upgrade animalcls."
            )
        for part in ("train", "val", "test"):
            fields[part] = [(str(rel), int(label)) for rel, label in fields[part]]
        return cls(**fields)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split file; a missing, unreadable or malformed one is a DataError naming it."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"Missing split file: {path}") from None
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"Corrupt split file {path}: {exc}") from None
        except (KeyError, TypeError, AttributeError) as exc:  # valid JSON, not a split
            raise DataError(f"Corrupt split file {path}: not a split ({type(exc).__name__}: {exc}).") from None

    def summary(self) -> dict[str, Any]:
        """For manifests: sizes per part and class, and where the data came from (no absolute path)."""
        return {
            **self.describe_origin(),
            "root_relative": self.root_relative,
            "seed": self.seed,
            "sizes": {p: len(getattr(self, p)) for p in ("train", "val", "test")},
            "per_class": {p: _count_labels(getattr(self, p), self.class_names) for p in ("train", "val", "test")},
        }

    def describe(self) -> str:
        """A short description for people: "2,100 training photos of 5 classes (cat, spider, ...)"."""
        return f"{len(self.train):,} training photos of {len(self.class_names)} classes ({', '.join(self.class_names)})"

    def locate_root(self, checkpoint_dir: Path | None = None) -> Path | None:
        """The dataset root on this machine: relative to the checkpoint folder, else an
        absolute path recorded by an old version; None when neither exists."""
        candidates = [Path(checkpoint_dir) / self.root_relative] if checkpoint_dir and self.root_relative else []
        candidates += [Path(self.root)] if self.root else []
        for candidate in candidates:
            if candidate.is_dir():
                return candidate.resolve()
        return None

    def require_root(self, checkpoint_dir: Path) -> Path:
        """`locate_root`, or a DataError naming the folder that was looked for and where."""
        root = self.locate_root(checkpoint_dir)
        if root is not None:
            return root
        looked = [str((Path(checkpoint_dir) / self.root_relative).resolve())] if self.root_relative else []
        looked += [self.root] if self.root else []
        origin = self.describe_origin()
        name = origin.get("hub_dataset") or origin.get("root_name") or (Path(looked[0]).name if looked else "")
        where = f" (looked in {' and '.join(looked)})" if looked else " (the split records no location)"
        raise DataError(
            f"The recorded dataset folder {name or '(unnamed)'} is not on this machine{where}: "
            "pass --data DIR to use a dataset elsewhere."
        )

    def paths(self, part: str, root: Path | None = None) -> tuple[list[str], list[int]]:
        """Absolute paths and labels of one part; `root` overrides the recorded dataset root."""
        base = Path(root) if root is not None else Path(self.root)
        items = getattr(self, part)
        return [str(base / rel) for rel, _ in items], [label for _, label in items]


def dataset_origin(root: str | Path | None) -> dict[str, str]:
    """What may be recorded about a dataset root: its folder name, and ORG/NAME when it is a
    Hub dataset in the Hub cache (`.../datasets--ORG--NAME/...`)."""
    if not root:
        return {}
    origin = {"root_name": Path(root).name}
    match = re.search(r"datasets--([^/\\]+?)--([^/\\]+)", str(root))
    if match:
        origin["hub_dataset"] = f"{match[1]}/{match[2]}"
    return origin


def _count_labels(items: Sequence[tuple[str, int]], class_names: Sequence[str]) -> dict[str, int]:
    counter = Counter(label for _, label in items)
    return {name: counter.get(i, 0) for i, name in enumerate(class_names)}


def dataset_root(path: str | Path) -> Path:
    """The folder holding class folders: `path` itself, or its `raw-img/` (Animals-10 layout)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"Dataset folder not found: {root}")
    raw = root / "raw-img"
    return raw if raw.is_dir() else root


def check_image(path: Path) -> str | None:
    """Return why `path` is not a usable image, or None when it decodes fully."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # a full decode catches truncated files that verify() lets through
                if img.format not in TF_FORMATS:
                    return f"{img.format} images are not supported for training"
                if img.format == "JPEG" and img.mode == "CMYK":
                    return "CMYK JPEG is not supported for training"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
        return f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return None


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def class_folders(path: str | Path, classes: Sequence[str] | None = None) -> tuple[Path, dict[str, Path]]:
    """(the dataset root, each class's folder): a DataError for a missing one, without reading an image."""
    root = dataset_root(path)
    return root, {name: _class_folder(root, name) for name in resolve_classes(classes)}


def _class_folder(root: Path, class_name: str) -> Path:
    for candidate in folder_candidates(class_name):
        folder = root / candidate
        if folder.is_dir():
            return folder
    names = " or ".join(f"'{c}/'" for c in folder_candidates(class_name))
    raise DataError(f"Class '{class_name}' has no folder in {root}: expected {names}.")


def scan_folder(
    path: str | Path,
    classes: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scan:
    """Find and validate every image of the selected classes under `path`.

    Unreadable files are skipped and listed in `Scan.skipped`; a class with no usable
    image raises `DataError` naming the class and folder.
    """
    root, folders = class_folders(path, classes)
    class_names = tuple(folders)  # resolve_classes order, as before
    candidates = [
        (label, file)
        for label, name in enumerate(class_names)
        for file in sorted(folders[name].rglob("*"))
        if file.is_file() and not file.name.startswith(".")
    ]
    scan = Scan(root, class_names, [], class_folders={n: f.name for n, f in folders.items()})
    for done, (label, file) in enumerate(candidates, 1):
        rel = file.relative_to(root).as_posix()
        reason = None if file.suffix.lower() in IMAGE_EXTENSIONS else "not an image file extension"
        reason = reason or check_image(file)
        if reason:
            scan.skipped.append((rel, reason))
        else:
            scan.samples.append(Sample(rel, label, file_sha1(file)))
        if progress:
            progress(done, len(candidates))
    for name, count in scan.counts().items():
        if count == 0:
            raise DataError(f"Class '{name}' has no readable images in {folders[name]}.")
    return scan


def split_scan(scan: Scan, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 42) -> Split:
    """Stratified train/val/test split; byte-identical duplicates stay on one side.

    `test_fraction` is the study's 20 % test split; `val_fraction` (of the whole) is taken
    from the remaining 80 % for early stopping and checkpoint selection, so the test split
    is never used to pick a model.
    """
    groups: dict[str, list[Sample]] = {}
    for sample in scan.samples:
        groups.setdefault(sample.sha1, []).append(sample)
    keys = sorted(groups)
    labels = [groups[k][0].label for k in keys]
    rest, test = _stratified(keys, labels, test_fraction, seed)
    rest_labels = [groups[k][0].label for k in rest]
    val_share = val_fraction / (1.0 - test_fraction) if val_fraction > 0 else 0.0
    train, val = _stratified(rest, rest_labels, val_share, seed + 1) if val_share > 0 else (rest, [])

    def expand(part: list[str]) -> list[tuple[str, int]]:
        return sorted((s.rel, s.label) for k in part for s in groups[k])

    return Split(
        root=str(scan.root.resolve()),
        class_names=list(scan.class_names),
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train=expand(train),
        val=expand(val),
        test=expand(test),
    )


def _stratified(keys: list[str], labels: list[int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 and len(keys) * fraction >= len(counts) else None
    first, second = train_test_split(keys, test_size=fraction, random_state=seed, stratify=stratify)
    return list(first), list(second)


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    image_size: int,
    batch_size: int,
    training: bool = False,
    seed: int = 42,
    strong_augment: bool = False,
):
    """A tf.data pipeline of (raw RGB float32 0-255 images, one-hot labels).

    Training pipelines shuffle and flip horizontally, as in the study; `strong_augment` adds a
    random crop of 50-100 % of the photo and brightness/contrast jitter. Others keep file order.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path, label):
        data = tf.io.read_file(path)
        image = random_crop_resize(data, image_size) if training and strong_augment else decode_resize(data, image_size)
        if training:
            image = tf.image.random_flip_left_right(image, seed=seed)
        if training and strong_augment:
            image = tf.image.random_brightness(image, 25.0)
            image = tf.clip_by_value(tf.image.random_contrast(image, 0.8, 1.2), 0.0, 255.0)
        return image, tf.one_hot(label, num_classes)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def decode_resize(data, image_size: int, spec: Preprocessing = DEFAULT):
    """Decode JPEG/PNG/GIF/BMP bytes to a float32 RGB tensor of image_size x image_size,
    resized as `spec` says (the tf.data twin of `preprocessing.to_model_input`)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return _resize(tf.cast(image, tf.float32), image_size, spec)


def _resize(image, image_size: int, spec: Preprocessing = DEFAULT):
    import tensorflow as tf

    return tf.image.resize(image, (image_size, image_size), method=spec.resize, antialias=spec.antialias)


def random_crop_resize(data, image_size: int):
    """Decode, take a random box of 50-100 % of the area (aspect 3:4 to 4:3), resize."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4]),
        area_range=(0.5, 1.0),
        aspect_ratio_range=(0.75, 1.33),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    return _resize(tf.cast(crop, tf.float32), image_size)
