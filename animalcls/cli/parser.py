"""The command line's argument parser: one sub-parser per command (what each command is for
and what it takes). Only argparse and constants: building it imports no TensorFlow."""

from __future__ import annotations

import argparse
from typing import Any

from animalcls.cli.checks import PRESET_NAMES
from animalcls.core.labels import DEFAULT_CLASSES

TEACH_EPOCHS = 10  # teach.DEFAULT_EPOCHS, without importing it for --help
DEFAULT_TOP = 5  # predict --top

DESCRIPTION = """\
Classify animal photos (cat, spider, butterfly, elephant, chicken) with a CNN trained from
scratch and one trained by transfer learning from ImageNet weights, as in the study.

Typical use:
  python -m animalcls predict checkpoints/transfer-efficientnet_lite0 photo.jpg
  python -m animalcls train --data ~/animals10 --model transfer --out runs/my-transfer
  python -m animalcls evaluate runs/my-transfer
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error: ...` line (exit status 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m animalcls", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_explain(commands)
    _add_finetune(commands)
    _add_download(commands)
    _add_push(commands)
    _add_export(commands)
    return parser


def _add_train(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        help="train a scratch or transfer model and write a checkpoint folder",
        description="Train on a folder of photos (Animals-10 'raw-img/' with Italian names, or one "
        "folder per English class name). Splits 80/20 (stratified, seeded), trains with the "
        "study's preset for --model, evaluates on the test split and writes a checkpoint folder.",
    )
    p.add_argument("--data", required=True, help="dataset folder, or hf://datasets/ORG/NAME[/subdir]")
    p.add_argument("--model", required=True, choices=["scratch", "transfer"], help="which experiment of the study")
    p.add_argument(
        "--backbone",
        help="inception_v3, efficientnet_lite0 or tiny (default: inception_v3 if its "
        "ImageNet weights are cached, else efficientnet_lite0)",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help=f"classes in output order, English or Italian (default: {' '.join(DEFAULT_CLASSES)})",
    )
    p.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="default: the --model's preset; scratch-robust "
        "trains a scratch model that holds up on photos from elsewhere",
    )
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--learning-rate", type=float, help="override the preset's learning rate")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="override the preset's optimizer")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument("--weights", help="transfer only: 'imagenet' (default) or a local weights file")
    p.add_argument(
        "--bn-momentum",
        type=float,
        help="scratch only: BatchNorm moving-average momentum "
        "(Keras default 0.99; 0.9 suits a few thousand photos, see README)",
    )
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip augmentation")
    p.add_argument(
        "--strong-augment", action="store_true", help="add random crops and brightness/contrast jitter to the flips"
    )
    p.add_argument(
        "--robust-augment",
        action="store_true",
        help="wide random crops, colour jitter, blur, "
        "downscale, JPEG and greyscale augmentation (numpy/PIL, any Keras backend)",
    )
    p.add_argument("--mix", type=_fraction, metavar="P", help="share of MixUp/CutMix batches (with --robust-augment)")
    p.add_argument("--label-smoothing", type=_fraction, metavar="E", help="label smoothing (e.g. 0.1)")
    p.add_argument("--weight-decay", type=_non_negative, metavar="W", help="AdamW decoupled weight decay (e.g. 0.05)")
    p.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to zero over the epochs")
    p.add_argument("--warmup-epochs", type=_count, metavar="N", help="linear warm-up epochs before the cosine decay")
    p.add_argument("--seed", type=int, help="random seed for the split and training (default 42)")
    p.add_argument("--out", help="checkpoint folder to write (default: runs/<model>-<backbone>)")
    _add_scale_out(p)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _add_scale_out(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--distribute",
        choices=["none", "mirrored", "multiworker"],
        default="none",
        help="tf.distribute strategy: mirrored (every local GPU; without one, the logical CPUs set by "
        "ANIMALCLS_CPU_DEVICES) or multiworker (cluster from TF_CONFIG). --batch-size is per replica.",
    )
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="compute in mixed_float16 on GPUs, mixed_bfloat16 on CPUs (weights and saved model float32)",
    )


def _checkpoint_command(
    commands: Any, name: str, summary: str, description: str, data_help: str | None = None, hub: bool = False
) -> Any:
    """A subcommand that reads a checkpoint folder, with --data (a dataset folder) or --repo-id."""
    p = commands.add_parser(name, help=summary, description=description)
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT_DIR",
        help="a checkpoint folder, or 'scratch'/'transfer' for the bundled default of that kind",
    )
    if data_help:
        p.add_argument("--data", help=data_help)
    if hub:
        p.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    return p


def _add_evaluate(commands: Any) -> None:
    p = _checkpoint_command(
        commands,
        "evaluate",
        "classification report and confusion matrix of a checkpoint",
        "Evaluate a checkpoint on its recorded test split, or with --data on the images of its classes in "
        "a folder. Photos the checkpoint trained or validated on (named in its split.json) are left out of "
        "--data unless --include-training-photos; the report says which photos it scored.",
        "evaluate on the images of this folder instead of the recorded test split",
    )
    p.add_argument(
        "--include-training-photos",
        action="store_true",
        help="with --data: also score the checkpoint's own training/validation photos (not a test score)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report and confusion matrix as JSON")
    _add_engine(p)


def _add_predict(commands: Any) -> None:
    p = _checkpoint_command(
        commands,
        "predict",
        "classify images (or whole folders) with a checkpoint",
        description="Print the top classes and their probabilities for each image. Given a "
        "folder, or --format/--output, stream one row per image (recursively, decoding in "
        "parallel, in batches) as CSV or JSON lines; unreadable files get an error row.",
    )
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+")
    p.add_argument("--top", type=int, help=f"how many classes to show for explicit images (default {DEFAULT_TOP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_engine(p)
    p.add_argument("--format", choices=["csv", "jsonl"], help="streamed rows: csv (default for folders) or jsonl")
    p.add_argument("--output", metavar="FILE", help="write the rows to FILE (atomically) instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass when streaming (default 32)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", "onnx", "tf"],
        help="what runs the model: onnx (ONNX Runtime), tf (TensorFlow) or auto, the default: onnx "
        "when onnxruntime is installed (also set by ANIMALCLS_ENGINE)",
    )


def _add_explain(commands: Any) -> None:
    p = _checkpoint_command(
        commands,
        "explain",
        "heatmaps of where a model looked, as overlay PNGs",
        description="Grad-CAM heatmap of each image's predicted class, blended over the photo and written "
        "to --out as <image>.<checkpoint>.png (written atomically; a file of that name is replaced).",
    )
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", default="runs/explain", metavar="DIR", help="folder for the PNGs (default: runs/explain)")
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write {image: {label, probability, heatmap}}, "
        "the heatmap a grid at the feature map's resolution summing to 1",
    )
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam", help="default: gradcam")


def _add_finetune(commands: Any) -> None:
    p = _checkpoint_command(
        commands,
        "finetune",
        "fine-tune a checkpoint, or teach it your own photos, into a NEW checkpoint folder",
        "Continue training a transfer checkpoint's head on its recorded dataset (optionally the top N backbone "
        "layers). With --data pointing at your own photos (one sub-folder per class: new classes, more photos of "
        "its classes, or both) or with --classes, it TEACHES the checkpoint instead, scratch or transfer: the "
        "head is widened to the union of classes (its own first, then the new ones in --classes order, else "
        "alphabetical) and trained on the stored features of its training photos plus your photos, in seconds. "
        "The result is written to a new folder; the source checkpoint is never modified.",
        "dataset folder (default: the one recorded in the checkpoint), or a folder of your own photos to teach",
    )
    p.add_argument(
        "--classes", nargs="+", metavar="NAME", help="teach only these class folders of --data, new ones in this order"
    )
    p.add_argument("--epochs", type=int, help=f"default 5 (teaching: {TEACH_EPOCHS})")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument(
        "--unfreeze",
        type=int,
        default=0,
        metavar="N",
        help="also train the top N backbone layers (recorded dataset only; not when teaching)",
    )
    p.add_argument("--seed", type=int, default=42, help="teaching: seed of the hold-out split and training")
    p.add_argument("--out", help="output folder (default: runs/finetunes/<name>-<time>)")
    p.add_argument("--batch-size", type=int, default=64, help="per replica (default 64)")
    _add_scale_out(p)


def _add_download(commands: Any) -> None:
    p = commands.add_parser(
        "download",
        help="fetch checkpoint folders from a Hugging Face model repo",
        description="Download checkpoint folders from a Hub model repo (uses the Hub "
        "cache and HF_TOKEN) and validate them.",
    )
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--out", help="copy the checkpoint folders here (default: use them from the Hub cache)")


def _add_push(commands: Any) -> None:
    p = _checkpoint_command(
        commands,
        "push",
        "upload a checkpoint folder with a model card to the Hub",
        "Upload a checkpoint folder to a Hub model repo with a generated model card. --dry-run prints what "
        "would be sent and sends nothing.",
        hub=True,
    )
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card; upload nothing")


def _add_export(commands: Any) -> None:
    from animalcls.serving.export import FORMATS

    p = _checkpoint_command(
        commands,
        "export",
        "export a checkpoint as ONNX, a TF SavedModel or TFLite",
        description="Write the model (raw RGB 0-255 in, preprocessing inside) with its class "
        "order and a README on how to call it into a NEW folder.",
    )
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (must not exist)")
