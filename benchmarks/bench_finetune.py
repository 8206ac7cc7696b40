"""Time a frozen-backbone fine-tune three ways, in one run, on real photos:

  (a) cold feature extraction: empty cache, every train image plain + flipped, val/test plain;
  (b) the cached fine-tune: finetune.finetune() with a warm cache (epochs of head training on
      features, test evaluation on features, checkpoint saved);
  (c) the naive fine-tune: train.fit of the full model through the frozen backbone on image
      pipelines for the same epochs, then test evaluation on images.

    python benchmarks/bench_finetune.py                      # efficientnet_lite0, ImageNet
    python benchmarks/bench_finetune.py --backbone tiny --weights none --per-class 50

The source checkpoint is a transfer model with a fresh head (nothing to train first); cache and
outputs live in a temporary folder unless --work is given.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Animals-10 raw-img folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (0: all)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="'imagenet', 'none' or a weights file")
    p.add_argument("--image-size", type=int, help="default: the backbone's")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", type=Path, help="folder for the subset, cache and checkpoints (default: a temp dir)")
    return p.parse_args(argv)


def subset_folder(data: Path, classes: tuple[str, ...], per_class: int, work: Path) -> Path:
    """Symlink the first `per_class` files of each class folder (sorted, so runs compare)."""
    from animalcls.data.dataset import _class_folder, dataset_root

    root, out = dataset_root(data), work / "subset"
    for name in classes:
        folder = _class_folder(root, name)
        target = out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        for file in files[: per_class or None]:
            link = target / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return out


def source_checkpoint(data: Path, args: argparse.Namespace, work: Path) -> Path:
    """A transfer checkpoint (fresh head) with a recorded split of `data`."""
    from animalcls.store import checkpoints
    from animalcls.training import workflows
    from animalcls.training.train import PRESETS, FitResult

    weights = None if args.weights == "none" else args.weights
    config = PRESETS["transfer"].replace(backbone=args.backbone, image_size=args.image_size)
    config.weights = weights
    config = workflows.resolve_config(config)
    scan, split = workflows.scan_and_split(data, None, config.seed)
    out = work / f"source-{args.backbone}"
    split.root_relative = os.path.relpath(split.root, out.resolve())
    model = workflows.build_model(config, len(scan.class_names))
    manifest = workflows.make_manifest(out.name, config, scan, split, FitResult({}, 0.0, False, None))
    return checkpoints.save_checkpoint(out, model, manifest, split=split)


def time_cold_extraction(source: Path, cache_root: Path) -> tuple[float, int]:
    """Extract exactly what finetune() needs into an empty cache."""
    from animalcls.data import dataset as data
    from animalcls.serving.features import FeatureCache, cached_feature_groups
    from animalcls.store import checkpoints

    model = checkpoints.load_checkpoint(source).model
    split = data.Split.load(source / checkpoints.SPLIT_FILE)
    root = split.locate_root(source)
    train, val, test = (split.paths(part, root)[0] for part in ("train", "val", "test"))
    cache = FeatureCache(cache_root)
    start = time.perf_counter()
    cached_feature_groups(model, [(train, False), (train, True), (val, False), (test, False)], cache)
    return time.perf_counter() - start, cache.misses


def time_naive(source: Path, epochs: int, batch_size: int, work: Path) -> tuple[float, float, int, float]:
    """train.fit through the frozen backbone on images, then test evaluation on images."""
    import keras

    from animalcls.data import dataset as data
    from animalcls.heads import finetune
    from animalcls.store import checkpoints
    from animalcls.training import evaluate, train, workflows

    manifest = checkpoints.read_manifest(source)
    config = finetune.finetune_config(manifest, epochs, 1e-3, batch_size)
    keras.utils.set_random_seed(config.seed)
    model = checkpoints.load_checkpoint(source).model
    split = data.Split.load(source / checkpoints.SPLIT_FILE)
    split.root = str(split.locate_root(source))
    train_ds, val_ds, steps = workflows.datasets_for(split, config)
    result = train.fit(model, config, train_ds, val_ds, work / "naive-work", steps)
    start = time.perf_counter()
    paths, labels = split.paths("test")
    evaluation = evaluate.evaluate_paths(model, paths, labels, split.class_names, config.image_size)
    return result.seconds, time.perf_counter() - start, len(result.history["loss"]), evaluation["accuracy"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    cache_root = work / f"feature-cache-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ["ANIMALCLS_FEATURE_CACHE"] = str(cache_root)
    os.environ["ANIMALCLS_RUNS"] = str(work / "runs")

    from animalcls.core.labels import DEFAULT_CLASSES
    from animalcls.core.logs import quiet_tensorflow
    from animalcls.heads.finetune import finetune
    from animalcls.store import checkpoints

    quiet_tensorflow()
    data = subset_folder(args.data, DEFAULT_CLASSES, args.per_class, work)
    t = time.perf_counter()
    source = source_checkpoint(data, args, work)
    print(f"source checkpoint {source} built in {time.perf_counter() - t:.1f} s")

    cold, extracted = time_cold_extraction(source, cache_root)
    print(f"(a) cold extraction: {cold:.1f} s for {extracted} image variants")
    result = finetune(source, epochs=args.epochs, batch_size=args.batch_size)
    training = checkpoints.read_manifest(result.path)["training"]
    assert training["feature_cache"]["misses"] == 0, training["feature_cache"]
    print(f"(b) cached fine-tune: {result.seconds:.1f} s (fit {training['fit_seconds']} s)")
    naive_fit, naive_eval, naive_epochs, naive_acc = time_naive(source, args.epochs, args.batch_size, work)
    naive = naive_fit + naive_eval
    print(f"(c) naive fine-tune: {naive:.1f} s (fit {naive_fit:.1f} s)")

    cached = result.seconds
    rows = [
        ("(a) cold feature extraction", cold, "-", "-"),
        ("(b) cached fine-tune (total)", cached, training["epochs_run"], result.evaluation["accuracy"]),
        ("    of which fit on features", training["fit_seconds"], "", ""),
        ("(c) naive fine-tune (fit + eval)", naive, naive_epochs, naive_acc),
        ("    of which fit on images", naive_fit, "", ""),
    ]
    size = checkpoints.read_manifest(source)["image_size"]
    print(
        f"\n{args.backbone} @ {size}px, weights {args.weights}, {args.per_class or 'all'} images/class, "
        f"{args.epochs} epochs, batch {args.batch_size}, {os.cpu_count()} CPUs"
    )
    print(f"{'step':<34}{'seconds':>9}{'epochs':>8}{'test acc':>10}")
    for name, seconds, epochs, acc in rows:
        acc_text = f"{acc:.4f}" if isinstance(acc, float) else acc
        print(f"{name:<34}{float(seconds):>9.1f}{epochs!s:>8}{acc_text:>10}")
    print(f"\nnaive / cached             = {naive / cached:.1f}x")
    print(f"(cold + cached) / naive    = {(cold + cached) / naive:.2f}")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
