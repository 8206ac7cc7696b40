"""Command line: python -m animalcls train|evaluate|predict|explain|finetune|download|push."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli_checks import PRESET_NAMES, check_arguments, resolve_checkpoint, train_out
from .errors import AnimalclsError, Cancelled
from .labels import DEFAULT_CLASSES

TEACH_EPOCHS = 10  # teach.DEFAULT_EPOCHS, without importing it for --help

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
    p.add_argument("--backbone", help="inception_v3, efficientnet_lite0 or tiny (default: inception_v3 if its "
                   "ImageNet weights are cached, else efficientnet_lite0)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help=f"classes in output order, English or Italian (default: {' '.join(DEFAULT_CLASSES)})")
    p.add_argument("--preset", choices=PRESET_NAMES, help="default: the --model's preset; scratch-robust "
                   "trains a scratch model that holds up on photos from elsewhere")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--learning-rate", type=float, help="override the preset's learning rate")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="override the preset's optimizer")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    p.add_argument("--weights", help="transfer only: 'imagenet' (default) or a local weights file")
    p.add_argument("--bn-momentum", type=float, help="scratch only: BatchNorm moving-average momentum "
                   "(Keras default 0.99; 0.9 suits a few thousand photos, see README)")
    p.add_argument("--no-flip", action="store_true", help="disable horizontal-flip augmentation")
    p.add_argument("--strong-augment", action="store_true",
                   help="add random crops and brightness/contrast jitter to the flips")
    p.add_argument("--robust-augment", action="store_true", help="wide random crops, colour jitter, blur, "
                   "downscale, JPEG and greyscale augmentation (numpy/PIL, any Keras backend)")
    p.add_argument("--mix", type=_fraction, metavar="P", help="share of MixUp/CutMix batches (with --robust-augment)")
    p.add_argument("--label-smoothing", type=_fraction, metavar="E", help="label smoothing (e.g. 0.1)")
    p.add_argument("--weight-decay", type=_non_negative, metavar="W", help="AdamW decoupled weight decay (e.g. 0.05)")
    p.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to zero over the epochs")
    p.add_argument("--warmup-epochs", type=_count, metavar="N", help="linear warm-up epochs before the cosine decay")
    p.add_argument("--seed", type=int, help="random seed for the split and training (default 42)")
    p.add_argument("--out", help="checkpoint folder to write (default: runs/<model>-<backbone>)")
    _add_scale_out(p)
    p.set_defaults(handler=cmd_train)


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
    p.add_argument("--distribute", choices=["none", "mirrored", "multiworker"], default="none",
                   help="tf.distribute strategy: mirrored (every local GPU; without one, the logical CPUs set by "
                   "ANIMALCLS_CPU_DEVICES) or multiworker (cluster from TF_CONFIG). --batch-size is per replica.")
    p.add_argument("--mixed-precision", action="store_true",
                   help="compute in mixed_float16 on GPUs, mixed_bfloat16 on CPUs (weights and saved model float32)")


def _checkpoint_command(
    commands: Any, name: str, summary: str, description: str, data_help: str | None = None, hub: bool = False
) -> Any:
    """A subcommand that reads a checkpoint folder, with --data (a dataset folder) or --repo-id."""
    p = commands.add_parser(name, help=summary, description=description)
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    if data_help:
        p.add_argument("--data", help=data_help)
    if hub:
        p.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    return p


def _add_evaluate(commands: Any) -> None:
    p = _checkpoint_command(
        commands, "evaluate", "classification report and confusion matrix of a checkpoint",
        "Evaluate a checkpoint on its recorded test split, or with --data on the images of its classes in "
        "a folder. Photos the checkpoint trained or validated on (named in its split.json) are left out of "
        "--data unless --include-training-photos; the report says which photos it scored.",
        "evaluate on the images of this folder instead of the recorded test split",
    )
    p.add_argument("--include-training-photos", action="store_true",
                   help="with --data: also score the checkpoint's own training/validation photos (not a test score)")
    p.add_argument("--json", metavar="FILE", help="also write the report and confusion matrix as JSON")
    _add_engine(p)
    p.set_defaults(handler=cmd_evaluate)


def _add_predict(commands: Any) -> None:
    p = commands.add_parser("predict", help="classify images (or whole folders) with a checkpoint",
                            description="Print the top classes and their probabilities for each image. Given a "
                            "folder, or --format/--output, stream one row per image (recursively, decoding in "
                            "parallel, in batches) as CSV or JSON lines; unreadable files get an error row.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint folder, or 'scratch'/'transfer' "
                   "for the bundled default of that kind")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_engine(p)
    p.add_argument("--format", choices=["csv", "jsonl"], help="streamed rows: csv (default for folders) or jsonl")
    p.add_argument("--output", metavar="FILE", help="write the rows to FILE (atomically) instead of stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass when streaming (default 32)")
    p.set_defaults(handler=cmd_predict)


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["auto", "onnx", "tf"],
                   help="what runs the model: onnx (ONNX Runtime), tf (TensorFlow) or auto, the default: onnx "
                   "when onnxruntime is installed (also set by ANIMALCLS_ENGINE)")


def _add_explain(commands: Any) -> None:
    p = commands.add_parser(
        "explain", help="heatmaps of where a model looked, as overlay PNGs",
        description="Grad-CAM heatmap of each image's predicted class, blended over the photo and written "
        "to --out as <image>.<checkpoint>.png (written atomically; a file of that name is replaced).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint folder, or 'scratch'/'transfer' "
                   "for the bundled default of that kind")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--out", default="runs/explain", metavar="DIR", help="folder for the PNGs (default: runs/explain)")
    p.add_argument("--json", metavar="FILE", help="also write {image: {label, probability, heatmap}}, "
                   "the heatmap a grid at the feature map's resolution summing to 1")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam", help="default: gradcam")
    p.set_defaults(handler=cmd_explain)


def _add_finetune(commands: Any) -> None:
    p = _checkpoint_command(
        commands, "finetune", "fine-tune a checkpoint, or teach it your own photos, into a NEW checkpoint folder",
        "Continue training a transfer checkpoint's head on its recorded dataset (optionally the top N backbone "
        "layers). With --data pointing at your own photos (one sub-folder per class: new classes, more photos of "
        "its classes, or both) or with --classes, it TEACHES the checkpoint instead, scratch or transfer: the "
        "head is widened to the union of classes (its own first, then the new ones in --classes order, else "
        "alphabetical) and trained on the stored features of its training photos plus your photos, in seconds. "
        "The result is written to a new folder; the source checkpoint is never modified.",
        "dataset folder (default: the one recorded in the checkpoint), or a folder of your own photos to teach",
    )
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="teach only these class folders of --data, new ones in this order")
    p.add_argument("--epochs", type=int, help=f"default 5 (teaching: {TEACH_EPOCHS})")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--unfreeze", type=int, default=0, metavar="N",
                   help="also train the top N backbone layers (recorded dataset only; not when teaching)")
    p.add_argument("--seed", type=int, default=42, help="teaching: seed of the hold-out split and training")
    p.add_argument("--out", help="output folder (default: runs/finetunes/<name>-<time>)")
    p.add_argument("--batch-size", type=int, default=64, help="per replica (default 64)")
    _add_scale_out(p)
    p.set_defaults(handler=cmd_finetune)


def _add_download(commands: Any) -> None:
    p = commands.add_parser("download", help="fetch checkpoint folders from a Hugging Face model repo",
                            description="Download checkpoint folders from a Hub model repo (uses the Hub "
                            "cache and HF_TOKEN) and validate them.")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--out", help="copy the checkpoint folders here (default: use them from the Hub cache)")
    p.set_defaults(handler=cmd_download)


def _add_push(commands: Any) -> None:
    p = _checkpoint_command(
        commands, "push", "upload a checkpoint folder with a model card to the Hub",
        "Upload a checkpoint folder to a Hub model repo with a generated model card. --dry-run prints what "
        "would be sent and sends nothing.", hub=True,
    )
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card; upload nothing")
    p.set_defaults(handler=cmd_push)


def _add_export(commands: Any) -> None:
    from .export import FORMATS

    p = commands.add_parser("export", help="export a checkpoint as ONNX, a TF SavedModel or TFLite",
                            description="Write the model (raw RGB 0-255 in, preprocessing inside) with its class "
                            "order and a README on how to call it into a NEW folder.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint folder, or 'scratch'/'transfer'")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create (must not exist)")
    p.set_defaults(handler=cmd_export)


# ---------------------------------------------------------------- handlers


def resolve_data(arg: str) -> Path:
    """A local folder, or an hf://datasets/... spec downloaded through the Hub cache."""
    if arg.startswith("hf://"):
        from . import hub

        return hub.resolve_data(arg)
    return Path(arg).expanduser()


