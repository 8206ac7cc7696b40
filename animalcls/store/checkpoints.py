"""Checkpoint folders: model.keras + manifest.json + history.json + eval.json + split.json
+ plots. Folders are written atomically and validated on load."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animalcls.core.atomic import atomic_dir, write_json
from animalcls.core.errors import CheckpointError
from animalcls.core.settings import BUNDLED_DIR
from animalcls.store.manifest import KINDS as KINDS
from animalcls.store.manifest import Manifest, now_iso
from animalcls.store.manifest import library_versions as library_versions

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.json"
EVAL_FILE = "eval.json"
SPLIT_FILE = "split.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"


class ManifestFacts:
    """What every object holding a checkpoint's manifest (a Checkpoint, a serving engine) reads from it."""

    manifest: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])


@dataclass
class Checkpoint(ManifestFacts):
    """A loaded checkpoint folder."""

    path: Path
    manifest: dict[str, Any]
    model: Any = None
    history: dict[str, list[float]] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @property
    def title(self) -> str:
        return f"{self.manifest['name']} ({self.manifest['kind']}, {self.manifest['backbone']})"


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"Missing {Path(path).name} in {Path(path).parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"Corrupt {Path(path).name} in {Path(path).parent}: {exc}") from None


def save_checkpoint(
    out_dir: Path,
    model: Any,
    manifest: dict[str, Any],
    history: dict[str, list[float]] | None = None,
    evaluation: dict[str, Any] | None = None,
    split: Any = None,
    overwrite: bool = False,
    figures: Mapping[str, Any] | None = None,
    write_model: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (a temp folder renamed into place), so a crash
    never leaves a half-written checkpoint. An existing folder is replaced only with
    `overwrite=True`. `figures` maps file names (HISTORY_PLOT, CONFUSION_PLOT) to objects with
    `savefig`: the caller draws them, the store only writes them. `write_model(path)`, when
    given, writes `model`'s .keras file instead of Keras (a faster writer that knows more)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"Checkpoint folder already exists: {out_dir} (choose another --out).")
    _validate_manifest(manifest, out_dir)
    figures = dict(figures or {})
    with atomic_dir(out_dir) as tmp:
        (write_model or _without_optimizer(model).save)(tmp / MODEL_FILE)
        manifest = {**manifest, "files": _file_list(history, evaluation, split, figures)}
        manifest.setdefault("created", now_iso())
        manifest.setdefault("versions", library_versions())
        write_json(tmp / MANIFEST_FILE, manifest)
        for name, data in ((HISTORY_FILE, history), (EVAL_FILE, evaluation)):
            if data is not None:
                write_json(tmp / name, data)
        for name, figure in figures.items():
            figure.savefig(tmp / name, dpi=100)
        if split is not None:
            split.save(tmp / SPLIT_FILE)
    return out_dir


def _without_optimizer(model: Any) -> Any:
    """An uncompiled copy with the same weights: a checkpoint is for inference and
    fine-tuning, and Adam's two slots per weight would triple the file size."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _file_list(history: Any, evaluation: Any, split: Any, figures: Mapping[str, Any]) -> list[str]:
    files = [MODEL_FILE, MANIFEST_FILE]
    files += [HISTORY_FILE] if history is not None else []
    files += [HISTORY_PLOT] if HISTORY_PLOT in figures else []
    files += [EVAL_FILE] if evaluation is not None else []
    files += [CONFUSION_PLOT] if CONFUSION_PLOT in figures else []
    files += [SPLIT_FILE] if split is not None else []
    return files


def _validate_manifest(manifest: Any, where: Path) -> None:
    Manifest.from_json(manifest, where)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint's manifest without loading the model (fast)."""
    folder = Path(path)
    if folder.is_file():
        raise CheckpointError(
            f"{folder} is a file, not a checkpoint folder (the checkpoint comes first, then any images)."
        )
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder not found: {folder}")
    manifest = read_json(folder / MANIFEST_FILE)
    _validate_manifest(manifest, folder)
    return manifest


def load_checkpoint(path: str | Path, load_model: bool = True) -> Checkpoint:
    """Load and validate a checkpoint folder; the model loads with Keras safe_mode."""
    folder = Path(path)
    manifest = read_manifest(folder)
    checkpoint = Checkpoint(folder, manifest)
    if (folder / HISTORY_FILE).exists():
        checkpoint.history = read_json(folder / HISTORY_FILE)
    if (folder / EVAL_FILE).exists():
        checkpoint.evaluation = read_json(folder / EVAL_FILE)
    if load_model:
        checkpoint.model = _load_model(folder / MODEL_FILE)
        _check_shapes(checkpoint)
    return checkpoint


def check_model_archive(folder: Path) -> None:
    """A cheap check that model.keras is there and is a Keras (zip) archive; no TensorFlow."""
    path = folder / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"Missing {MODEL_FILE} in {folder}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"Corrupt {MODEL_FILE} in {folder}: not a Keras archive.")


def _load_model(path: Path) -> Any:
    import keras

    check_model_archive(path.parent)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a broken archive
        raise CheckpointError(f"Could not load {path}: {type(exc).__name__}: {exc}") from None


def _check_shapes(checkpoint: Checkpoint) -> None:
    model, manifest = checkpoint.model, checkpoint.manifest
    outputs = model.output_shape[-1]
    if outputs != len(manifest["class_names"]):
        raise CheckpointError(
            f"{checkpoint.path}: the model outputs {outputs} classes but manifest.json lists "
            f"{len(manifest['class_names'])} ({', '.join(manifest['class_names'])})."
        )
    expected = (int(manifest["image_size"]), int(manifest["image_size"]), 3)
    if tuple(model.input_shape[1:]) != expected:
        raise CheckpointError(
            f"{checkpoint.path}: the model takes {tuple(model.input_shape[1:])} but manifest.json says {expected}."
        )


def find_checkpoints(root: str | Path = BUNDLED_DIR) -> list[Path]:
    """Checkpoint folders directly under `root` (those with a manifest.json), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file() and not p.name.startswith("."))


def default_pair(root: str | Path = BUNDLED_DIR) -> dict[str, Path]:
    """The checkpoint to use for each kind: `root/defaults.json` if present ({"scratch": name,
    "transfer": name}), else the newest folder of each kind."""
    root = Path(root)
    if (root / "defaults.json").is_file():
        chosen = read_json(root / "defaults.json")
        return {kind: root / name for kind, name in chosen.items() if (root / name / MANIFEST_FILE).is_file()}
    pair: dict[str, tuple[str, Path]] = {}
    for folder in find_checkpoints(root):
        try:
            manifest = read_manifest(folder)
        except CheckpointError:
            continue
        created = str(manifest.get("created", ""))
        if manifest["kind"] not in pair or created > pair[manifest["kind"]][0]:
            pair[manifest["kind"]] = (created, folder)
    return {kind: folder for kind, (_, folder) in pair.items()}
