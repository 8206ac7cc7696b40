"""What the Fine-tune tab says, computed without Gradio: the operator's settings and what is wrong
with a visitor's, how many fine-tunes the server keeps, and the status line of a run (waiting,
running, done, cancelled, failed, or what became of it when its page was reloaded)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animalcls.core import errors
from animalcls.core.errors import AnimalclsError
from animalcls.webapp import views
from animalcls.webapp.sessions import FinetuneStore
from animalcls.webapp.state import FinetuneJob, JobProgress

SETTINGS = ("epochs", "learning_rate", "unfreeze")  # the fields a visitor sets, in the event's input order


@dataclass
class FinetuneSettings:
    """The operator's choices for fine-tuning on this server (app flags)."""

    data_dir: Path | None = None  # the photos to fine-tune on; None: the transfer model's own, if here
    checkpoints_root: Path | None = None  # where stored features of the bundled models are looked for
    max_epochs: int = 20
    max_unfreeze: int = 0

    def problems(self, epochs: Any, learning_rate: Any, unfreeze: Any) -> dict[str, str]:
        """What is wrong with each setting a visitor chose, one plain sentence per field of
        SETTINGS ({} when all are fine): shown by its field on the page, joined for API callers."""
        found = {}
        if not _whole(epochs) or not 1 <= epochs <= self.max_epochs:
            found["epochs"] = f"Epochs must be a whole number from 1 to {self.max_epochs} on this server."
        if not _number(learning_rate) or not 0 < learning_rate <= 1:
            found["learning_rate"] = "The learning rate must be a number above 0 and at most 1 (e.g. 0.001)."
        layers = 0 if unfreeze is None else unfreeze
        if not _whole(layers) or not 0 <= layers <= self.max_unfreeze:
            found["unfreeze"] = (
                f"Unfrozen backbone layers must be a whole number from 0 to {self.max_unfreeze} on this server."
            )
        return found


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def kept_text(store: FinetuneStore, source: Path) -> str:
    """How many fine-tunes this server keeps, as its caps allow fine-tunes the size of `source`'s."""
    limits = store.limits
    kept = limits.kept(store.typical_bytes(source))
    newest = "Only the newest fine-tune is" if kept == 1 else f"The newest {kept} fine-tunes are"
    return (
        f"{newest} kept (at most {limits.max_count}, {limits.max_bytes / 2**20:.0f} MB in all); older ones "
        "are removed unless a visitor is using them (the original models never are)."
    )


def curves_figure(history: dict[str, list[float]], title: str) -> Any:
    """The training-vs-validation figure of a run (matplotlib, imported when first drawn)."""
    from animalcls.training.plots import history_figure

    return history_figure(history, title)


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


def waiting_status(place: int) -> str:
    """The status of a fine-tune waiting in the queue behind another visitor's."""
    ahead = "next in line" if place == 1 else f"number {place} in line"
    return (
        f"**Waiting in the queue** ({ahead}): another visitor's fine-tune is running; yours starts when it ends. "
        "Press Cancel to leave the queue."
    )


def failure_text(error: BaseException) -> str:
    detail = str(error) if isinstance(error, AnimalclsError) else f"{type(error).__name__}: {error}"
    return f"The fine-tune failed: {detail}"


def reload_status(job: FinetuneJob, saved: str | None) -> str:
    """What a reloaded page says about the fine-tune its previous page left running: `saved` is
    the name of its result when it is still stored (and now this session's)."""
    last = "**Your last fine-tune"
    if job.running:
        return f"{last} is being cancelled** (its page was closed or reloaded): it stops after the current batch."
    if isinstance(job.error, errors.Cancelled):
        return (
            f"{last} was cancelled when its page was closed or reloaded**, before its first epoch: nothing was saved."
        )
    if job.error is not None:
        return f"{last} did not finish** after its page was closed or reloaded. {views.public(failure_text(job.error))}"
    result = job.result
    epochs = len((getattr(result, "history", None) or {}).get("loss", []))
    what = (
        f"{last} was cancelled when its page was closed or reloaded**; its {epochs} finished epoch(s) were saved"
        if result.cancelled
        else f"{last} finished** after its page was closed or reloaded and was saved"
    )
    if saved is None:
        return f"{what}, but the result has since been removed to make room for newer fine-tunes."
    return f"{what} as **{saved}**, yours in this session: press **Use this model** to classify with it."
