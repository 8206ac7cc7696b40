"""Your own photos for teaching a checkpoint: which classes, in what order, and how they split.

No TensorFlow: the CLI runs all of this (and refuses bad input) before importing it.

* A teaching folder holds one sub-folder per class (`dog/`, `cane/`, `my cat/`...); a folder
  named after one of the checkpoint's classes (English or Animals-10 Italian) adds photos to
  that class, any other folder is a NEW class named after it (Italian names become English).
* Class order of the result (`union_classes`): the checkpoint's classes in their own order,
  then the new ones in the order `--classes` gives, else alphabetically. Old output indices
  therefore never move.
* Split rule (`plan_split`), per class of the folder, seeded:
  - 5 photos or more: stratified, `round(20 %)` (at least 1) held out for evaluation;
    byte-identical photos stay on one side;
  - 2 to 4 photos: all of them train; the class is listed as `tiny` and is not scored on its
    own photos (its effect on the other classes still is);
  - 1 photo (or none readable): refused, naming the class.
  The original classes are scored on the stored test-split features when the checkpoint
  has them (see scope.py), and trained on its stored train-split features.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animalcls.core.errors import DataError
from animalcls.core.labels import to_english
from animalcls.data.dataset import IMAGE_EXTENSIONS, check_image, dataset_root

MIN_PHOTOS = 2  # per class: one photo cannot be split or checked, and is refused
MIN_FOR_HOLDOUT = 5  # below this a class trains on all its photos and is reported as tiny
HOLDOUT_FRACTION = 0.2
SPLIT_RULE = (
    "per class of the folder: 5+ photos -> 20 % (at least 1) held out for evaluation, stratified, seeded, "
    "duplicates kept on one side; 2-4 photos -> all train and the class is not scored on its own photos (tiny); "
    "1 photo -> refused. Original classes: trained on the checkpoint's stored train-split features and scored "
    "on its stored test-split features."
)


@dataclass
class TeachPhotos:
    """The usable photos of a teaching folder, per class (English names), and what was skipped."""

    root: Path
    photos: dict[str, list[str]]  # class -> paths relative to root, sorted
    folders: dict[str, str]  # class -> its folder name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def counts(self) -> dict[str, int]:
        return {name: len(paths) for name, paths in self.photos.items()}


@dataclass
class TeachSplit:
    """Per class: the photos that train and those held out; plus the classes too small to score."""

    train: dict[str, list[str]]
    test: dict[str, list[str]]
    tiny: list[str]
    seed: int

    def summary(self) -> dict[str, Any]:
        return {
            "rule": SPLIT_RULE,
            "seed": self.seed,
            "tiny": list(self.tiny),
            "train": {k: list(v) for k, v in self.train.items()},
            "test": {k: list(v) for k, v in self.test.items()},
        }


def class_name_of(folder: str) -> str:
    """A folder's class: Animals-10 Italian names become English, others are kept (trimmed, lower case)."""
    return to_english(folder)


def scan_teach_folder(path: str | Path, classes: Sequence[str] | None = None) -> TeachPhotos:
    """Every readable photo of every class folder under `path` (or only `classes`, which
    must all have a folder). Unreadable files are skipped and listed; a class left with fewer
    than two photos is a DataError naming it."""
    root = dataset_root(path)
    folders = {class_name_of(f.name): f for f in sorted(root.iterdir()) if f.is_dir() and not f.name.startswith(".")}
    if classes:
        wanted = [class_name_of(c) for c in classes]
        missing = [c for c in wanted if c not in folders]
        if missing:
            raise DataError(
                f"No folder for class(es) {', '.join(missing)} in {root} (found: {', '.join(folders) or 'none'})."
            )
        folders = {c: folders[c] for c in wanted}
    if not folders:
        raise DataError(f"{root} has no class sub-folders: put each class's photos in its own folder (e.g. dog/).")
    found = TeachPhotos(root, {}, {name: folder.name for name, folder in folders.items()})
    for name, folder in folders.items():
        found.photos[name] = _usable_photos(root, folder, found.skipped)
    _refuse_tiny(found)
    return found


def _usable_photos(root: Path, folder: Path, skipped: list[tuple[str, str]]) -> list[str]:
    usable = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        rel = file.relative_to(root).as_posix()
        reason = None if file.suffix.lower() in IMAGE_EXTENSIONS else "not an image file extension"
        reason = reason or check_image(file)
        if reason:
            skipped.append((rel, reason))
        else:
            usable.append(rel)
    return usable


def _refuse_tiny(found: TeachPhotos) -> None:
    for name, paths in found.photos.items():
        if len(paths) < MIN_PHOTOS:
            have = "one photo" if paths else "no readable photo"
            raise DataError(
                f"Class '{name}' has {have} in {found.root / found.folders[name]}: teaching a class needs at "
                f"least {MIN_PHOTOS} photos (10 or more give a usable model)."
            )


def union_classes(base: Sequence[str], folder_classes: Sequence[str], order: Sequence[str] | None = None) -> list[str]:
    """The result's classes: `base` in its order, then the new ones in `order` (e.g. --classes)
    when given, else alphabetically."""
    new = [c for c in folder_classes if c not in base]
    if order:
        ranked = [class_name_of(c) for c in order]
        new.sort(key=lambda c: ranked.index(c) if c in ranked else len(ranked))
    else:
        new.sort()
    return [*base, *new]


def plan_split(found: TeachPhotos, seed: int = 42) -> TeachSplit:
    """Apply the split rule (module docstring) to each class of the folder."""
    split = TeachSplit({}, {}, [], seed)
    for name, paths in found.photos.items():
        groups: dict[str, list[str]] = {}
        for rel in paths:
            groups.setdefault(_sha1(found.root / rel), []).append(rel)
        keys = sorted(groups)
        if len(keys) < MIN_FOR_HOLDOUT:  # distinct photos: copies would leak into the held-out part
            split.train[name], split.test[name] = list(paths), []
            split.tiny.append(name)
            continue
        random.Random(f"{seed}:{name}").shuffle(keys)
        held = max(1, round(HOLDOUT_FRACTION * len(keys)))
        split.test[name] = sorted(r for k in keys[:held] for r in groups[k])
        split.train[name] = sorted(r for k in keys[held:] for r in groups[k])
    return split


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
