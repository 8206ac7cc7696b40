"""Command line: python -m animalcls train|evaluate|predict|explain|finetune|download|push."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from animalcls.cli.checks import check_arguments, resolve_checkpoint, train_out
from animalcls.cli.parser import DEFAULT_TOP, build_parser
from animalcls.core.errors import AnimalclsError, Cancelled

# ---------------------------------------------------------------- handlers


def resolve_data(arg: str) -> Path:
    """A local folder, or an hf://datasets/... spec downloaded through the Hub cache."""
    if arg.startswith("hf://"):
        from animalcls.store import hub

        return hub.resolve_data(arg)
    return Path(arg).expanduser()


def cmd_train(args: argparse.Namespace) -> int:
    from animalcls.training import distribute

    distribute.check_request(args.distribute)  # TF_CONFIG and device settings, before TensorFlow
    _check_positive(batch_size=args.batch_size, epochs=args.epochs)
    from animalcls.cli import progress
    from animalcls.training import workflows
    from animalcls.training.train import PRESETS

    config = PRESETS[args.preset or args.model].replace(
        model=args.model,
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        image_size=args.image_size,
        weights=args.weights,
        seed=args.seed,
        flip=False if args.no_flip else None,
        strong_augment=args.strong_augment or None,
        bn_momentum=args.bn_momentum,
        robust_augment=args.robust_augment or None,
        mix=args.mix,
        label_smoothing=args.label_smoothing,
        weight_decay=args.weight_decay,
        cosine=args.cosine or None,
        warmup_epochs=args.warmup_epochs,
        distribute=args.distribute,
        mixed_precision=args.mixed_precision,
    )
    config = workflows.resolve_config(config)
    data_dir = resolve_data(args.data)  # an hf:// download or a bad spec fails before any output
    out = train_out(args)
    print(
        f"Training a {config.model} model on backbone {config.backbone} at {config.image_size}px "
        f"({config.optimizer} lr={config.learning_rate}, batch {config.batch_size}"
        f"{' per replica' if config.distribute != 'none' else ''}, {config.epochs} epochs)"
    )
    with progress.TqdmHooks() as hooks:
        path, scan, result, evaluation = workflows.train_checkpoint(data_dir, config, out, args.classes, hooks=hooks)
    if scan.skipped:
        print(scan.skipped_report())
    where = f"Checkpoint: {path}" if path else "This worker is not the chief: the chief writes the checkpoint."
    print(f"Trained in {result.seconds:.0f} s; test accuracy {evaluation['accuracy']:.4f}. {where}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from animalcls.cli import progress
    from animalcls.core import atomic
    from animalcls.training import workflows
    from animalcls.training.reports import format_report
    from animalcls.trust import verdicts as trust

    folder = resolve_checkpoint(args.checkpoint)
    data_dir = resolve_data(args.data) if args.data else None
    selection = workflows.evaluation_paths(folder, data_dir, args.include_training_photos)  # one folder scan
    with progress.bar("evaluating", unit="batch") as update:
        result = workflows.evaluate_checkpoint(folder, data_dir, update, engine=args.engine, selection=selection)
    judge = trust.judge_for(folder, args.engine)
    with progress.bar("none of the five?", unit="image") as update:
        result["out_of_scope"] = trust.rejection_rate(judge, selection[0], update)
    print(format_report(result))
    print(_rejection_line(result["out_of_scope"], judge.scope_note))
    if args.json:
        atomic.write_json(Path(args.json).resolve(), result)
        print(f"Wrote {args.json}")
    return 0


def _rejection_line(rejection: dict[str, Any] | None, note: str) -> str:
    if rejection is None:
        return f"Rejection rate: unknown ({note})."
    return (
        f"Rejection rate (flagged as none of the five): {rejection['rate']:.1%} "
        f"({rejection['flagged']} of {rejection['n']} photos, threshold {rejection['threshold']:.3g})"
    )


def cmd_predict(args: argparse.Namespace) -> int:
    if args.format or args.output or any(Path(image).is_dir() for image in args.images):
        return _predict_rows(args)
    from animalcls.trust import verdicts as trust

    judge = trust.judge_for(resolve_checkpoint(args.checkpoint), args.engine)
    answers = dict(zip(args.images, trust.answer_files(judge, args.images)))
    if judge.scope_note:  # said once, after the answers (an error comes alone); the fields stay, as null
        print(f'note: {judge.scope_note}; "out_of_scope" and "scope_score" are null.', file=sys.stderr)
    top = args.top or DEFAULT_TOP
    if args.json:
        print(json.dumps({image: a.to_json(top) for image, a in answers.items()}, indent=1))
        return 0
    manifest = judge.predictor.manifest
    print(f"Model: {manifest['name']} ({manifest['kind']}, {manifest['backbone']})")
    for image, answer in answers.items():
        print(image)
        if answer.out_of_scope:
            print(
                f"  {trust.none_of_line(judge.class_names)} (scope score {answer.scope_score:.2f} > "
                f"{judge.detector.threshold:.2f}); the probabilities below are not to be trusted"
            )
        for label, p in sorted(answer.probabilities.items(), key=lambda item: item[1], reverse=True)[:top]:
            print(f"  {label:<12} {p:7.2%}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from animalcls.trust import explain

    job = explain.plan_job(
        resolve_checkpoint(args.checkpoint), args.images, Path(args.out), Path(args.json) if args.json else None
    )  # every check before TF
    from animalcls.cli import progress  # imports TensorFlow (through pipeline

    with progress.bar("explaining", unit="image") as update:
        results = explain.run_job(job, args.method, update)
    for image, result in results.items():
        print(f"{image}: {result['label']} {result['probability']:.1%} -> {result['overlay']}")
    if args.json:
        print(f"Wrote {args.json}")
    return 0


def _predict_rows(args: argparse.Namespace) -> int:
    """Stream one CSV/JSON-lines row per image of the given files and folders."""
    from animalcls.core import atomic
    from animalcls.serving import batch_predict
    from animalcls.trust import verdicts as trust

    paths = batch_predict.discover(args.images)  # the arguments were checked (cli_checks.check_predict)
    fmt = args.format or "csv"
    judge = trust.InputJudge(trust.judge_for(resolve_checkpoint(args.checkpoint), args.engine))
    if args.output:
        atomic.write_atomic(
            Path(args.output), lambda handle: batch_predict.write_rows(judge, paths, fmt, args.batch_size, handle)
        )
        print(f"Wrote {len(paths)} rows to {args.output}", file=sys.stderr)
    else:
        batch_predict.write_rows(judge, paths, fmt, args.batch_size, sys.stdout)
    if judge.judge.scope_note:
        print(f'note: {judge.judge.scope_note}; "out_of_scope" and "scope_score" are empty.', file=sys.stderr)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from animalcls.cli import teach as teach_cli

    source = resolve_checkpoint(args.checkpoint)
    data_dir = resolve_data(args.data) if args.data else None
    if teach_cli.wants_teaching(source, data_dir, args.classes):
        plan = teach_cli.checked_plan(source, data_dir, args)  # every check before TensorFlow
        return teach_cli.run(plan)
    from animalcls.training import distribute

    distribute.check_finetune_request(args.unfreeze, args.distribute, args.mixed_precision)
    _check_positive(batch_size=args.batch_size, epochs=args.epochs)
    from animalcls.cli import progress
    from animalcls.heads import finetune

    with progress.TqdmHooks() as hooks:
        result = finetune.finetune(
            source,
            data_dir,
            epochs=5 if args.epochs is None else args.epochs,
            learning_rate=args.learning_rate,
            unfreeze_layers=args.unfreeze,
            out_dir=Path(args.out) if args.out else None,
            hooks=hooks,
            batch_size=args.batch_size,
            distribute_kind=args.distribute,
            mixed_precision=args.mixed_precision,
        )
    print(f"Fine-tuned checkpoint: {result.path} (test accuracy {result.evaluation['accuracy']:.4f})")
    return 0


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def cmd_download(args: argparse.Namespace) -> int:
    from animalcls.store import hub

    for folder in hub.download_checkpoints(args.repo_id, args.revision, Path(args.out) if args.out else None):
        print(folder)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from animalcls.store import hub

    print(
        hub.push_checkpoint(
            resolve_checkpoint(args.checkpoint), args.repo_id, private=args.private, dry_run=args.dry_run
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from animalcls.serving.export import check_destination, export_checkpoint
    from animalcls.store.checkpoints import read_manifest

    folder = resolve_checkpoint(args.checkpoint)
    read_manifest(folder)  # a bad folder or --out fails before TensorFlow is imported
    check_destination(args.out)
    out, delta = export_checkpoint(folder, args.format, args.out)
    print(f"Exported {folder.name} as {args.format} to {out} (max |Δp| against Keras: {delta:.1e})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the library's notes and warnings reach stderr, one line each."""
    from animalcls.core.logs import library_logs_to_stderr

    with library_logs_to_stderr():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    from animalcls.core.logs import quiet_tensorflow, restore_stderr

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)  # before TensorFlow: a bad value fails in a fraction of a second
    except (AnimalclsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_tensorflow()
    try:
        return HANDLERS[args.command](args)
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


HANDLERS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "explain": cmd_explain,
    "finetune": cmd_finetune,
    "download": cmd_download,
    "push": cmd_push,
    "export": cmd_export,
}

if __name__ == "__main__":
    raise SystemExit(main())
