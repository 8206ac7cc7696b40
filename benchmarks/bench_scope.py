"""How well each "none of the five" method separates the five classes from other animals.

For each checkpoint: the detector's input arrays for every photo (one TensorFlow pass per model;
the scratch model's ImageNet features come from a second, ImageNet Lite0 pass), then per method
a threshold fitted ONLY on calibration data, and the rates on data never used for fitting:

* calibration: the checkpoint's train split (kNN reference) and val split, and one half of each
  of animals10 `cane`, `other-animals` (per species) and `cross-source-val` (per class), split
  once with scope_build.CALIBRATION_SEED;
* reported: the other halves, and the checkpoint's test split.

    python benchmarks/bench_scope.py                        # both bundled checkpoints
    python benchmarks/bench_scope.py --cache /tmp/scope-cache   # reuse extracted arrays
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLED = ["scratch-efficientnet_lite0", "transfer-efficientnet_lite0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path, default=[REPO / "checkpoints" / n for n in BUNDLED])
    p.add_argument(
        "--shared", type=Path, default=SHARED, help="folder with animals10-offline, other-animals, cross-source-val"
    )
    p.add_argument("--cache", type=Path, help="folder to keep extracted arrays in (reused when present)")
    p.add_argument("--batch-size", type=int, default=64)
    return p.parse_args(argv)


def photo_sets(checkpoint: Path, shared: Path) -> dict[str, list[str]]:
    """Every photo set by name; the out-of-scope and cross-source sets split into halves."""
    from animalcls.data.dataset import Split
    from animalcls.trust.scope_build import folder_groups, half_split

    split = Split.load(checkpoint / "split.json")
    root = split.locate_root(checkpoint)
    sets = {part: split.paths(part, root)[0] for part in ("train", "val", "test")}
    for name, groups in (
        ("cane", folder_groups(shared / "animals10-offline" / "raw-img", ["cane"])),
        ("other", folder_groups(shared / "other-animals" / "raw-img")),
        ("cross", folder_groups(shared / "cross-source-val" / "raw-img")),
    ):
        sets[f"{name}_cal"], sets[f"{name}_held"] = half_split(groups)
    return sets


def load_arrays(checkpoint: Path, files: list[str], args: argparse.Namespace) -> dict[str, np.ndarray]:
    """files, probs, feats, inet and the model's head weights, extracted or from --cache."""
    cached = args.cache / f"scope_{checkpoint.name}.npz" if args.cache else None
    if cached and cached.is_file():
        data = dict(np.load(cached))
        if set(files) <= set(data["files"].tolist()):
            return data
    from animalcls.store.checkpoints import load_checkpoint
    from animalcls.trust import scope_build

    ck = load_checkpoint(checkpoint)
    from_pool = scope_build.shares_imagenet_base(ck.model, ck.manifest)
    start = time.perf_counter()
    arrays = scope_build.extract_arrays(ck.model, files, ck.image_size, from_pool, args.batch_size)
    print(f"{checkpoint.name}: arrays of {len(files)} photos in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    head = {
        f"head_{layer.name}_{i}": np.asarray(w)
        for layer in ck.model.layers
        if layer.name in ("fc512", "predictions")
        for i, w in enumerate(layer.get_weights())
    }
    data = {
        "files": np.array(files),
        "probs": arrays.probabilities,
        "feats": arrays.features,
        "inet": arrays.imagenet_features,
        "from_pool": np.array(from_pool),
        **head,
    }
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, **data)
    return data


def logits(data: dict[str, np.ndarray], feats: np.ndarray) -> np.ndarray:
    """The model's pre-softmax outputs from pooled features (its Dense head, in numpy)."""
    x = feats.astype(np.float64)
    if "head_fc512_0" in data:
        x = np.maximum(x @ data["head_fc512_0"] + data["head_fc512_1"], 0.0)
    return x @ data["head_predictions_0"] + data["head_predictions_1"]


def imagenet_mass(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray, synsets: list[int]) -> np.ndarray:
    """The ImageNet softmax probability on `synsets` (the issue's first idea; measured, not shipped)."""
    logits = features.astype(np.float64) @ kernel + bias
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights[:, synsets].sum(axis=1) / weights.sum(axis=1)


def knn_own(train: np.ndarray):
    """kNN (k=10, PCA-64) on the model's own pooled features instead of ImageNet's."""
    from animalcls.trust.scope import KnnReference

    reference = KnnReference.fit(train)
    return lambda arrays: reference.score(arrays.features, 10)


