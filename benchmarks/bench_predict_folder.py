"""Folder prediction throughput (img/s), in one run, for a bundled checkpoint:

  (a) TF `tf.function` at batch 32, forward pass only, on images decoded beforehand: the
      TensorFlow reference the issue's target is measured against;
  (b) `predict FOLDER` end to end through TensorFlow (discovery, parallel decoding, batches of
      32, CSV rows to /dev/null);
  (c) the same through ONNX Runtime (the default engine where onnxruntime is installed).

Photos: the first --per-class files of each class folder of the real photos when present,
else generated images. Each measurement is the median of --repeats runs, interleaved.

    python benchmarks/bench_predict_folder.py [--checkpoint transfer] [--per-class 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"
BATCH = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="transfer", help="'scratch', 'transfer' or a checkpoint folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-class", type=int, default=64, help="photos per class folder")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def photo_folder(data: Path, per_class: int, work: Path) -> tuple[Path, str]:
    """Symlinks to real photos (nested one folder deep, like a dataset), else generated JPEGs."""
    out = work / "photos"
    if data.is_dir():
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            (out / folder.name).mkdir(parents=True)
            for file in sorted(folder.iterdir())[:per_class]:
                (out / folder.name / file.name).symlink_to(file.resolve())
        return out, f"real photos from {data}"
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(5):
        (out / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(out / f"class{c}" / f"{i}.jpg", quality=90)
    return out, "generated 192x192 JPEGs"


def time_folder(predictor, paths: list[Path]) -> float:
    from animalcls.serving.batch_predict import write_rows
    from animalcls.trust.verdicts import InputJudge, Judge

    judge = InputJudge(Judge(predictor))  # with the scope verdicts, as `predict` writes them
    with open(os.devnull, "w") as sink:
        start = time.perf_counter()
        write_rows(judge, paths, "csv", BATCH, sink)
        return time.perf_counter() - start


def time_tf_forward(predictor, batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for batch in batches:
        predictor.forward(batch)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from animalcls.cli.main import resolve_checkpoint
    from animalcls.core.logs import quiet_tensorflow
    from animalcls.serving.batch_predict import decoded, default_workers, discover
    from animalcls.serving.inference import load_predictor

    quiet_tensorflow()
    work = Path(tempfile.mkdtemp(prefix="bench-predict-folder-"))
    folder, source = photo_folder(args.data, args.per_class, work)
    paths = discover([folder])
    checkpoint = resolve_checkpoint(args.checkpoint)
    tf_predictor = load_predictor(checkpoint, "tf")
    onnx_predictor = load_predictor(checkpoint, "onnx")
    size = tf_predictor.image_size
    arrays = [a[0] for _, a, _ in decoded(paths, (size,), default_workers(), 64)]
    batches = [np.stack(arrays[i : i + BATCH]) for i in range(0, len(arrays), BATCH)]
    for predictor in (tf_predictor, onnx_predictor):  # warm-up: tracing, first-run allocations
        predictor.forward(batches[0])
    times: dict[str, list[float]] = {"forward": [], "tf": [], "onnx": []}
    for _ in range(args.repeats):
        times["forward"].append(time_tf_forward(tf_predictor, batches))
        times["tf"].append(time_folder(tf_predictor, paths))
        times["onnx"].append(time_folder(onnx_predictor, paths))
    rate = {k: len(paths) / statistics.median(v) for k, v in times.items()}
    delta = float(np.max(np.abs(tf_predictor.forward(batches[0]) - onnx_predictor.forward(batches[0]))))

    print(
        f"\n{checkpoint.name} at {size} px, {len(paths)} images ({source}), batch {BATCH}, "
        f"{default_workers()} decoding threads, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(f"| {'what':<58} | {'img/s':>7} | {'vs (a)':>6} |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 8}|")
    rows = [
        ("(a) TF tf.function, batch 32, forward only (pre-decoded)", "forward"),
        ("(b) predict FOLDER through TensorFlow (decode + forward + CSV)", "tf"),
        ("(c) predict FOLDER through ONNX Runtime (decode + forward + CSV)", "onnx"),
    ]
    for name, key in rows:
        print(f"| {name:<58} | {rate[key]:>7.1f} | {rate[key] / rate['forward']:>5.2f}x |")
    print(f"\nmax |Δp| TF vs ONNX on one batch: {delta:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
