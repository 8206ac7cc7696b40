"""Folder prediction that streams: recursive discovery, parallel decoding, fixed-size batches
through the predictor's forward pass, and one CSV or JSON-lines row per image.

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

from .errors import AnimalclsError
from .inference import IMAGE_SUFFIXES, load_image
from .preprocessing import to_model_input

FORMATS = ("csv", "jsonl")


@dataclass
class Row:
    """One image's result: probabilities in class order, or the reason it has none."""

    path: str
    probabilities: np.ndarray | None = None
    error: str | None = None


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


def _visible_image(path: Path, root: Path) -> bool:
    """What a folder walk picks up (suffix case-insensitive); a file named explicitly is always tried."""
    parts = path.relative_to(root).parts
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in parts) and path.is_file()


def default_workers() -> int:
    """Decoding threads: the cores this process may use, 2 to 8 (PIL releases the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(cores, 8))


def _decode(path: Path, image_size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return to_model_input(load_image(path), image_size), None
    except AnimalclsError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must never abort the run
        return None, f"{type(exc).__name__}: {exc}"


def decoded(
    paths: Iterable[Path], image_size: int, workers: int, ahead: int
) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """(path, model input or None, error or None) in input order, decoding at most `ahead`
    images beyond the one being consumed."""
    queue: deque[tuple[Path, Future]] = deque()
    remaining = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:

        def submit() -> None:
            path = next(remaining, None)
            if path is not None:
                queue.append((path, pool.submit(_decode, path, image_size)))

        for _ in range(ahead):
            submit()
        while queue:
            path, future = queue.popleft()
            submit()
            yield (path, *future.result())


def predict_stream(
    forward: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[Path],
    image_size: int,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[list[Row]]:
    """Rows batch by batch, in input order; `forward` maps (N, S, S, 3) float32 to (N, C)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    chunk: list[tuple[Path, np.ndarray | None, str | None]] = []
    for item in decoded(paths, image_size, workers or default_workers(), 2 * batch_size):
        chunk.append(item)
        if len(chunk) == batch_size:
            yield _run_chunk(forward, chunk)
            chunk = []
    if chunk:
        yield _run_chunk(forward, chunk)


def _run_chunk(forward: Callable[[np.ndarray], np.ndarray], chunk: list[tuple[Path, Any, str | None]]) -> list[Row]:
    good = [array for _, array, _ in chunk if array is not None]
    outputs = iter(forward(np.stack(good)) if good else [])
    return [Row(str(path), None if array is None else next(outputs), error) for path, array, error in chunk]


class RowWriter:
    """CSV (path, label, one column per class, error) or JSON lines, one row per image."""

    def __init__(self, handle: IO[str], fmt: str, class_names: Sequence[str]) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"Unknown --format '{fmt}': choose one of {', '.join(FORMATS)}.")
        self.handle, self.fmt, self.class_names = handle, fmt, list(class_names)
        if fmt == "csv":
            self.csv = csv.writer(handle, lineterminator="\n")
            self.csv.writerow(["path", "label", *self.class_names, "error"])

    def write(self, row: Row) -> None:
        label = None if row.probabilities is None else self.class_names[int(np.argmax(row.probabilities))]
        if self.fmt == "csv":
            values = [""] * len(self.class_names) if row.probabilities is None else [f"{p:.6f}" for p in row.probabilities]
            self.csv.writerow([row.path, label or "", *values, row.error or ""])
            return
        record: dict[str, Any] = {"path": row.path}
        if row.probabilities is None:
            record["error"] = row.error
        else:
            record["label"] = label
            record["probabilities"] = {c: round(float(p), 6) for c, p in zip(self.class_names, row.probabilities)}
        self.handle.write(json.dumps(record) + "\n")


def write_rows(predictor: Any, paths: Sequence[Path], fmt: str, batch_size: int, handle: IO[Any]) -> None:
    """Stream `predictor`'s rows for `paths` into `handle` (text, or binary: written as UTF-8),
    with a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    text = handle if isinstance(handle, io.TextIOBase) else io.TextIOWrapper(handle, "utf-8", newline="")
    writer = RowWriter(text, fmt, predictor.class_names)
    with tqdm(total=len(paths), desc="predicting", unit="img", file=sys.stderr) as progress:
        for rows in predict_stream(predictor.forward, paths, predictor.image_size, batch_size):
            for row in rows:
                writer.write(row)
            progress.update(len(rows))
    text.flush()
    if text is not handle:
        text.detach()  # the caller owns (and closes) the binary file
