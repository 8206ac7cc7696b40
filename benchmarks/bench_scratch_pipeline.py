"""Is the scratch model's training step waiting for its input? Images per second of one training
step of EfficientNet-Lite0 from scratch on constant data (`train_on_batch`, the network alone)
against full steps fed by the in-graph batch augmentation (animalcls/data/batch_augment.py) and by
the per-photo numpy/PIL stream (animalcls/data/augment.py), all in one process, one after another.

    python benchmarks/bench_scratch_pipeline.py --data ../shared/data/animals10-offline/raw-img

Prints a Markdown table; the ratio column is the constant-data rate over each row's rate.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np


class _Timer:
    """Keras callback: the wall time of every epoch after the first (which traces the step)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.began = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.began)

        return Timer()


def build(size: int):
    from animalcls.models import builders as models
    from animalcls.training.scratch_run import RunConfig
    from animalcls.training.train import compile_model

    config = RunConfig(image_size=size)
    model = models.build_scratch("efficientnet_lite0", 5, size, 0.2, 0.9)
    compile_model(model, config.train_config())
    return model


def constant_rate(size: int, batch: int, steps: int) -> float:
    model = build(size)
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[np.arange(batch) % 5]
    for _ in range(3):
        model.train_on_batch(x, y)
    began = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - began)


def fit_rate(stream, size: int, batch: int, steps: int) -> float:
    model = build(size)
    timer = _Timer()
    model.fit(stream, steps_per_epoch=steps, epochs=3, verbose=0, callbacks=[timer])
    return steps * batch / float(np.median(timer.seconds[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a raw-img folder (its first photos are used)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--photos", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the table shows medians")
    args = parser.parse_args()
    from animalcls.core.logs import quiet_tensorflow

    quiet_tensorflow()
    from animalcls.data import augment
    from animalcls.data.batch_augment import BatchAugment, decode_once, training_dataset

    paths = sorted(glob.glob(str(Path(args.data) / "*" / "*.jpeg")))[::5][: args.photos]
    labels = [i % 5 for i in range(len(paths))]
    recipe = BatchAugment(args.size)
    began = time.perf_counter()
    cached = decode_once(paths, recipe.cache_size)
    decode_rate = len(paths) / (time.perf_counter() - began)
    graph, _ = training_dataset(cached, labels, 5, recipe, args.batch)
    pil = augment.batch_stream(
        augment.load_photos(paths),
        labels,
        5,
        augment.RobustAugment(args.size),
        args.batch,
        mix_p=0.5,
        workers=2,
        prefetch=4,
    )
    measure = {
        "constant data (train_on_batch)": lambda: constant_rate(args.size, args.batch, args.steps),
        "in-graph batch augmentation (batch_augment)": lambda: fit_rate(graph, args.size, args.batch, args.steps),
        "per-photo numpy/PIL stream (augment)": lambda: fit_rate(pil, args.size, args.batch, args.steps),
    }
    # Interleaved rounds, so that a change in the machine's load falls on every row alike.
    rates: dict[str, list[float]] = {name: [] for name in measure}
    for _ in range(args.rounds):
        for name, rate in measure.items():
            rates[name].append(rate())
    rows = [(name, float(np.median(values))) for name, values in rates.items()]
    print(
        f"\nEfficientNet-Lite0 from scratch, {args.size} px, batch {args.batch}; one-off decode of "
        f"{len(paths)} photos: {decode_rate:.0f} img/s\n"
    )
    print(f"| training step fed by | img/s (median of {args.rounds}) | constant / this |\n|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rows[0][1] / rate:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
