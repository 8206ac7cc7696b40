"""The command line's argument checks. They need no TensorFlow and load no model, so `main()`
runs them before any slow work: a nonsense value or a bad path fails in a fraction of a second
instead of after a TensorFlow import (4-8 s) or a whole training run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.core.labels import resolve_classes
from animalcls.core.settings import BACKBONE_IMAGE_SIZES, BUNDLED_DIR, default_backbone
from animalcls.data.dataset import Split, class_folders
from animalcls.store.checkpoints import (
    KINDS,
    SPLIT_FILE,
    check_model_archive,
    default_pair,
    read_manifest,
)

PRESET_NAMES = ("scratch", "scratch-sgd", "scratch-robust", "transfer")  # train.PRESETS' keys (a test keeps them equal)


class ArgumentError(AnimalclsError, ValueError):
    """A command-line value that makes no sense (printed as one `error:` line, exit status 2)."""


def check_arguments(args: argparse.Namespace) -> None:
    """Check every argument of `args.command` that can be checked without TensorFlow."""
    checks = {
        "train": check_train,
        "evaluate": check_evaluate,
        "predict": check_predict,
        "finetune": check_finetune,
        "push": check_push,
        "download": check_download,
        "export": check_export,
    }
    if hasattr(args, "engine"):  # --engine, else ANIMALCLS_ENGINE: a bad value is said first
        from animalcls.serving.inference import requested_engine  # TF-free module

        requested_engine(args.engine)
    if args.command in checks:
        checks[args.command](args)


def resolve_checkpoint(arg: str) -> Path:
    """A checkpoint folder, or 'scratch'/'transfer' for the bundled default of that kind."""
    if arg in KINDS and not Path(arg).exists():
        pair = default_pair()
        if arg not in pair:
            raise ArgumentError(f"No bundled {arg} checkpoint in {BUNDLED_DIR}.")
        return pair[arg]
    return Path(arg).expanduser()


def train_out(args: argparse.Namespace) -> Path:
    """The folder `train` writes: --out, else runs/<model>-<backbone>."""
    return Path(args.out).expanduser() if args.out else Path(f"runs/{args.model}-{train_backbone(args)}")


def train_backbone(args: argparse.Namespace) -> str:
    return args.backbone or default_backbone()


def check_train(args: argparse.Namespace) -> None:
    if len(resolve_classes(args.classes)) < 2:
        raise ArgumentError("--classes needs at least two classes (a one-class model always answers that class).")
    _positive_int("--epochs", args.epochs)
    _positive_int("--batch-size", args.batch_size)
    _positive_finite("--learning-rate", args.learning_rate)
    if args.bn_momentum is not None and not 0 <= args.bn_momentum < 1:
        raise ArgumentError(f"--bn-momentum must be at least 0 and below 1, got {args.bn_momentum}.")
    backbone = train_backbone(args)
    if backbone not in BACKBONE_IMAGE_SIZES:
        raise ArgumentError(f"Unknown backbone '{backbone}'. Choose one of: {', '.join(sorted(BACKBONE_IMAGE_SIZES))}.")
    minimum = BACKBONE_IMAGE_SIZES[backbone][1]
    if args.image_size is not None and args.image_size < minimum:
        raise ArgumentError(f"--image-size must be at least {minimum} for backbone {backbone}, got {args.image_size}.")
    if args.weights not in (None, "imagenet"):
        if args.model != "transfer":
            raise ArgumentError("--weights is for --model transfer only.")
        _existing_file("Weights file", args.weights)
    if not args.data.startswith("hf://"):
        _existing_folder("Dataset folder", args.data)
        class_folders(args.data, args.classes)  # every class has its folder, before TensorFlow
    out = train_out(args)
    if out.exists():
        raise ArgumentError(f"Checkpoint folder already exists: {out} (choose another --out).")


def check_evaluate(args: argparse.Namespace) -> None:
    folder, manifest = _checkpoint_manifest(args.checkpoint)
    if args.data and not args.data.startswith("hf://"):
        _existing_folder("Dataset folder", args.data)
        class_folders(args.data, manifest["class_names"])
    if args.include_training_photos and not args.data:
        raise ArgumentError("--include-training-photos needs --data DIR (the recorded test split has none).")
    _check_split(folder, needs_dataset=not args.data)
    _output_file("--json", args.json)


def _check_split(folder: Path, needs_dataset: bool) -> None:
    """The checkpoint's split.json reads (when present or needed), and its dataset is here if `needs_dataset`."""
    path = folder / SPLIT_FILE
    if not path.is_file():
        if needs_dataset:
            raise ArgumentError(f"{folder} has no {SPLIT_FILE}: pass --data DIR.")
        return
    split = Split.load(path)
    if needs_dataset:
        split.require_root(folder)


