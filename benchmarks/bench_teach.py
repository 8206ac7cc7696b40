"""Few-shot teaching of the bundled pair: a learning curve and the time from "Train" to a model.

    python benchmarks/bench_teach.py [--draws 5] [--shots 1 3 5 10 20] [--max-claimed 1 0.01]

New class: `cane` (dogs) from ../shared/data/animals10-offline. Its 300 photos are split once
(seeded) into a pool of 150 that training photos are drawn from and 150 that only measure the
dog accuracy. Each draw takes `shots` photos from the pool (and their mirror images), widens
and trains the head exactly as `finetune --data` does (teach.teach_head, same settings), and
scores the five original classes on their 600 stored test-split features (scope.npz).
`--max-claimed` compares limits on the share of the old classes' training photos a new class
may claim (TrainSettings.max_claimed; 1 = no limit, the behaviour before the limit existed).

Timing: with the models loaded (as in the app), decode + resize 10 new photos, extract their
pooled features (and mirrors') through ONNX Runtime (the app's engine) and through TensorFlow,
and train the head, for each model and for both one after the other; median of `--repeats`,
engines interleaved. The CPU is shared with other jobs: compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"
KINDS = ("scratch", "transfer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Animals-10 raw-img folder (needs cane/)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-claimed", type=float, nargs="+", help="limits to compare (default: the library's)")
    p.add_argument("--skip-curve", action="store_true", help="only the timing")
    p.add_argument("--json", type=Path, help="also write the curve here (read by scripts/lesson_figures.py)")
    return p.parse_args(argv)


def load(kind: str) -> dict:
    from animalcls.heads.reader import read_dense_head
    from animalcls.heads.teach import pooled, stored_features
    from animalcls.serving.forward import Forward
    from animalcls.serving.onnx_engine import onnx_forward
    from animalcls.store.checkpoints import default_pair, load_checkpoint

    folder = default_pair()[kind]
    model = load_checkpoint(folder).model
    onnx = onnx_forward(folder)
    keras = Forward(int(model.input_shape[1]), model=model)
    return {
        "folder": folder,
        "model": model,
        "size": int(model.input_shape[1]),
        "head": read_dense_head(folder).as_head(),
        "stored": stored_features(folder),
        "extract": pooled(onnx or keras),
        "tf": pooled(keras),
        "engine": "onnxruntime" if onnx else "tensorflow",
    }


def curve(side: dict, dogs: list[Path], pool: int, shots: list[int], draws: int, epochs: int, limit: float) -> dict:
    from animalcls.heads.teach import TrainSettings, photo_batch, score, teach_head, with_mirrors

    features = side["extract"](with_mirrors(photo_batch(dogs, side["size"])))
    plain, mirrored = features[: len(dogs)], features[len(dogs) :]
    names = [*side["stored"].class_names, "dog"]
    out = {}
    for k in shots:
        rows = []
        for draw in range(draws):
            chosen = np.random.default_rng(1000 * k + draw).choice(pool, k, replace=False)
            train = {"dog": np.concatenate([plain[chosen], mirrored[chosen]])}
            settings = TrainSettings(epochs=epochs, seed=draw, max_claimed=limit)
            taught = teach_head(side["head"], side["stored"], names, train, settings)
            score(taught, side["stored"], {"dog": plain[pool:]})
            rows.append((taught.scores["dog"]["accuracy"], taught.scores["original_classes"]["accuracy"]))
        out[k] = np.asarray(rows)
    return out


def time_teach(side: dict, photos: list[Path], epochs: int, engine: str) -> tuple[float, float, float]:
    """(seconds to decode + extract, seconds to train, CPU seconds of this process) for
    `photos` as one new class."""
    from animalcls.heads.teach import TrainSettings, photo_batch, teach_head, with_mirrors

    start, cpu = time.perf_counter(), time.process_time()
    features = side["extract" if engine == "onnx" else "tf"](with_mirrors(photo_batch(photos, side["size"])))
    extracted = time.perf_counter()
    names = [*side["stored"].class_names, "dog"]
    teach_head(side["head"], side["stored"], names, {"dog": features}, TrainSettings(epochs=epochs))
    return extracted - start, time.perf_counter() - extracted, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from animalcls.heads.teach import TrainSettings

    args.max_claimed = args.max_claimed or [TrainSettings().max_claimed]
    if not all(0 <= limit <= 1 for limit in args.max_claimed):
        print("error: --max-claimed takes shares between 0 and 1", file=sys.stderr)
        return 2
    dogs = sorted((args.data / "cane").iterdir())
    if len(dogs) < 40:
        print(f"error: need the cane/ photos in {args.data}", file=sys.stderr)
        return 2
    dogs = [dogs[i] for i in np.random.default_rng(42).permutation(len(dogs))]
    pool = len(dogs) // 2
    sides = {kind: load(kind) for kind in KINDS}
    print(
        f"Feature engines: {', '.join(k + ' ' + s['engine'] for k, s in sides.items())}; "
        f"{args.draws} draws, {args.epochs} epochs, pool {pool} / held-out {len(dogs) - pool} dog photos\n"
    )
    if not args.skip_curve:
        for limit in args.max_claimed:
            curves = print_curve(sides, dogs, pool, args, limit)
            if args.json and limit == TrainSettings().max_claimed:
                write_curve(args.json, curves, args)
    print_timing(sides, dogs[:10], args)
    return 0


def write_curve(path: Path, curves: dict, args: argparse.Namespace) -> None:
    """{kind: {photos: {"dog": mean, "old_classes": mean}}} and how it was measured."""
    from animalcls.core.atomic import write_json
    from animalcls.heads.teach import TrainSettings

    rows = {
        kind: {str(k): {"dog": float(c[k][:, 0].mean()), "old_classes": float(c[k][:, 1].mean())} for k in args.shots}
        for kind, c in curves.items()
    }
    limit = TrainSettings().max_claimed
    write_json(
        path, {"draws": args.draws, "epochs": args.epochs, "new_class": "dog", "max_claimed": limit, "curve": rows}
    )


def print_curve(sides: dict, dogs: list[Path], pool: int, args: argparse.Namespace, limit: float) -> dict:
    curves = {kind: curve(side, dogs, pool, args.shots, args.draws, args.epochs, limit) for kind, side in sides.items()}
    print(f"New class may claim at most {limit:.0%} of the old classes' training photos:\n")
    print("| dog photos | scratch: dog | scratch: 5 old classes | transfer: dog | transfer: 5 old classes |")
    print("|---|---|---|---|---|")
    for k in args.shots:
        cells = [
            f"{curves[kind][k][:, col].mean():.3f} ± {curves[kind][k][:, col].std():.3f}"
            for kind in KINDS
            for col in (0, 1)
        ]
        print(f"| {k} | " + " | ".join(cells) + " |")
    before = {kind: old_class_accuracy(side["head"], side["stored"]) for kind, side in sides.items()}
    print(
        f"\nBefore teaching, on the same 600 test features: scratch {before['scratch']:.3f}, "
        f"transfer {before['transfer']:.3f}\n"
    )
    return curves


def old_class_accuracy(head: object, stored: object) -> float:
    features, labels = stored.parts["test"]
    return float((head.probabilities(features).argmax(1) == labels).mean())


def print_timing(sides: dict, ten: list[Path], args: argparse.Namespace) -> None:
    engines = ["onnx", "tf"] if all(s["engine"] == "onnxruntime" for s in sides.values()) else ["tf"]
    for kind, side in sides.items():
        for engine in engines:  # warm-up: traces/loads once, caches the stored features' activations
            first = time_teach(side, ten, args.epochs, engine)
            print(f"first teach after loading, {kind}, {engine}: {sum(first[:2]):.2f} s")
    # Interleaved repeats, so both engines see the same load on the shared CPU.
    runs = {(k, e): [] for k in KINDS for e in engines}
    for _ in range(args.repeats):
        for kind in KINDS:
            for engine in engines:
                runs[(kind, engine)].append(time_teach(sides[kind], ten, args.epochs, engine))
    print("\n| 10 new photos (+ mirrors) + 5 stored classes | features s | head training s | total s | CPU s |")
    print("|---|---|---|---|---|")
    for engine in engines:
        for kind in KINDS:
            rows = np.asarray(runs[(kind, engine)])
            print(
                f"| {kind}, {engine} | {np.median(rows[:, 0]):.2f} | {np.median(rows[:, 1]):.2f} | "
                f"{np.median(rows[:, :2].sum(axis=1)):.2f} | {np.median(rows[:, 2]):.2f} |"
            )
        totals = [sum(sum(runs[(k, engine)][i][:2]) for k in KINDS) for i in range(args.repeats)]
        cpu = [sum(runs[(k, engine)][i][2] for k in KINDS) for i in range(args.repeats)]
        print(f"| both models, {engine} | | | **{statistics.median(totals):.2f}** | {statistics.median(cpu):.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
