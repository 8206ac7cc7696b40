"""Folder prediction that streams: recursive discovery, parallel decoding, fixed-size batches
through the model's forward pass, and one CSV or JSON-lines row per image with its "none of the
five" verdict (`out_of_scope`, `scope_score`; empty without a scope detector).

Memory stays bounded: at most `2 * batch_size` images are decoded ahead of the model (each
already resized to the model's input), whatever the folder's size. An unreadable file gets a
row with its error and the run goes on. Imports neither TensorFlow nor Keras itself: the
predictor's engine decides what runs the model.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from animalcls.core.errors import AnimalclsError
from animalcls.data.preprocessing import to_model_input
from animalcls.serving.inference import IMAGE_SUFFIXES, load_image

FORMATS = ("csv", "jsonl")


# One batch of model inputs per size -> (probabilities (N, C), out_of_scope, scope_score): trust.InputJudge
Judged = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, Sequence[bool | None], Sequence[float | None]]]


@dataclass
class Row:
    """One image's result: probabilities in class order and its scope verdict, or the reason it has none."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None
    out_of_scope: bool | None = None
    scope_score: float | None = None


def plain(forward: Callable[[np.ndarray], np.ndarray]) -> Judged:
    """A bare forward pass ((N, S, S, 3) -> (N, C)) as a `Judged` without verdicts."""

    def judged(inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[None], list[None]]:
        probabilities = forward(inputs[0])
        return probabilities, [None] * len(probabilities), [None] * len(probabilities)

    return judged


def discover(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named explicitly, plus every image file under each folder (recursively, sorted,
    hidden files and folders skipped). A missing input is an error before any work."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if _visible_image(p, item))
        elif item.exists():
            found.append(item)
        else:
            raise AnimalclsError(f"No such file or folder: {item}")
    return found


def has_images(inputs: Sequence[str | Path]) -> bool:
    """Whether `discover(inputs)` finds anything: stops at the first file (cheap on a big folder)."""
    for item in map(Path, inputs):
        if not item.is_dir() or any(_visible_image(p, item) for p in item.rglob("*")):
            return True
    return False


def _visible_image(path: Path, root: Path) -> bool:
    """What a folder walk picks up (suffix case-insensitive); a file named explicitly is always tried."""
    parts = path.relative_to(root).parts
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in parts) and path.is_file()


def default_workers() -> int:
    """Decoding threads: the cores this process may use, 2 to 8 (PIL releases the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(cores, 8))


def _decode(path: Path, sizes: Sequence[int]) -> tuple[tuple[np.ndarray, ...] | None, str | None]:
    try:
        image = load_image(path)
        return tuple(to_model_input(image, size) for size in sizes), None
    except AnimalclsError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never abort the run
        return None, f"{type(exc).__name__}: {exc}"


def decoded(
    paths: Iterable[Path], sizes: Sequence[int], workers: int, ahead: int
) -> Iterator[tuple[Path, tuple[np.ndarray, ...] | None, str | None]]:
    """(path, one model input per size or None, error or None) in input order, decoding at most
    `ahead` images beyond the one being consumed."""
    queue: deque[tuple[Path, Future]] = deque()
    remaining = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:

        def submit() -> None:
            path = next(remaining, None)
            if path is not None:
                queue.append((path, pool.submit(_decode, path, sizes)))

        for _ in range(ahead):
            submit()
        while queue:
            path, future = queue.popleft()
            submit()
            yield (path, *future.result())


def predict_stream(
    judged: Judged,
    paths: Sequence[Path],
    sizes: Sequence[int],
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[list[Row]]:
    """Rows batch by batch, in input order; `judged` gets one (N, S, S, 3) float32 batch per
    size of `sizes` (see `Judged`; `plain` wraps a bare forward pass)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    chunk: list[tuple[Path, tuple[np.ndarray, ...] | None, str | None]] = []
    for item in decoded(paths, sizes, workers or default_workers(), 2 * batch_size):
        chunk.append(item)
        if len(chunk) == batch_size:
            yield _run_chunk(judged, chunk, len(sizes))
            chunk = []
    if chunk:
        yield _run_chunk(judged, chunk, len(sizes))


def _run_chunk(judged: Judged, chunk: list[tuple[Path, Any, str | None]], n_sizes: int) -> list[Row]:
    good = [arrays for _, arrays, _ in chunk if arrays is not None]
    if not good:
        return [Row(str(path), error=error) for path, _, error in chunk]
    probabilities, flags, scores = judged([np.stack([a[i] for a in good]) for i in range(n_sizes)])
    outputs = iter(zip(probabilities, flags, scores))
    rows = []
    for path, arrays, error in chunk:
        p, flag, score = next(outputs) if arrays is not None else (None, None, None)
        rows.append(Row(str(path), p, error, flag, score))
    return rows


class RowWriter:
    """CSV (path, label, one column per class, out_of_scope, scope_score, error) or JSON lines,
    one row per image. The verdict is empty (CSV) or null (JSON) without a scope detector."""

    def __init__(self, handle: IO[str], fmt: str, class_names: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"Unknown --format '{fmt}': choose one of {', '.join(FORMATS)}.")
        self.handle, self.fmt, self.class_names = handle, fmt, list(class_names)
        if fmt == "csv":
            self.csv = csv.writer(handle, lineterminator="\n")
            self.csv.writerow(["path", "label", *self.class_names, "out_of_scope", "scope_score", "error"])

    def write(self, row: Row) -> None:
        label = None if row.probabilities is None else self.class_names[int(np.argmax(row.probabilities))]
        if self.fmt == "csv":
            values = (
                [""] * len(self.class_names) if row.probabilities is None else [f"{p:.6f}" for p in row.probabilities]
            )
            flag = "" if row.out_of_scope is None else str(row.out_of_scope).lower()
            score = "" if row.scope_score is None else f"{row.scope_score:.6f}"
            self.csv.writerow([row.path, label or "", *values, flag, score, row.error or ""])
            return
        record: dict[str, Any] = {"path": row.path}
        if row.probabilities is None:
            record["error"] = row.error
        else:
            record["label"] = label
            record["probabilities"] = {c: round(float(p), 6) for c, p in zip(self.class_names, row.probabilities)}
            record["out_of_scope"] = row.out_of_scope
            record["scope_score"] = None if row.scope_score is None else round(row.scope_score, 6)
        self.handle.write(json.dumps(record) + "\n")


def write_rows(judge: Any, paths: Sequence[Path], fmt: str, batch_size: int, handle: IO[Any]) -> None:
    """Stream the rows of `judge` (a trust.InputJudge: `class_names`, `sizes`, called as `Judged`)
    for `paths` into `handle` (text, or binary: written as UTF-8), with a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    text = handle if isinstance(handle, io.TextIOBase) else io.TextIOWrapper(handle, "utf-8", newline="")
    writer = RowWriter(text, fmt, judge.class_names)
    with tqdm(total=len(paths), desc="predicting", unit="img", file=sys.stderr) as progress:
        for rows in predict_stream(judge, paths, judge.sizes, batch_size):
            for row in rows:
                writer.write(row)
            progress.update(len(rows))
    text.flush()
    if text is not handle:
        text.detach()  # the caller owns (and closes) the binary file