def cmd_train(args: argparse.Namespace) -> int:
    from . import distribute

    distribute.check_request(args.distribute)  # TF_CONFIG and device settings, before TensorFlow
    _check_positive(batch_size=args.batch_size, epochs=args.epochs)
    from . import progress, workflows
    from .train import PRESETS

    config = PRESETS[args.preset or args.model].replace(
        model=args.model, backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, image_size=args.image_size,
        weights=args.weights, seed=args.seed, flip=False if args.no_flip else None,
        strong_augment=args.strong_augment or None, bn_momentum=args.bn_momentum,
        robust_augment=args.robust_augment or None, mix=args.mix, label_smoothing=args.label_smoothing,
        weight_decay=args.weight_decay, cosine=args.cosine or None, warmup_epochs=args.warmup_epochs,
        distribute=args.distribute, mixed_precision=args.mixed_precision,
    )
    config = workflows.resolve_config(config)
    data_dir = resolve_data(args.data)  # an hf:// download or a bad spec fails before any output
    out = train_out(args)
    print(f"Training a {config.model} model on backbone {config.backbone} at {config.image_size}px "
          f"({config.optimizer} lr={config.learning_rate}, batch {config.batch_size}"
          f"{' per replica' if config.distribute != 'none' else ''}, {config.epochs} epochs)")
    with progress.TqdmHooks() as hooks:
        path, scan, result, evaluation = workflows.train_checkpoint(
            data_dir, config, out, args.classes, hooks=hooks
        )
    if scan.skipped:
        print(scan.skipped_report())
    where = f"Checkpoint: {path}" if path else "This worker is not the chief: the chief writes the checkpoint."
    print(f"Trained in {result.seconds:.0f} s; test accuracy {evaluation['accuracy']:.4f}. {where}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import atomic, progress, trust, workflows
    from .reports import format_report

    folder = resolve_checkpoint(args.checkpoint)
    data_dir = resolve_data(args.data) if args.data else None
    with progress.bar("evaluating", unit="batch") as update:
        result = workflows.evaluate_checkpoint(folder, data_dir, update, engine=args.engine,
                                               include_training=args.include_training_photos)
    judge = trust.judge_for(folder, args.engine)
    paths = workflows.evaluation_paths(folder, data_dir, args.include_training_photos)[0]
    with progress.bar("none of the five?", unit="image") as update:
        result["out_of_scope"] = trust.rejection_rate(judge, paths, update)
    print(format_report(result))
    print(_rejection_line(result["out_of_scope"], judge.scope_note))
    if args.json:
        atomic.write_json(Path(args.json).resolve(), result)
        print(f"Wrote {args.json}")
    return 0


def _rejection_line(rejection: dict[str, Any] | None, note: str) -> str:
    if rejection is None:
        return f"Rejection rate: unknown ({note})."
    return (f"Rejection rate (flagged as none of the five): {rejection['rate']:.1%} "
            f"({rejection['flagged']} of {rejection['n']} photos, threshold {rejection['threshold']:.3g})")


def cmd_predict(args: argparse.Namespace) -> int:
    if args.format or args.output or any(Path(image).is_dir() for image in args.images):
        return _predict_rows(args)
    from . import trust

    judge = trust.judge_for(resolve_checkpoint(args.checkpoint), args.engine)
    answers = dict(zip(args.images, trust.answer_files(judge, args.images)))
    if judge.scope_note:  # said once, after the answers (an error comes alone); the fields stay, as null
        print(f"note: {judge.scope_note}; \"out_of_scope\" and \"scope_score\" are null.", file=sys.stderr)
    if args.json:
        print(json.dumps({image: a.to_json(args.top) for image, a in answers.items()}, indent=1))
        return 0
    manifest = judge.predictor.manifest
    print(f"Model: {manifest['name']} ({manifest['kind']}, {manifest['backbone']})")
    for image, answer in answers.items():
        print(image)
        if answer.out_of_scope:
            print(f"  {trust.none_of_line(judge.class_names)} (scope score {answer.scope_score:.2f} > "
                  f"{judge.detector.threshold:.2f}); the probabilities below are not to be trusted")
        for label, p in sorted(answer.probabilities.items(), key=lambda item: item[1], reverse=True)[: args.top]:
            print(f"  {label:<12} {p:7.2%}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from . import explain

    job = explain.plan_job(resolve_checkpoint(args.checkpoint), args.images, Path(args.out),
                           Path(args.json) if args.json else None)  # every check before TF
    from . import progress  # imports TensorFlow (through pipeline)

    with progress.bar("explaining", unit="image") as update:
        results = explain.run_job(job, args.method, update)
    for image, result in results.items():
        print(f"{image}: {result['label']} {result['probability']:.1%} -> {result['overlay']}")
    if args.json:
        print(f"Wrote {args.json}")
    return 0


def _predict_rows(args: argparse.Namespace) -> int:
    """Stream one CSV/JSON-lines row per image of the given files and folders."""
    from . import atomic, batch_predict, checkpoints

    _check_positive(batch_size=args.batch_size)
    if args.json:
        raise ValueError("--json is for explicit images; with folders use --format jsonl.")
    folder = resolve_checkpoint(args.checkpoint)
    checkpoints.read_manifest(folder)  # a bad checkpoint fails before discovery and model loading
    paths = batch_predict.discover(args.images)
    fmt = args.format or "csv"
    from .inference import load_predictor

    predictor = load_predictor(folder, args.engine)
    if args.output:
        atomic.write_atomic(Path(args.output), lambda handle: batch_predict.write_rows(
            predictor, paths, fmt, args.batch_size, handle))
        print(f"Wrote {len(paths)} rows to {args.output}", file=sys.stderr)
    else:
        batch_predict.write_rows(predictor, paths, fmt, args.batch_size, sys.stdout)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from . import teach_cli

    source = resolve_checkpoint(args.checkpoint)
    data_dir = resolve_data(args.data) if args.data else None
    if teach_cli.wants_teaching(source, data_dir, args.classes):
        plan = teach_cli.checked_plan(source, data_dir, args)  # every check before TensorFlow
        return teach_cli.run(plan)
    from . import distribute

    distribute.check_finetune_request(args.unfreeze, args.distribute, args.mixed_precision)
    _check_positive(batch_size=args.batch_size, epochs=args.epochs)
    from . import finetune, progress

    with progress.TqdmHooks() as hooks:
        result = finetune.finetune(
            source, data_dir, epochs=5 if args.epochs is None else args.epochs, learning_rate=args.learning_rate,
            unfreeze_layers=args.unfreeze, out_dir=Path(args.out) if args.out else None, hooks=hooks,
            batch_size=args.batch_size, distribute_kind=args.distribute, mixed_precision=args.mixed_precision,
        )
    print(f"Fine-tuned checkpoint: {result.path} (test accuracy {result.evaluation['accuracy']:.4f})")
    return 0


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def cmd_download(args: argparse.Namespace) -> int:
    from . import hub

    for folder in hub.download_checkpoints(args.repo_id, args.revision, Path(args.out) if args.out else None):
        print(folder)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from . import hub

    print(hub.push_checkpoint(Path(args.checkpoint), args.repo_id, private=args.private, dry_run=args.dry_run))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoints import read_manifest
    from .export import check_destination, export_checkpoint

    folder = resolve_checkpoint(args.checkpoint)
    read_manifest(folder)  # a bad folder or --out fails before TensorFlow is imported
    check_destination(args.out)
    out, delta = export_checkpoint(folder, args.format, args.out)
    print(f"Exported {folder.name} as {args.format} to {out} (max |Δp| against Keras: {delta:.1e})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import quiet_tensorflow, restore_stderr

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)  # before TensorFlow: a bad value fails in a fraction of a second
    except (AnimalclsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_tensorflow()
    try:
        return args.handler(args)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except (AnimalclsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore_stderr()


if __name__ == "__main__":
    raise SystemExit(main())
