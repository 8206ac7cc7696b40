"""Serving the bundled models: TensorFlow (`tf.function`) against ONNX Runtime, same run.

For each bundled checkpoint: the median forward pass at batch 1 and 32 in both engines
(interleaved, so a load spike hits both), the largest probability difference, and the
start-up cost in a fresh process (import the engine, load the model, run one image).
Inputs are test photos from ../shared when present, else random pixels.

    python benchmarks/bench_serving.py [--repeats-b1 30] [--repeats-b32 5] [--starts 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3

START_ONNX = """
import time; t0 = time.perf_counter()
import numpy as np
from animalcls.serving.onnx_engine import load_engine
engine = load_engine({folder!r}, build=False)
engine.probabilities(np.zeros((1, engine.image_size, engine.image_size, 3), np.float32))
print(time.perf_counter() - t0)
"""
START_TF = """
import time; t0 = time.perf_counter()
import numpy as np
from animalcls.serving.inference import load_predictor
predictor = load_predictor({folder!r}, engine="tf")
predictor.forward(np.zeros((1, predictor.image_size, predictor.image_size, 3), np.float32))
print(time.perf_counter() - t0)
"""


def photo_batch(folder: Path, size: int, count: int) -> np.ndarray:
    """`count` test photos of the checkpoint's split, or random pixels without ../shared."""
    from animalcls.data import dataset as data
    from animalcls.serving.inference import load_image, to_model_input
    from animalcls.store import checkpoints

    raw = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"
    if not raw.is_dir():
        return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    paths, _ = data.Split.load(folder / checkpoints.SPLIT_FILE).paths("test", raw)
    picks = [paths[i * len(paths) // count] for i in range(count)]
    return np.stack([to_model_input(load_image(path), size) for path in picks])


def median_ms(functions: dict[str, object], batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each function, calls interleaved."""
    for function in functions.values():
        for _ in range(WARMUP):
            function(batch)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(batch)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def start_seconds(template: str, folder: Path, runs: int) -> float:
    """Median seconds, in a fresh process, from the first import to one image's probabilities."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    values = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", template.format(folder=str(folder))],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        values.append(float(out.stdout.split()[-1]))
    return statistics.median(values)


def bench_model(kind: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    from animalcls.serving.inference import load_predictor
    from animalcls.serving.onnx_engine import load_engine

    predictor, engine = load_predictor(folder, engine="tf"), load_engine(folder, build=False)
    engines = {"tf": predictor.forward, "onnx": engine.probabilities}
    row: dict[str, float] = {}
    for batch_size, repeats in ((1, args.repeats_b1), (32, args.repeats_b32)):
        batch = photo_batch(folder, engine.image_size, batch_size)
        for name, ms in median_ms(engines, batch, repeats).items():
            row[f"{name}{batch_size}"] = ms
        delta = np.abs(predictor.forward(batch) - engine.probabilities(batch)).max()
        assert predictor.engine == "tf", "the TF column must run TensorFlow"
        row["delta"] = max(row.get("delta", 0.0), float(delta))
        print(
            f"  {kind} batch {batch_size}: TF {row[f'tf{batch_size}']:.1f} ms, ONNX {row[f'onnx{batch_size}']:.1f} ms",
            flush=True,
        )
    row["start_onnx"] = start_seconds(START_ONNX, folder, args.starts)
    row["start_tf"] = start_seconds(START_TF, folder, args.starts)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats-b1", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--repeats-b32", type=int, default=5, help="timed runs at batch 32")
    parser.add_argument("--starts", type=int, default=3, help="fresh processes timed per engine and model")
    args = parser.parse_args(argv)

    from importlib.metadata import version

    from animalcls.serving.onnx_engine import default_threads
    from animalcls.store.checkpoints import default_pair

    rows = {kind: bench_model(kind, folder, args) for kind, folder in sorted(default_pair().items())}
    print(
        f"\nTensorFlow {version('tensorflow-cpu')} vs onnxruntime {version('onnxruntime')} "
        f"({default_threads()} intra-op threads), {os.cpu_count()} CPUs; medians after {WARMUP} warm-up calls\n"
    )
    print(
        "| model | TF batch 1 | ONNX batch 1 | speed-up | TF batch 32 | ONNX batch 32 | speed-up "
        "| max \\|Δp\\| | start TF | start ONNX |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in rows.items():
        print(
            f"| {kind} | {r['tf1']:.1f} ms | {r['onnx1']:.1f} ms | {r['tf1'] / r['onnx1']:.1f}x "
            f"| {r['tf32']:.0f} ms | {r['onnx32']:.0f} ms | {r['tf32'] / r['onnx32']:.1f}x | {r['delta']:.1e} "
            f"| {r['start_tf']:.2f} s | {r['start_onnx']:.2f} s |"
        )
    print("\nstart = a fresh process importing the engine, loading the model and classifying one image.")


if __name__ == "__main__":
    main()
