"""tqdm progress bars for the CLI, wired to the library's hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

from animalcls.core.hooks import TrainHooks


@contextmanager
def bar(description: str, unit: str = "it") -> Iterator[Callable[[int, int | None], None]]:
    """A bar driven by `update(done, total)` calls; drawn only once work starts, so an
    early error prints no empty bar."""
    bars: list[Any] = []

    def update(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(desc=description, unit=unit, total=total, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for progress in bars:
            progress.close()


class TqdmHooks(TrainHooks):
    """TrainHooks that draw a bar for scanning, one per epoch, and one for evaluation."""

    def __init__(self) -> None:
        super().__init__()
        self._bars: dict[str, Any] = {}
        self.on_scan = self._scan
        self.on_batch = self._batch
        self.on_epoch = self._epoch
        self.on_eval = self._eval
        self.on_features = self._features

    def __enter__(self) -> TqdmHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        for progress in self._bars.values():
            progress.close()

    def _get(self, key: str, description: str, total: int | None, unit: str) -> Any:
        progress = self._bars.get(key)
        if progress is None:
            progress = self._bars[key] = tqdm(desc=description, total=total, unit=unit, leave=key == "epoch")
        return progress

    def _scan(self, done: int, total: int) -> None:
        self._set(self._get("scan", "checking images", total, "img"), done)
        if done == total:
            self._bars.pop("scan").close()

    def _batch(self, epoch: int, batch: int, steps: int | None, logs: dict[str, float]) -> None:
        progress = self._get(f"epoch{epoch}", f"epoch {epoch}", steps, "batch")
        progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}", acc=f"{logs.get('accuracy', 0):.3f}")
        self._set(progress, batch)

    def _epoch(self, epoch: int, history: dict[str, list[float]]) -> None:
        progress = self._bars.pop(f"epoch{epoch}", None)
        summary = ", ".join(f"{k}={v[-1]:.4f}" for k, v in history.items() if k.startswith(("val_", "loss", "acc")))
        if progress is not None:
            progress.close()
        tqdm.write(f"epoch {epoch}: {summary}")

    def _features(self, done: int, total: int) -> None:
        self._set(self._get("features", "extracting features", total, "img"), done)
        if done >= total:
            self._bars.pop("features").close()

    def _eval(self, done: int, total: int | None) -> None:
        self._set(self._get("eval", "evaluating", total, "batch"), done)

    @staticmethod
    def _set(progress: Any, done: int) -> None:
        progress.update(done - progress.n)  # update() honours tqdm's refresh interval
