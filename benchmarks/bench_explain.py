"""Heatmaps: cost against one forward pass, and the quadrant test, per method and model, in one run.

    python benchmarks/bench_explain.py                  # the bundled pair, 20 test photos per class
    python benchmarks/bench_explain.py --per-class 60 --score-cam-images 30

Cost: batch-1 median latency of the plain forward pass (probabilities only, as `predict` runs
it) against the forward pass that also returns the feature map and pooled vector plus the CAM
in numpy. Score-CAM needs one extra forward pass per channel it scores: it is run on the
`--score-cam-channels` strongest channels and its full cost (every channel) is extrapolated.

Quadrant test: each test photo (the checkpoint's split.json) is pasted into a random quadrant of a
plain grey canvas twice its size; a hit is a heatmap with more than half its mass in that quadrant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Animals-10 raw-img folder")
    p.add_argument("--checkpoints", nargs="+", default=["transfer", "scratch"], help="folders or scratch/transfer")
    p.add_argument("--per-class", type=int, default=20, help="test photos per class for the quadrant test")
    p.add_argument("--repeats", type=int, default=30, help="timed batch-1 runs per row")
    p.add_argument("--score-cam-channels", type=int, default=64)
    p.add_argument("--score-cam-images", type=int, default=15, help="canvases scored with Score-CAM per model")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def paired_timings(fns: list[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """(median seconds, median ratio to the first function) for each function. They are called
    in turn within every round and each ratio is taken within its round, so that the load of a
    shared machine falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up (tracing)
    rounds = []
    for _ in range(repeats):
        times = []
        for fn in fns:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rounds.append(times)
    return [
        (statistics.median(r[i] for r in rounds), statistics.median(r[i] / r[0] for r in rounds))
        for i in range(len(fns))
    ]


