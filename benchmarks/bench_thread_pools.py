"""Both bundled models on one photo, in-process, under three ONNX Runtime thread-pool set-ups.

The app keeps two sessions (scratch and transfer) and runs them one after the other. Each set-up
runs in fresh processes, set-ups interleaved within each round; a figure is the median over the
rounds of each process's median of 50 calls (after 5 warm-up calls):

* per-session pools, idle threads spinning (ONNX Runtime's default);
* per-session pools, idle threads sleeping (`session.intra_op.allow_spinning=0`);
* one process-wide pool shared by both sessions (what `python app.py` sets up: `onnx_engine.share_thread_pool()`).

    python benchmarks/bench_thread_pools.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPS = {
    "spin": "per-session pools, spinning",
    "sleep": "per-session pools, sleeping",
    "shared": "one shared pool (the app)",
}

ONE_PROCESS = """
import statistics, sys, time
import numpy as np
import onnxruntime as ort
from animalcls.store.checkpoints import default_pair
from animalcls.serving.inference import load_image, to_model_input
from animalcls.serving.onnx_engine import default_threads
from animalcls.store.onnx_store import INPUT_NAME, OUTPUTS, ONNX_FILE
setup, photo = sys.argv[1], sys.argv[2]
if setup == "shared":
    ort.set_global_thread_pool_sizes(default_threads(), 1)
sessions, batches = [], []
pair = default_pair()
for folder in (pair["scratch"], pair["transfer"]):
    options = ort.SessionOptions()
    options.use_per_session_threads = setup != "shared"
    if setup != "shared":
        options.intra_op_num_threads = default_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if setup == "spin" else "0")
    session = ort.InferenceSession(str(folder / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    sessions.append(session)
    batches.append(to_model_input(load_image(photo), size)[None].astype(np.float32))
def both():
    for session, batch in zip(sessions, batches):
        session.run(list(OUTPUTS), {INPUT_NAME: batch})
def alone(i):
    return lambda: sessions[i].run(list(OUTPUTS), {INPUT_NAME: batches[i]})
def median_ms(f):
    for _ in range(5):
        f()
    values = []
    for _ in range(50):
        start = time.perf_counter(); f(); values.append(time.perf_counter() - start)
    return statistics.median(values) * 1000
print(median_ms(both), median_ms(alone(0)), median_ms(alone(1)))
"""


def one_process(setup: str, photo: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, setup, str(photo)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in out.stdout.split()[-3:]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per set-up")
    args = parser.parse_args(argv)
    import tempfile

    from bench_startup import test_photo

    with tempfile.TemporaryDirectory() as tmp:
        photo = test_photo(Path(tmp))
        runs: dict[str, list[list[float]]] = {setup: [] for setup in SETUPS}
        for round_ in range(args.rounds):
            for setup in SETUPS:
                runs[setup].append(one_process(setup, photo))
            print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    medians = {s: [statistics.median(col) for col in zip(*rows)] for s, rows in runs.items()}
    base = medians["sleep"][0]
    print(f"\nMedians of {args.rounds} fresh processes; {os.cpu_count()} CPUs; photo {photo.name}\n")
    print("| thread pools | both models | scratch alone | transfer alone | both vs sleeping pools |")
    print("|---|---|---|---|---|")
    for setup, label in SETUPS.items():
        both, scratch, transfer = medians[setup]
        print(f"| {label} | {both:.1f} ms | {scratch:.1f} ms | {transfer:.1f} ms | {base / both:.2f}x |")


if __name__ == "__main__":
    main()