def mahalanobis_scorer(train: np.ndarray, labels: np.ndarray):
    """Min class distance under a shared Ledoit-Wolf covariance (measured, not shipped)."""
    from sklearn.covariance import LedoitWolf

    means = np.stack([train[labels == c].mean(axis=0) for c in np.unique(labels)])
    precision = LedoitWolf().fit(train - means[labels]).precision_

    def score(arrays) -> np.ndarray:
        d = arrays.features.astype(np.float64)[:, None, :] - means[None]
        return np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)

    return score


def evaluate_model(checkpoint: Path, args: argparse.Namespace) -> list[dict]:
    from animalcls.data.dataset import Split
    from animalcls.store.checkpoints import read_manifest
    from animalcls.trust import scope_build as sb

    manifest = read_manifest(checkpoint)
    sets = photo_sets(checkpoint, args.shared)
    files = sorted({f for fs in sets.values() for f in fs})
    data = load_arrays(checkpoint, files, args)
    row_of = {f: i for i, f in enumerate(data["files"].tolist())}

    def arrays(name: str) -> sb.ScopeArrays:
        index = np.array([row_of[f] for f in sets[name]])
        return sb.ScopeArrays(data["probs"][index], data["feats"][index], data["inet"][index])

    split = Split.load(checkpoint / "split.json")
    out_cal = [arrays("cane_cal"), arrays("other_cal")]
    calibration = sb.Calibration(
        class_names=list(manifest["class_names"]),
        train=arrays("train"),
        train_labels=np.array([label for _, label in split.train]),
        train_files=[rel for rel, _ in split.train],
        val=arrays("val"),
        cross_source=arrays("cross_cal"),
        out_of_scope=sb.ScopeArrays(
            *(
                np.concatenate(parts)
                for parts in zip(*((a.probabilities, a.features, a.imagenet_features) for a in out_cal))
            )
        ),
    )
    head = sb.imagenet_head()
    reported = ("cane_held", "other_held", "test", "cross_held")
    rows = []
    for method in ("maxprob", "imagenet", "knn", "combined"):
        detector = sb.fit_detector(calibration, method, bool(data.get("from_pool", False)), head=head)
        score = {n: sb._score(detector, arrays(n)) for n in reported}
        label = {
            "knn": "knn (ImageNet features, PCA-64)",
            "imagenet": "imagenet log-odds (other animals vs the classes)",
        }
        rows.append(row(label.get(method, method), score, detector.threshold, detector))
    baseline = {n: sb.scope.maxprob_score(arrays(n).probabilities) for n in reported}
    rows.insert(0, row("max prob < 0.9 (fixed)", baseline, 0.1))
    kernel, bias = head
    synsets = sb.scope.IMAGENET_SYNSETS
    class_synsets = sorted({i for n in manifest["class_names"] for i in synsets[n]})
    measured_only = {
        "imagenet mass (classes' synsets)": lambda a: (
            -np.log(np.clip(imagenet_mass(a.imagenet_features, kernel, bias, class_synsets), 1e-12, 1.0))
        ),
        "energy": lambda a: -np.log(np.exp(logits(data, a.features)).sum(axis=1)),
        "max logit": lambda a: -logits(data, a.features).max(axis=1),
        "knn on the model's own features": knn_own(calibration.train.features),
        "mahalanobis": mahalanobis_scorer(calibration.train.features.astype(np.float64), calibration.train_labels),
    }
    for name, fn in measured_only.items():
        threshold = sb.choose_threshold(
            [(fn(calibration.val), sb.VAL_FLAG_RATE), (fn(calibration.cross_source), sb.CROSS_SOURCE_FLAG_RATE)]
        )
        rows.append(row(name, {n: fn(arrays(n)) for n in reported}, threshold))
    return rows


def row(method: str, score: dict[str, np.ndarray], threshold: float, detector=None) -> dict:
    from sklearn.metrics import roc_auc_score

    flagged = {n: float(np.mean(s > threshold)) for n, s in score.items()}
    inside = np.concatenate([score["test"], score["cross_held"]])
    outside = np.concatenate([score["cane_held"], score["other_held"]])
    auc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside])
    return {"method": method, "threshold": threshold, **flagged, "auc": auc, "detector": detector}


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n{name}\n")
    print(
        "| method | cane flagged | other-animals flagged | test flagged | cross-source flagged | ROC AUC | threshold |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['cane_held']:.1%} | {r['other_held']:.1%} | {r['test']:.1%} | "
            f"{r['cross_held']:.1%} | {r['auc']:.3f} | {r['threshold']:.4g} |"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for checkpoint in args.checkpoints:
        print_table(checkpoint.name, evaluate_model(checkpoint, args))
    print(
        "\nRates on photos never used for fitting: held-out halves (cane 150, other-animals 374, "
        "cross-source 197) and the test split (600). Thresholds fitted on the val split and the "
        "calibration halves. AUC: test + cross-source held-out vs cane + other-animals held-out."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
