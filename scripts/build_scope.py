"""Write the "none of the five" detector files (scope.npz + scope.json) into checkpoint folders.

    python scripts/build_scope.py checkpoints/scratch-efficientnet_lite0 checkpoints/transfer-efficientnet_lite0
    python scripts/build_scope.py runs/my-model --shared ../shared/data --method knn --overwrite

Each checkpoint's recorded train split is the kNN reference; its val split and the calibration
half of ../shared/data/cross-source-val must stay in scope; the calibration halves of animals10
`cane` and `other-animals` are the out-of-scope examples. The other halves are never read here:
benchmarks/bench_scope.py reports on them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("combined", "knn", "imagenet", "maxprob")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument(
        "--shared",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder with animals10-offline, other-animals and cross-source-val",
    )
    p.add_argument("--method", choices=METHODS, default="combined")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="replace existing scope files")
    p.add_argument("--cache", type=Path, help="reuse arrays that benchmarks/bench_scope.py --cache extracted")
    args = p.parse_args(argv)
    for folder in args.checkpoints:
        if not (folder / "manifest.json").is_file():
            p.error(f"not a checkpoint folder: {folder}")
    if not (args.shared / "other-animals" / "raw-img").is_dir():
        p.error(f"no other-animals photos under {args.shared}")
    return args


def cached_extractor(path: Path):
    """extract_arrays, answered from a bench_scope.py cache file where it holds every photo."""
    import numpy as np

    from animalcls.trust.scope_build import ScopeArrays, extract_arrays

    data = dict(np.load(path)) if path.is_file() else {"files": np.array([])}
    row_of = {f: i for i, f in enumerate(data["files"].tolist())}

    def extract(model, paths, image_size, from_pool, batch_size, on_batch, imagenet):
        if not all(p in row_of for p in paths):
            return extract_arrays(model, paths, image_size, from_pool, batch_size, on_batch, imagenet)
        rows = np.array([row_of[p] for p in paths])
        return ScopeArrays(data["probs"][rows], data["feats"][rows], data["inet"][rows])

    return extract


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tqdm import tqdm

    from animalcls.trust.scope_build import build_scope, shared_calibration_sets

    sets = shared_calibration_sets(args.shared)
    out_of_scope = sets["cane"][0] + sets["other"][0]
    cross_source = sets["cross"][0]
    for folder in args.checkpoints:
        with tqdm(desc=folder.name, unit="batch") as bar:

            def on_batch(step: int, steps: int | None) -> None:
                bar.total, bar.n = steps, step  # a second pass (ImageNet features) restarts the count
                bar.refresh()

            extract = cached_extractor(args.cache / f"scope_{folder.name}.npz") if args.cache else None
            detector = build_scope(
                folder,
                out_of_scope,
                cross_source,
                args.method,
                args.batch_size,
                on_batch,
                overwrite=args.overwrite,
                extract=extract,
            )
        scores = ", ".join(detector.score_names)
        print(f"{folder}: {args.method} ({scores}), threshold {detector.threshold:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
