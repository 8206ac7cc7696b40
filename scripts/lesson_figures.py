"""Gather "what transfer learning buys" for the bundled pair into checkpoints/lesson.json, which the
app's Training tab shows at a glance (animalcls/webapp/lesson.py).

    python benchmarks/bench_teach.py --json runs/few_shot.json     # the few-shot curve (minutes)
    python scripts/lesson_figures.py --few-shot runs/few_shot.json

Per model: test accuracy (eval.json), accuracy on photos from other sources and under blur,
downscaling and heavy JPEG (checkpoints/robustness.json, from scripts/robustness.py), the few-shot
curve of teaching a new animal, training time (manifest), trainable and total parameters, and the
time one photo takes through ONNX Runtime (median of --repeats, measured here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from animalcls.core.atomic import write_json
from animalcls.store.checkpoints import default_pair, read_manifest

REPO = Path(__file__).resolve().parents[1]
DEGRADATIONS = {"blur": "blur (Gaussian r=2)", "downscale": "downscale to 48 px and back", "jpeg": "JPEG quality 10"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--few-shot", type=Path, help="bench_teach.py --json output")
    parser.add_argument("--robustness", type=Path, default=REPO / "checkpoints" / "robustness.json")
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "lesson.json")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for flag in ("few_shot", "robustness"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')} {path} is not a file")
    return args


def parameters(folder: Path) -> tuple[int, int]:
    """(trainable, total) parameters of the checkpoint's Keras model as it was trained."""
    import keras

    model = keras.models.load_model(folder / "model.keras", compile=False)
    count = lambda weights: int(sum(np.prod(w.shape) for w in weights))  # noqa: E731
    return count(model.trainable_weights), count(model.weights)


def ms_per_photo(folder: Path, repeats: int) -> float:
    from animalcls.serving.inference import load_predictor

    predictor = load_predictor(folder)
    photo = np.random.default_rng(0).uniform(0, 255, (1, predictor.image_size, predictor.image_size, 3))
    predictor.forward(photo.astype(np.float32))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        predictor.forward(photo.astype(np.float32))
        times.append(time.perf_counter() - began)
    return 1000 * float(np.median(times))


def figures(kind: str, folder: Path, robustness: dict, few_shot: dict | None, repeats: int) -> dict:
    manifest = read_manifest(folder)
    evaluation = json.loads((folder / "eval.json").read_text())
    degraded = robustness.get(kind, {}).get("degraded_test_accuracy", {})
    trainable, total = parameters(folder)
    return {
        "name": manifest["name"],
        "image_size": manifest["image_size"],
        "test_accuracy": evaluation["accuracy"],
        "test_photos": int(sum(sum(row) for row in evaluation["confusion_matrix"])),
        "cross_source_accuracy": (robustness.get(kind, {}).get("cross_source") or {}).get("accuracy"),
        **{f"{key}_accuracy": degraded.get(name) for key, name in DEGRADATIONS.items()},
        "few_shot": (few_shot or {}).get("curve", {}).get(kind),
        # A frozen-base run first extracts its features once: that is part of what it cost.
        "training_seconds": manifest["training"].get("seconds", 0)
        + (manifest["training"].get("where") or {}).get("feature_seconds", 0),
        "training_photos": manifest["dataset"]["sizes"]["train"],
        "imagenet_start": manifest["kind"] == "transfer",
        "trainable_parameters": trainable,
        "parameters": total,
        "ms_per_photo": round(ms_per_photo(folder, repeats), 2),
    }


def main() -> int:
    args = parse_args()
    from animalcls.core.logs import quiet_tensorflow

    quiet_tensorflow()
    robustness = json.loads(args.robustness.read_text())
    few_shot = json.loads(args.few_shot.read_text()) if args.few_shot else None
    pair = default_pair()
    lesson = {kind: figures(kind, pair[kind], robustness, few_shot, args.repeats) for kind in ("scratch", "transfer")}
    if few_shot:
        lesson["few_shot_setup"] = {k: few_shot[k] for k in ("draws", "epochs", "new_class")}
    write_json(args.out, lesson)
    print(json.dumps(lesson, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
