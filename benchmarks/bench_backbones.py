"""Inference latency of the backbones: efficientnet_lite0 (224 px) against inception_v3 (299 px).

Each backbone is built through the registry with random weights (weights do not change the
speed), wrapped in a tf.function, warmed up, then timed; the table shows the median per batch.

    python benchmarks/bench_backbones.py [--repeats-b1 30] [--repeats-b32 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

BACKBONES: tuple[tuple[str, int], ...] = (("efficientnet_lite0", 224), ("inception_v3", 299))
WARMUP = 3  # the first call traces the graph; the next ones settle oneDNN's kernel choice.


def time_backbone(name: str, size: int, batch: int, repeats: int) -> float:
    """Median milliseconds for one forward pass of `batch` images."""
    import numpy as np
    import tensorflow as tf

    from animalcls.models.backbones import build_backbone

    model = build_backbone(name, size, weights=None)
    forward = tf.function(lambda x: model(x, training=False))
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    for _ in range(WARMUP):
        forward(images).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(images).numpy()  # .numpy() waits for the result
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats-b1", type=int, default=30, help="timed runs at batch 1")
    parser.add_argument("--repeats-b32", type=int, default=6, help="timed runs at batch 32")
    args = parser.parse_args(argv)

    import tensorflow as tf

    repeats = {1: args.repeats_b1, 32: args.repeats_b32}
    results: dict[tuple[str, int], float] = {}
    for name, size in BACKBONES:
        for batch, n in repeats.items():
            results[name, batch] = time_backbone(name, size, batch, n)
            print(f"  {name} batch {batch}: {results[name, batch]:.1f} ms", flush=True)

    fast, slow = BACKBONES[0][0], BACKBONES[1][0]
    print(
        f"\nTensorFlow {tf.__version__}, {len(tf.config.list_physical_devices('CPU'))} CPU device(s), "
        f"median of timed runs after {WARMUP} warm-up calls, in a tf.function\n"
    )
    print("| backbone | input | batch 1 (ms) | batch 32 (ms) | batch 32 (img/s) |")
    print("|---|---|---|---|---|")
    for name, size in BACKBONES:
        b1, b32 = results[name, 1], results[name, 32]
        print(f"| {name} | {size} | {b1:.1f} | {b32:.0f} | {32000.0 / b32:.1f} |")
    print(
        f"| ratio {slow} / {fast} | | {results[slow, 1] / results[fast, 1]:.2f}x "
        f"| {results[slow, 32] / results[fast, 32]:.2f}x | |"
    )


if __name__ == "__main__":
    main()
