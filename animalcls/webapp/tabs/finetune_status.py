"""What the Fine-tune tab says, computed without Gradio: the operator's settings, how many
fine-tunes the server keeps, and the status line of a run (running, done, cancelled)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animalcls.webapp import views
from animalcls.webapp.sessions import FinetuneStore
from animalcls.webapp.state import JobProgress


@dataclass
class FinetuneSettings:
    """The operator's choices for fine-tuning on this server (app flags)."""

    data_dir: Path | None = None  # the photos to fine-tune on; None: the transfer model's own, if here
    checkpoints_root: Path | None = None  # where stored features of the bundled models are looked for
    max_epochs: int = 20
    max_unfreeze: int = 0


def kept_text(store: FinetuneStore, source: Path) -> str:
    """How many fine-tunes this server keeps, as its caps allow fine-tunes the size of `source`'s."""
    limits = store.limits
    kept = limits.kept(store.typical_bytes(source))
    newest = "Only the newest fine-tune is" if kept == 1 else f"The newest {kept} fine-tunes are"
    return (
        f"{newest} kept (at most {limits.max_count}, {limits.max_bytes / 2**20:.0f} MB in all); older ones "
        "are removed unless a visitor is using them (the original models never are)."
    )


def running_status(name: str, snapshot: JobProgress, cancelling: bool) -> str:
    prefix = "**Cancelling** (stops after the current batch): " if cancelling else f"**Fine-tuning {name}**: "
    return prefix + snapshot.describe()


def final_status(name: str, result: Any, source: Path) -> str:
    evaluation = getattr(result, "evaluation", None) or {}
    before = views.held_out_accuracy(source)
    after = evaluation.get("accuracy")
    accuracy = f"test accuracy **{after:.1%}**" if after is not None else "no test evaluation"
    if before is not None and after is not None:
        accuracy += f" (the starting model: {before:.1%})"
    epochs = len((getattr(result, "history", None) or {}).get("loss", []))
    head = f"**Cancelled**; kept the {epochs} finished epoch(s)." if result.cancelled else "**Done.**"
    return (
        f"{head} {name} fine-tuned in {result.seconds:.0f} s: {accuracy}. Saved as **{Path(result.path).name}** "
        "(yours only). Press **Use this model** to classify with it in this session."
    )


def cancelled_status(error: BaseException) -> str:
    from animalcls.serving.features import FeatureExtractionCancelled

    if isinstance(error, FeatureExtractionCancelled):
        return (
            "**Cancelled** while extracting backbone features, before any training: nothing was saved. "
            "The features computed so far stay cached, so the next run starts faster."
        )
    return "**Cancelled** before the first epoch finished: nothing was saved."
