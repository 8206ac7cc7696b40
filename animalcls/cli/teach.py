"""`finetune CKPT --data MY_PHOTOS [--classes ...]`: when it teaches, its checks and its output.

Teaching is chosen when `--classes` is given, when the checkpoint is a scratch one (it has no
recorded-dataset fine-tune), or when `--data` does not hold the checkpoint's recorded split
(so it is a folder of your own photos). Everything is checked before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from animalcls.core.errors import DataError
from animalcls.data.dataset import Split, dataset_root
from animalcls.heads.teach import TeachPlan, plan_teach
from animalcls.store import checkpoints


def wants_teaching(source: Path, data_dir: Path | None, classes: Sequence[str] | None) -> bool:
    manifest = checkpoints.read_manifest(source)
    if classes or (manifest["kind"] == "scratch" and data_dir is not None):
        return True
    if data_dir is None:
        return False
    split_file = source / checkpoints.SPLIT_FILE
    if not split_file.is_file():
        return False  # the recorded-dataset fine-tune scans and splits --data itself
    split = Split.load(split_file)
    root = dataset_root(data_dir)
    return not all((root / rel).is_file() for part in (split.train, split.val, split.test) for rel, _ in part)


def checked_plan(source: Path, data_dir: Path | None, args: argparse.Namespace) -> TeachPlan:
    if data_dir is None:
        raise DataError("Teaching needs --data DIR: a folder with one sub-folder of photos per class (e.g. dog/).")
    if args.unfreeze:
        raise ValueError(
            "--unfreeze cannot be combined with teaching: training backbone layers changes every photo's "
            "features, so the stored features of the original classes would no longer match. Teach first "
            "(head only), then fine-tune the result with --data on a folder holding photos of every class "
            "and --unfreeze N."
        )
    epochs = 10 if args.epochs is None else args.epochs
    out = Path(args.out) if args.out else None
    return plan_teach(source, data_dir, args.classes, out, epochs, args.learning_rate, args.seed)


def describe_plan(plan: TeachPlan) -> str:
    """What will train: classes in output order, photos per class, held out, tiny classes."""
    base = plan.manifest["class_names"]
    lines = [
        f"Teaching {plan.manifest['name']} ({plan.manifest['kind']}): {len(base)} classes -> "
        f"{len(plan.class_names)} ({', '.join(plan.class_names)})"
    ]
    for name, rels in plan.photos.photos.items():
        held = len(plan.split.test[name])
        note = " (tiny: not scored on its own photos)" if name in plan.split.tiny else ""
        kind = "new" if name not in base else "more photos of"
        lines.append(f"  {kind} {name}: {len(rels)} photos, {len(rels) - held} train, {held} held out{note}")
    if plan.photos.skipped:
        lines.append(
            f"  skipped {len(plan.photos.skipped)} unreadable file(s), e.g. "
            f"{plan.photos.skipped[0][0]}: {plan.photos.skipped[0][1]}"
        )
    return "\n".join(lines)


def run(plan: TeachPlan) -> int:
    print(describe_plan(plan))
    from animalcls.cli import progress
    from animalcls.heads.teach import run_teach

    with progress.TqdmHooks() as hooks:
        result = run_teach(plan, hooks)
    manifest = checkpoints.read_manifest(result.path)
    seconds = manifest["training"]["seconds"]
    print(
        f"Trained in {seconds['extract'] + seconds['train']:.1f} s (photos {seconds['extract']:.1f} s, "
        f"head {seconds['train']:.1f} s)."
    )
    for name, value in manifest["dataset"]["scores"].items():
        what = "original classes (stored test features)" if name == "original_classes" else f"{name} (held-out photos)"
        print(f"  accuracy on {what}: {value['accuracy']:.3f} (n={value['n']})")
    print(f"Taught checkpoint: {result.path}")
    return 0
