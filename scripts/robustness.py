"""What do the bundled models rely on? Accuracy on degraded test photos, and where dogs go.

    python scripts/robustness.py --data ../shared/data/animals10-offline/raw-img

Each class of the bundled data comes from a different public dataset, so a model can learn a
source's look (resolution, JPEG history, colour grading, framing) instead of the animal.
Degrading the test photos in ways that keep the animal recognisable for a person, and feeding
photos of a class neither model knows (cane = dog), shows how much each model leans on that.
Writes checkpoints/robustness.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return apply


def _crop(share: float) -> Callable[[Image.Image], Image.Image]:
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        cw, ch = int(w * share), int(h * share)
        left, top = (w - cw) // 2, (h - ch) // 2
        return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)

    return apply


DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda image: image,
    "blur (Gaussian r=2)": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "JPEG quality 10": _jpeg(10),
    "centre crop 60 %": _crop(0.6),
    "downscale to 48 px and back": lambda image: image.resize((48, 48)).resize(image.size),
    "greyscale": lambda image: ImageOps.grayscale(image).convert("RGB"),
    "horizontal flip": ImageOps.mirror,
}


def predict_all(predictor, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    from animalcls.data.preprocessing import to_model_input
    from animalcls.serving.forward import slices

    size = predictor.image_size
    batches = (np.stack([to_model_input(im, size) for im in chunk]) for chunk in slices(images, batch))
    return predictor.outputs.over(batches)["probabilities"]


def degraded_accuracy(predictor, paths: list[str], labels: list[int]) -> tuple[dict[str, float], dict[str, dict]]:
    """Accuracy under each degradation, and per class (the worst class shows what a mean hides)."""
    originals = [Image.open(p).convert("RGB") for p in paths]
    truth = np.asarray(labels)
    overall, per_class = {}, {}
    for name, fn in DEGRADATIONS.items():
        predicted = predict_all(predictor, [fn(im) for im in originals]).argmax(1)
        overall[name] = float((predicted == truth).mean())
        per_class[name] = {c: float((predicted[truth == i] == i).mean()) for i, c in enumerate(predictor.class_names)}
    return overall, per_class


def unknown_class_spread(predictor, folder: Path) -> dict[str, object]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    probabilities = predict_all(predictor, [Image.open(p).convert("RGB") for p in paths])
    names = predictor.class_names
    counts = Counter(names[i] for i in probabilities.argmax(1))
    return {
        "n": len(paths),
        "argmax_counts": {n: counts.get(n, 0) for n in names},
        "mean_top_probability": float(probabilities.max(1).mean()),
        "share_top_probability_over_0.9": float((probabilities.max(1) > 0.9).mean()),
    }


def cross_source_accuracy(predictor, folder: str) -> dict[str, object]:
    """Accuracy on photos of the same classes from other sources, overall and per class."""
    from animalcls.data import dataset as data

    scan = data.scan_folder(folder, predictor.class_names)
    truth = np.asarray([s.label for s in scan.samples])
    predicted = predict_all(predictor, [Image.open(scan.root / s.rel).convert("RGB") for s in scan.samples]).argmax(1)
    per_class = {name: float((predicted[truth == i] == i).mean()) for i, name in enumerate(predictor.class_names)}
    return {"n": int(len(truth)), "accuracy": float((predicted == truth).mean()), "per_class": per_class}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the raw-img folder the checkpoints were trained on")
    parser.add_argument("--out", default=str(REPO / "checkpoints" / "robustness.json"))
    parser.add_argument("--scratch", help="scratch checkpoint folder (default: the bundled one)")
    parser.add_argument("--transfer", help="transfer checkpoint folder (default: the bundled one)")
    parser.add_argument(
        "--cross-source",
        metavar="DIR",
        help="also score photos of the five classes from other sources (e.g. "
        "../shared/data/cross-source-val/raw-img), overall and per class",
    )
    parser.add_argument("--kinds", nargs="+", choices=["scratch", "transfer"], default=["scratch", "transfer"])
    args = parser.parse_args()
    from animalcls.core.logs import quiet_tensorflow

    quiet_tensorflow()
    from animalcls.core import atomic
    from animalcls.data import dataset as data
    from animalcls.serving.inference import load_predictor
    from animalcls.store import checkpoints

    root = data.dataset_root(args.data)
    results = {}
    pair = checkpoints.default_pair()
    pair.update({kind: Path(getattr(args, kind)) for kind in ("scratch", "transfer") if getattr(args, kind)})
    for kind, folder in sorted((k, f) for k, f in pair.items() if k in args.kinds):
        predictor = load_predictor(folder)
        split = data.Split.load(folder / checkpoints.SPLIT_FILE)
        paths, labels = split.paths("test", root)
        overall, per_class = degraded_accuracy(predictor, paths, labels)
        results[kind] = {
            "checkpoint": folder.name,
            "degraded_test_accuracy": overall,
            "degraded_test_accuracy_per_class": per_class,
            "cane_dogs": unknown_class_spread(predictor, root / "cane") if (root / "cane").is_dir() else None,
        }
        if args.cross_source:
            results[kind]["cross_source"] = cross_source_accuracy(predictor, args.cross_source)
        print(f"{kind}: done", file=sys.stderr, flush=True)
    atomic.write_json(Path(args.out), results)
    print(markdown(results))
    return 0


def _worst(result: dict) -> str:
    per_class = result.get("degraded_test_accuracy_per_class")
    if not per_class:
        return "-"
    value, cls, name = min((acc, c, d) for d, row in per_class.items() for c, acc in row.items())
    return f"{value:.3f} ({cls}, {name})"


def markdown(results: dict) -> str:
    kinds = sorted(results)
    lines = ["| test photos | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name in DEGRADATIONS:
        lines.append(
            f"| {name} | " + " | ".join(f"{results[k]['degraded_test_accuracy'][name]:.3f}" for k in kinds) + " |"
        )
    lines.append("| worst class, any of them | " + " | ".join(_worst(results[k]) for k in kinds) + " |")
    if all(results[k].get("cross_source") for k in kinds):
        lines += ["", "| cross-source photos | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        lines.append("| all | " + " | ".join(f"{results[k]['cross_source']['accuracy']:.3f}" for k in kinds) + " |")
        for name in results[kinds[0]]["cross_source"]["per_class"]:
            lines.append(
                f"| {name} | "
                + " | ".join(f"{results[k]['cross_source']['per_class'][name]:.3f}" for k in kinds)
                + " |"
            )
    if all(results[k]["cane_dogs"] for k in kinds):
        names = list(results[kinds[0]]["cane_dogs"]["argmax_counts"])
        lines += ["", "| 300 dog photos predicted as | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for n in names:
            lines.append(
                f"| {n} | " + " | ".join(str(results[k]["cane_dogs"]["argmax_counts"][n]) for k in kinds) + " |"
            )
        lines.append(
            "| mean top probability | "
            + " | ".join(f"{results[k]['cane_dogs']['mean_top_probability']:.2f}" for k in kinds)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
