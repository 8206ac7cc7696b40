"""The app's 5-epoch head fine-tune, from the button to the saved checkpoint, old code vs new,
warm (features cached) and cold (empty feature cache), in one run.

    python benchmarks/bench_app_finetune.py                 # warm: 5 runs each; cold: 1 each
    python benchmarks/bench_app_finetune.py --old 771686a --runs 5 --cold-runs 1
    python benchmarks/bench_app_finetune.py --no-cold       # warm only (cold takes minutes)

Each variant runs in its own process (a fresh app, as a server would be), calling the Fine-tune
tab's handler `AnimalApp.finetune(5 epochs, 1e-3, 0 layers)` on the bundled transfer model and
the photos it was trained on (../shared), until its last update. "saved" is the time until
`finetune()` returned (the checkpoint folder is complete), "UI done" the time until the handler's
last update (confusion matrix drawn, curves redrawn), "then first classify" the time to load the
new checkpoint for serving and classify one photo with it (what the first Classify after "Use
this model" pays). CPU s are the process's user + system time
over the same span: the 2 cores are shared, so compare wall times within one run, and CPU s always.
The old code is `git archive`d next to this repo (so its checkpoints find ../shared). Warm runs
reuse one feature cache, the one the first cold run of the new code filled (without cold runs, a
run that is not counted fills it); cold runs each start empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="771686a", help="git ref of the code to compare with (default: %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="warm runs per variant (median)")
    p.add_argument("--cold-runs", type=int, default=1, help="cold runs per variant (each extracts 5,100 features)")
    p.add_argument("--no-cold", action="store_true")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--child", nargs=3, metavar=("ROOT", "CACHE", "RUNS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(root: Path, cache: Path, runs: int, epochs: int) -> None:
    """In a fresh process: `runs` fine-tunes through the app handler; JSON lines on stdout."""
    os.environ.update(
        ANIMALCLS_FEATURE_CACHE=str(cache), GRADIO_ANALYTICS_ENABLED="False", MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2"
    )
    os.chdir(root)
    import animalcls.heads.finetune
    from animalcls.webapp.handlers import AnimalApp

    work = Path(tempfile.mkdtemp(prefix="bench-app-ft-"))
    original, saved = animalcls.heads.finetune.finetune, {}

    def timed(*args, **kwargs):
        result = original(*args, **kwargs)
        saved["wall"], saved["cpu"] = time.perf_counter(), time.process_time()
        return result

    animalcls.heads.finetune.finetune = timed
    from animalcls.serving.inference import load_predictor

    animal_app = AnimalApp(use_hub=False, finetune_root=work / "ft", examples_dir=work)
    photo = str(root / "examples" / "cat-chelsea.jpg")
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        updates = list(animal_app.finetune_tab.finetune(epochs, 1e-3, 0, None))
        done_wall, done_cpu = time.perf_counter(), time.process_time()
        assert updates[-1][0].startswith("**Done.**"), updates[-1][0]
        # What the first Classify after "Use this model" pays: loading the fine-tune to serve it.
        load_predictor(work / "ft" / updates[-1][6]).predict([photo])
        print(
            json.dumps(
                {
                    "saved": saved["wall"] - wall,
                    "saved_cpu": saved["cpu"] - cpu,
                    "done": done_wall - wall,
                    "done_cpu": done_cpu - cpu,
                    "first": time.perf_counter() - done_wall,
                }
            ),
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)


def measure(root: Path, cache: Path, runs: int, epochs: int) -> list[dict[str, float]]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--epochs",
        str(epochs),
        "--child",
        str(root),
        str(cache),
        str(runs),
    ]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    if out.returncode != 0:
        raise SystemExit(f"{root.name} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def export_old(ref: str) -> Path:
    """The code at `ref`, unpacked next to this repo (its checkpoints' relative dataset path
    then resolves to the same ../shared)."""
    target = REPO.parent / f".bench-old-{ref}"
    if not target.is_dir():
        target.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]), args.epochs)
        return 0
    old_root = export_old(args.old)
    work = Path(tempfile.mkdtemp(prefix="bench-app-ft-caches-"))
    load = os.getloadavg()
    rows: list[tuple[str, list[dict[str, float]]]] = []
    warm = work / "warm"
    if not args.no_cold:
        for i in range(args.cold_runs):  # interleaved: old, new, old, new...
            for name, root in ((f"cold, old ({args.old})", old_root), ("cold, new", REPO)):
                cache = work / f"cold-{i}-{root.name}"
                rows.append((name, measure(root, cache, 1, args.epochs)))
                if root == REPO and not warm.exists():
                    cache.rename(warm)  # the warm runs start from this filled cache
                shutil.rmtree(cache, ignore_errors=True)
    if not warm.exists():
        measure(REPO, warm, 1, args.epochs)  # fills the cache (not counted)
    for name, root in ((f"warm, old ({args.old})", old_root), ("warm, new", REPO)):
        rows.append((name, measure(root, warm, args.runs, args.epochs)))
    merged: dict[str, list[dict[str, float]]] = {}
    for name, values in rows:
        merged.setdefault(name, []).extend(values)
    print(
        f"\napp fine-tune, {args.epochs} epochs, bundled transfer model, 2,100 + 300 + 600 photos; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print(
        "| fine-tune | runs | saved: wall s | saved: CPU s | UI done: wall s | UI done: CPU s "
        "| then first classify: wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, values in merged.items():
        print(
            f"| {name} | {len(values)} | {median(values, 'saved'):.2f} | {median(values, 'saved_cpu'):.2f} | "
            f"{median(values, 'done'):.2f} | {median(values, 'done_cpu'):.2f} | {median(values, 'first'):.2f} |"
        )
    for kind in ("cold", "warm"):
        old = next((v for n, v in merged.items() if n.startswith(f"{kind}, old")), None)
        new = merged.get(f"{kind}, new")
        if old and new:
            print(
                f"{kind}: old / new = {median(old, 'saved') / median(new, 'saved'):.1f}x wall, "
                f"{median(old, 'saved_cpu') / median(new, 'saved_cpu'):.1f}x CPU (to the saved checkpoint)"
            )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
