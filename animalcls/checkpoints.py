"""Checkpoint folders: model.keras + manifest.json + history.json + eval.json + split.json
+ plots. Folders are written atomically and validated on load."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.json"
EVAL_FILE = "eval.json"
SPLIT_FILE = "split.json"
HISTORY_PLOT = "history.png"
CONFUSION_PLOT = "confusion_matrix.png"
REQUIRED_KEYS = ("name", "kind", "backbone", "image_size", "class_names")
KINDS = ("scratch", "transfer")

# Bundled checkpoints live next to the package, so an installed app finds them anywhere.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


@dataclass
class Checkpoint:
    """A loaded checkpoint folder."""

    path: Path
    manifest: dict[str, Any]
    model: Any = None
    history: dict[str, list[float]] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def title(self) -> str:
        return f"{self.manifest['name']} ({self.manifest['kind']}, {self.manifest['backbone']})"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "scikit-learn", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
    os.replace(tmp, path)


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
) -> Path:
    """Fill a temporary sibling folder, then rename it to `out_dir`, so a crash never leaves
    a half-written checkpoint. An existing folder is replaced only with `overwrite=True`."""
    from .plots import confusion_figure, history_figure, save_figure

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"Checkpoint folder already exists: {out_dir} (choose another --out).")
    _validate_manifest(manifest, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700
        _without_optimizer(model).save(tmp / MODEL_FILE)
        manifest = {**manifest, "files": _file_list(history, evaluation, split)}
        manifest.setdefault("created", now_iso())
        manifest.setdefault("versions", library_versions())
        write_json(tmp / MANIFEST_FILE, manifest)
        if history is not None:
            write_json(tmp / HISTORY_FILE, history)
            save_figure(history_figure(history, manifest["name"]), tmp / HISTORY_PLOT)
        if evaluation is not None:
            write_json(tmp / EVAL_FILE, evaluation)
            figure = confusion_figure(evaluation["confusion_matrix"], evaluation["class_names"], manifest["name"])
            save_figure(figure, tmp / CONFUSION_PLOT)
        if split is not None:
            split.save(tmp / SPLIT_FILE)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _without_optimizer(model: Any) -> Any:
    """An uncompiled copy with the same weights: a checkpoint is for inference and
    fine-tuning, and Adam's two slots per weight would triple the file size."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _file_list(history: Any, evaluation: Any, split: Any) -> list[str]:
    files = [MODEL_FILE, MANIFEST_FILE]
    files += [HISTORY_FILE, HISTORY_PLOT] if history is not None else []
    files += [EVAL_FILE, CONFUSION_PLOT] if evaluation is not None else []
    files += [SPLIT_FILE] if split is not None else []
    return files


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`, swapping out an existing `target`."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _validate_manifest(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict):
        raise CheckpointError(f"manifest.json in {where} is not a JSON object.")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise CheckpointError(f"manifest.json in {where} lacks: {', '.join(missing)}.")
    if manifest["kind"] not in KINDS:
        raise CheckpointError(f"manifest.json in {where}: kind must be one of {KINDS}, got {manifest['kind']!r}.")
    names = manifest["class_names"]
    if not isinstance(names, list) or not names or len(set(names)) != len(names):
        raise CheckpointError(f"manifest.json in {where}: class_names must be a non-empty list of unique names.")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint's manifest without loading the model (fast)."""
    folder = Path(path)
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


def _load_model(path: Path) -> Any:
    import keras

    if not path.is_file():
        raise CheckpointError(f"Missing {MODEL_FILE} in {path.parent}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"Corrupt {MODEL_FILE} in {path.parent}: not a Keras archive.")
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
