"""The typed manifest of a checkpoint folder (manifest.json): what the model is, how it was made.

One dataclass with `validate()`, read by the store and written by two builders only:
`Manifest.new` for a training run and `Manifest.derive` for anything made from another
checkpoint (a fine-tune, a taught model). Keys this version does not know are kept in `extra`
and written back unchanged, so an older or newer file survives a round trip. Standard library
only: the store and every light module may import it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from animalcls.core.errors import CheckpointError

KINDS = ("scratch", "transfer")
REQUIRED_KEYS = ("name", "kind", "backbone", "image_size", "class_names")
_VERSIONED_PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn", "pillow")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape a saved model (read from metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    name: str
    kind: str
    backbone: str
    image_size: int
    class_names: list[str]
    preprocessing: dict[str, Any] | None = None
    weights: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    finetuned_from: dict[str, Any] | None = None
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls, name: str, kind: str, backbone: str, image_size: int, class_names: list[str], **details: Any
    ) -> Manifest:
        """The manifest of a fresh training run, stamped with the time and library versions."""
        manifest = cls(
            name=name,
            kind=kind,
            backbone=backbone,
            image_size=int(image_size),
            class_names=list(class_names),
            **details,
        )
        return manifest.stamped()

    def derive(self, name: str, training: dict[str, Any], dataset: dict[str, Any], **changes: Any) -> Manifest:
        """The manifest of a checkpoint made from this one (fine-tuned or taught): same model
        facts unless `changes` says otherwise, its own name, training and dataset, provenance kept."""
        provenance = {"name": self.name, "lineage": [*self.lineage(), self.name], **changes.pop("finetuned_from", {})}
        derived = replace(
            self,
            name=name,
            training={**training, "source_training": self.training},
            dataset=dataset,
            finetuned_from=provenance,
            files=[],
            **changes,
        )
        return derived.stamped()

    def lineage(self) -> list[str]:
        """The names of the checkpoints this one was made from, the original first, its direct
        source last; [] for an original (only the source's name for an older manifest)."""
        source = self.finetuned_from or {}
        earlier = source.get("lineage")
        if isinstance(earlier, list) and all(isinstance(name, str) for name in earlier):
            return list(earlier)
        return [source["name"]] if isinstance(source.get("name"), str) else []

    def stamped(self) -> Manifest:
        return replace(self, created=now_iso(), versions=library_versions()).validate()

    def validate(self, where: str | Path = "manifest") -> Manifest:
        """Raise CheckpointError naming the first field that a reader could not use."""

        def fail(what: str) -> None:
            raise CheckpointError(f"manifest.json in {where}: {what}")

        if not isinstance(self.name, str) or not self.name:
            fail("name must be a non-empty string.")
        if self.kind not in KINDS:
            fail(f"kind must be one of {KINDS}, got {self.kind!r}.")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1:
            fail(f"image_size must be a positive whole number, got {self.image_size!r}.")
        names = self.class_names
        if (
            not isinstance(names, list)
            or not names
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n for n in names)
        ):
            fail("class_names must be a non-empty list of unique names.")
        for part in ("training", "dataset", "versions", "extra"):
            if not isinstance(getattr(self, part), dict):
                fail(f"{part} must be an object.")
        return self

    @classmethod
    def from_json(cls, data: Any, where: str | Path = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise CheckpointError(f"manifest.json in {where} is not a JSON object.")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise CheckpointError(f"manifest.json in {where} lacks: {', '.join(missing)}.")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: data[key] for key in known if data.get(key) is not None}
        manifest = cls(**values, extra={key: value for key, value in data.items() if key not in known})
        return manifest.validate(where)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, in a stable key order; empty optional parts left out."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for optional in ("finetuned_from", "files"):
            if not data[optional]:
                del data[optional]
        return {**data, **self.extra}
