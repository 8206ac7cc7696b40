"""Class names: the study's five classes and Animals-10's Italian folder names."""

from __future__ import annotations

from collections.abc import Iterable

from animalcls.core.errors import DataError

ITALIAN_TO_ENGLISH: dict[str, str] = {
    "cane": "dog",
    "cavallo": "horse",
    "elefante": "elephant",
    "farfalla": "butterfly",
    "gallina": "chicken",
    "gatto": "cat",
    "mucca": "cow",
    "pecora": "sheep",
    "ragno": "spider",
    "scoiattolo": "squirrel",
}
ENGLISH_TO_ITALIAN: dict[str, str] = {en: it for it, en in ITALIAN_TO_ENGLISH.items()}

# The study's subset, in the fixed output order of every model this project trains.
# The order is written down here, never derived from how folder names sort.
DEFAULT_CLASSES: tuple[str, ...] = ("cat", "spider", "butterfly", "elephant", "chicken")


def to_english(name: str) -> str:
    """Return the English class name for an English or Italian Animals-10 name."""
    key = name.strip().lower()
    return ITALIAN_TO_ENGLISH.get(key, key)


def resolve_classes(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """Normalise a class selection to English names, keeping the given order."""
    if names is None:
        return DEFAULT_CLASSES
    resolved = tuple(to_english(n) for n in names if n.strip())
    if not resolved:
        raise DataError("No classes selected: pass at least one class name.")
    duplicates = sorted({c for c in resolved if resolved.count(c) > 1})
    if duplicates:
        raise DataError(f"Classes selected more than once: {', '.join(duplicates)}.")
    return resolved


def folder_candidates(class_name: str) -> tuple[str, ...]:
    """Folder names that may hold a class: its English name, then its Italian one."""
    italian = ENGLISH_TO_ITALIAN.get(class_name)
    return (class_name,) if italian is None else (class_name, italian)