def score_cam(head: Any, forward: Callable, batch: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Score-CAM (Wang et al.) on the `channels` strongest channels: each channel's map, upsampled
    and scaled to [0, 1], masks the input; its weight is the rise of the class probability."""
    from animalcls.trust import cam

    feature_map, _, probabilities = forward(batch)
    classes = probabilities.argmax(axis=1)
    size = batch.shape[1]
    maps = []
    for image, a, c in zip(batch, feature_map, classes):
        top = np.argsort(a.mean(axis=(0, 1)))[::-1][:channels]
        masks = np.stack([cam.upsample(a[..., k], size, size) for k in top])
        low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = (masks - low) / np.where(high > low, high - low, 1.0)
        # Masked-out pixels fade to mid-grey (the models' zero after normalisation), and each
        # channel's weight is a softmax over the class logits, as pytorch-grad-cam does: the
        # probabilities of a confident model are saturated and barely move.
        masked = 127.5 + (image[None] - 127.5) * masks[..., None]
        logits = head.logits(forward(masked.astype(np.float32))[1])[:, c]
        weights = np.exp(logits - logits.max())
        maps.append(np.maximum(np.einsum("hwk,k->hw", a[..., top], weights / weights.sum()), 0.0))
    return probabilities, np.stack([cam.normalise(m) for m in maps])


def quadrant_sample(folder: Path, data: Path, per_class: int, seed: int) -> tuple[list[Any], list[int], list[int]]:
    from animalcls.serving.inference import load_image
    from animalcls.trust.explain import quadrant_canvas

    split = json.loads((folder / "split.json").read_text())
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[str]] = {}
    for path, label in split["test"]:
        by_class.setdefault(label, []).append(path)
    canvases, quadrants, labels = [], [], []
    for label, paths in sorted(by_class.items()):
        for path in rng.choice(sorted(paths), size=min(per_class, len(paths)), replace=False):
            quadrant = int(rng.integers(4))
            canvases.append(quadrant_canvas(load_image(data / path), quadrant))
            quadrants.append(quadrant)
            labels.append(label)
    return canvases, quadrants, labels


def evaluate_model(arg: str, args: argparse.Namespace) -> tuple[list[tuple], list[tuple]]:
    from animalcls.cli.main import resolve_checkpoint
    from animalcls.heads.reader import read_dense_head
    from animalcls.serving.inference import load_predictor, to_model_input
    from animalcls.trust.explain import explain_batch, feature_forward

    folder = resolve_checkpoint(arg)
    predictor = load_predictor(folder)
    forward, head, name = feature_forward(predictor), read_dense_head(folder), predictor.manifest["name"]
    canvases, quadrants, labels = quadrant_sample(folder, args.data, args.per_class, args.seed)
    inputs = np.stack([to_model_input(c, predictor.image_size) for c in canvases])
    one = inputs[:1]
    methods = ("gradcam", "gradcam++")
    (plain, _), *with_cam = paired_timings(
        [lambda: predictor.forward(one)] + [lambda m=m: explain_batch(forward, head, one, m) for m in methods],
        args.repeats,
    )
    cost_rows, quality_rows = [(name, "forward pass only", plain * 1e3, 1.0)], []
    for method, (seconds, ratio) in zip(methods, with_cam):
        cost_rows.append((name, f"forward + {method}", seconds * 1e3, ratio))
        probabilities, heatmaps = explain_batch(forward, head, inputs, method)
        quality_rows.append(_quality(name, method, probabilities, heatmaps, quadrants, labels))
    k, n = args.score_cam_channels, args.score_cam_images
    (plain, _), (seconds, ratio) = paired_timings(
        [lambda: predictor.forward(one), lambda: score_cam(head, forward, one, k)], 3
    )
    channels = forward(one)[0].shape[-1]
    cost_rows.append((name, f"forward + score-cam ({k} ch)", seconds * 1e3, ratio))
    full = 1 + (ratio - 1) * channels / k
    cost_rows.append((name, f"score-cam, all {channels} ch (extrapolated)", full * plain * 1e3, full))
    pick = np.linspace(0, len(inputs) - 1, min(n, len(inputs))).astype(int)  # every class, not just the first
    probabilities, heatmaps = score_cam(head, forward, inputs[pick], k)
    quality_rows.append(
        _quality(
            name,
            f"score-cam ({k} ch)",
            probabilities,
            heatmaps,
            [quadrants[i] for i in pick],
            [labels[i] for i in pick],
        )
    )
    return cost_rows, quality_rows


def _quality(
    name: str, method: str, probabilities: np.ndarray, heatmaps: np.ndarray, quadrants: list[int], labels: list[int]
) -> tuple:
    from animalcls.trust import cam
    from animalcls.trust.explain import quadrant_hits

    hits = quadrant_hits(heatmaps, quadrants)
    mass = np.mean([cam.quadrant_mass(h, q) for h, q in zip(heatmaps, quadrants)])
    accuracy = float(np.mean(probabilities.argmax(axis=1) == np.asarray(labels)))
    return name, method, len(hits), float(hits.mean()), float(mass), accuracy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.data.is_dir():
        print(f"error: no photos at {args.data}", file=sys.stderr)
        return 2
    costs, qualities = [], []
    for arg in args.checkpoints:
        cost_rows, quality_rows = evaluate_model(arg, args)
        costs += cost_rows
        qualities += quality_rows
    print("\nCost, batch 1, median (2-core CPU, TensorFlow engine)")
    print(f"| {'model':<28} | {'what':<38} | {'ms':>8} | {'x forward':>9} |")
    print(f"|{'-' * 30}|{'-' * 40}|{'-' * 10}|{'-' * 11}|")
    for name, what, ms, ratio in costs:
        print(f"| {name:<28} | {what:<38} | {ms:8.1f} | {ratio:9.2f} |")
    print(f"\nQuadrant test (photo in a random quadrant of a grey canvas twice its size; seed {args.seed})")
    print(
        f"| {'model':<28} | {'method':<18} | {'canvases':>8} | {'>50% in quadrant':>16} | "
        f"{'mean mass there':>15} | {'accuracy':>8} |"
    )
    print(f"|{'-' * 30}|{'-' * 20}|{'-' * 10}|{'-' * 18}|{'-' * 17}|{'-' * 10}|")
    for name, method, count, rate, mass, accuracy in qualities:
        print(f"| {name:<28} | {method:<18} | {count:>8} | {rate:>16.1%} | {mass:>15.1%} | {accuracy:>8.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