def check_predict(args: argparse.Namespace) -> None:
    _positive_int("--top", args.top)
    _positive_int("--batch-size", args.batch_size)
    _checkpoint_manifest(args.checkpoint)
    paths = [Path(image).expanduser() for image in args.images]
    # Folders (and --format/--output) stream rows through batch_predict; explicit images print answers.
    rows = bool(args.format or args.output or any(path.is_dir() for path in paths))
    if rows and args.json:
        raise ArgumentError("--json is for explicit images; with folders use --format jsonl.")
    if rows and args.top is not None:
        raise ArgumentError(
            "--top is for explicit images: folder rows (and --format/--output) give every class's probability."
        )
    for path in paths:
        if not path.exists():
            raise ArgumentError(f"No such file or folder: {path}" if rows else f"Image file not found: {path}")
    if rows:
        _output_file("--output", args.output)
        _some_images(paths)


def _some_images(paths: list[Path]) -> None:
    from animalcls.serving.batch_predict import has_images  # TF-free
    from animalcls.serving.inference import IMAGE_SUFFIXES

    if not has_images(paths):
        names = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ArgumentError(
            f"No image files in {', '.join(map(str, paths))} (looked for {names}; "
            "hidden files and folders are skipped)."
        )


def check_finetune(args: argparse.Namespace) -> None:
    _positive_int("--epochs", args.epochs)
    _positive_finite("--learning-rate", args.learning_rate)
    if args.unfreeze < 0:
        raise ArgumentError(f"--unfreeze must be 0 or more, got {args.unfreeze}.")
    from animalcls.training.distribute import check_finetune_request  # stdlib-only at import: no TF

    check_finetune_request(args.unfreeze, args.distribute, args.mixed_precision)
    source, manifest = _checkpoint_manifest(args.checkpoint)
    teaching = bool(getattr(args, "classes", None) or args.data)  # teaching takes scratch checkpoints too
    if manifest["kind"] != "transfer" and not teaching:
        raise ArgumentError(
            f"{source} is a {manifest['kind']} checkpoint: only transfer checkpoints can be "
            "fine-tuned on their recorded dataset (teach it with --data MY_PHOTOS)."
        )
    if args.data and not args.data.startswith("hf://"):
        _existing_folder("Dataset folder", args.data)
    _check_split(source, needs_dataset=False)  # it may train on stored features: the photos need not be here
    if args.out:
        out = Path(args.out).expanduser()
        if out.resolve() == source.resolve():
            raise ArgumentError(f"--out {out} is the source checkpoint: fine-tuning writes a NEW folder.")
        if out.exists():
            raise ArgumentError(f"Checkpoint folder already exists: {out} (choose another --out).")


def check_push(args: argparse.Namespace) -> None:
    _repo_id(args.repo_id)
    folder, _ = _checkpoint_manifest(args.checkpoint)
    check_model_archive(folder)


def check_download(args: argparse.Namespace) -> None:
    _repo_id(args.repo_id)


def check_export(args: argparse.Namespace) -> None:
    from animalcls.serving.export import check_destination  # TF-free at import

    folder, _ = _checkpoint_manifest(args.checkpoint)
    check_model_archive(folder)
    check_destination(args.out)


def _repo_id(repo_id: str) -> None:
    """ORG/NAME or NAME as the Hub spells them: no spaces, no '..', no path."""
    from animalcls.store.hub import repo_id_problem

    problem = repo_id_problem(repo_id)
    if problem:
        raise ArgumentError(f"--repo-id is not a Hub repo id (ORG/NAME): {problem}")


def _output_file(flag: str, arg: str | None) -> None:
    """A file to write: not a folder, and in a folder that exists (nothing is created for a typo)."""
    if arg is None:
        return
    path = Path(arg).expanduser()
    if path.is_dir():
        raise ArgumentError(f"{flag} {path} is a folder: give a file name.")
    if not path.parent.is_dir():
        raise ArgumentError(f"{flag} {path}: the folder {path.parent} does not exist (create it first).")


def _checkpoint_manifest(arg: str) -> tuple[Path, dict[str, Any]]:
    folder = resolve_checkpoint(arg)
    return folder, read_manifest(folder)


def _positive_int(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ArgumentError(f"{flag} must be at least 1, got {value}.")


def _positive_finite(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ArgumentError(f"{flag} must be a finite number above 0, got {value}.")


def _existing_folder(what: str, arg: str) -> None:
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise ArgumentError(f"{what} not found: {path}" + (" (it is a file)" if path.is_file() else ""))


def _existing_file(what: str, arg: str) -> None:
    path = Path(arg).expanduser()
    if path.is_dir():
        raise ArgumentError(f"{what} {path} is a folder, not a file.")
    if not path.is_file():
        raise ArgumentError(f"{what} not found: {path}")
