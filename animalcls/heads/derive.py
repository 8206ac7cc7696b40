"""Derive a checkpoint from another: the one back end of fine-tuning (heads.finetune) and
teaching (heads.teach, heads.taught). Both front ends train a head their own way, then come here
to choose the new folder (`output_folder`) and to write it (`save_derived`): the source's manifest
derived with the run's training and dataset (provenance and lineage kept), the model, curves,
confusion matrix and evaluation, atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from animalcls.core.errors import CheckpointError
from animalcls.core.settings import finetune_folder
from animalcls.store import checkpoints
from animalcls.store.manifest import Manifest


def output_folder(source: Path, out_dir: str | Path | None) -> Path:
    """The folder to create: never the source, never an existing folder. Checked before any
    training so a bad --out fails in a second, not after the run. Default: a new folder in
    the fine-tune root (settings.finetune_folder)."""
    if out_dir is None:
        return finetune_folder(source)
    out = Path(out_dir).expanduser()
    if out.resolve() == Path(source).resolve():
        raise CheckpointError(f"--out {out} is the source checkpoint: a fine-tune or teach writes a NEW folder.")
    if out.exists():
        raise CheckpointError(f"Checkpoint folder already exists: {out} (choose another --out).")
    return out


def derived_manifest(
    source: Path, name: str, training: dict[str, Any], dataset: dict[str, Any], **changes: Any
) -> dict[str, Any]:
    """The source's manifest for the derived checkpoint `name` (store.manifest.Manifest.derive)."""
    source_manifest = checkpoints.read_manifest(source)
    return Manifest.from_json(source_manifest, source).derive(name, training, dataset, **changes).to_json()


def save_derived(
    out_dir: Path,
    model: Any,
    manifest: dict[str, Any],
    history: dict[str, list[float]],
    evaluation: dict[str, Any] | None,
    split: Any = None,
    write_model: Callable[[Path], None] | None = None,
    figures: bool = True,
) -> Path:
    """Write the derived checkpoint folder `out_dir`, chosen by `output_folder` or
    settings.finetune_folder (workflows.save_with_figures; `write_model` replaces Keras's own
    save, as a head-only fine-tune does). Returns the folder."""
    from animalcls.training.workflows import save_with_figures

    return save_with_figures(out_dir, model, manifest, history, evaluation, split, write_model, figures)
