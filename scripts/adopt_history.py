"""Give a checkpoint the per-epoch history of a rerun of its own recipe, keeping its weights.

Why: the bundled transfer model's history.json lacked precision and recall (the script that
trained it did not record them yet). Rerunning the same script with the same seed records them,
but floating-point noise moves the chosen epoch, so the rerun's weights are not adopted: only
its curves, and only when its evaluation on the recorded test split is byte-identical to the
checkpoint's. The manifest says where the curves come from. `--redraw` only draws a
checkpoint's history.png again from its own history.json (with the note on its loss curves).

    python scripts/adopt_history.py --rerun runs/transfer-history --into checkpoints/transfer-efficientnet_lite0
    python scripts/adopt_history.py --redraw checkpoints/scratch-efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NEEDED = ("precision", "recall", "val_precision", "val_recall")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rerun", type=Path, help="the rerun's checkpoint folder")
    parser.add_argument("--into", type=Path, help="the checkpoint that keeps its weights")
    parser.add_argument("--redraw", type=Path, help="only draw this checkpoint's history.png again")
    args = parser.parse_args()
    if args.redraw:
        if not (args.redraw / "history.json").is_file():
            parser.error(f"{args.redraw} has no history.json")
        draw(args.redraw, json.loads((args.redraw / "history.json").read_text()))
        return 0
    if not (args.rerun and args.into):
        parser.error("give --rerun and --into, or --redraw")
    for folder in (args.rerun, args.into):
        for name in ("history.json", "eval.json", "manifest.json"):
            if not (folder / name).is_file():
                parser.error(f"{folder} has no {name}")
    if (args.rerun / "eval.json").read_bytes() != (args.into / "eval.json").read_bytes():
        parser.error("the rerun's eval.json differs from the checkpoint's: its curves belong to another model")
    history = json.loads((args.rerun / "history.json").read_text())
    missing = [key for key in NEEDED if not history.get(key)]
    if missing:
        parser.error(f"the rerun's history lacks {', '.join(missing)}")
    adopt(args.rerun, args.into, history)
    print(f"{args.into}: history.json and history.png from {args.rerun.name} ({len(history['loss'])} epochs)")
    return 0


def adopt(rerun: Path, into: Path, history: dict) -> None:
    from animalcls.core.atomic import write_json

    manifest = json.loads((into / "manifest.json").read_text())
    rerun_manifest = json.loads((rerun / "manifest.json").read_text())
    where = manifest["training"].setdefault("where", {})
    where["history"] = (
        f"history.json recorded by a rerun of {where.get('script', 'the same script')} with the same seed "
        f"(best epoch {rerun_manifest['training'].get('best_epoch')}; these weights are the original run's epoch "
        f"{manifest['training'].get('best_epoch')}); its eval.json is byte-identical to this checkpoint's"
    )
    write_json(into / "history.json", history)
    write_json(into / "manifest.json", manifest)
    draw(into, history)


def draw(folder: Path, history: dict) -> None:
    from animalcls.core.atomic import write_atomic
    from animalcls.training.plots import history_figure, loss_note

    manifest = json.loads((folder / "manifest.json").read_text())
    note = loss_note(manifest.get("training") or {}, len(manifest["class_names"]))
    figure = history_figure(history, manifest.get("name", folder.name), note)
    write_atomic(folder / "history.png", lambda handle: figure.savefig(handle, format="png", dpi=100))


if __name__ == "__main__":
    raise SystemExit(main())
