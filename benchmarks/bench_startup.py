"""Serving targets, whole processes: ONNX Runtime (the default engine) against TensorFlow.

Each figure is the median of --runs fresh processes, engines alternated within a run:

* in-process: both bundled models on one photo, after loading and one warm-up call (median of
  20 calls per process): the forward passes alone, and with decoding and resizing;
* `python -m animalcls predict transfer PHOTO` as a process, wall time;
* `python app.py`: seconds from spawning it until it prints that the models are ready, and
  its resident memory then.

    python benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("onnx", "tf")

IN_PROCESS = """
import statistics, time
from animalcls.checkpoints import default_pair
from animalcls.inference import load_image, load_predictor, to_model_input
predictors = [load_predictor(folder) for folder in default_pair().values()]
photo = {photo!r}
batches = [to_model_input(load_image(photo), p.image_size)[None] for p in predictors]
def forwards():
    for p, batch in zip(predictors, batches):
        p.forward(batch)
def whole():
    for p in predictors:
        p.predict([photo])
for f in (forwards, whole):
    f()
times = {{}}
for name, f in (("forward", forwards), ("whole", whole)):
    values = []
    for _ in range(20):
        start = time.perf_counter(); f(); values.append(time.perf_counter() - start)
    times[name] = statistics.median(values) * 1000
print(times["forward"], times["whole"])
"""


def engine_env(engine: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "ANIMALCLS_ENGINE": engine, "TF_CPP_MIN_LOG_LEVEL": "3",
            "GRADIO_ANALYTICS_ENABLED": "False"}


def in_process_ms(engine: str, photo: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", IN_PROCESS.format(photo=str(photo))], env=engine_env(engine), cwd=REPO,
                         capture_output=True, text=True, check=True)
    forward, whole = map(float, out.stdout.split()[-2:])
    return forward, whole


def predict_seconds(engine: str, photo: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "animalcls", "predict", "transfer", str(photo)], env=engine_env(engine),
                   cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_ready(engine: str, timeout: float = 300.0) -> tuple[float, float, float]:
    """Seconds from spawning the app until "Models ready", its RSS (MB) at that moment, and the
    seconds from the server starting until the models were ready (as the app reports them)."""
    command = [sys.executable, "app.py", "--no-hub", "--port", str(free_port())]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=engine_env(engine), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:
            if line.startswith("Models ready"):
                seconds = time.perf_counter() - start
                status = Path(f"/proc/{process.pid}/status").read_text()
                rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
                after_server = float(re.search(r"Models ready ([\d.]+) s", line).group(1))
                return seconds, rss, after_server
            if time.perf_counter() - start > timeout:
                break
        raise RuntimeError(f"app.py ({engine}) never reported its models ready")
    finally:
        process.kill()
        process.wait()


def gradio_import_seconds() -> float:
    """A fresh `import gradio`: the floor under any Gradio app's start-up on this machine."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], env=engine_env("onnx"), cwd=REPO, check=True)
    return time.perf_counter() - start


def test_photo(folder: Path) -> Path:
    raw = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img" / "elefante"
    photos = sorted(raw.glob("*.jp*g")) if raw.is_dir() else []
    if photos:
        return photos[0]
    import numpy as np
    from PIL import Image

    path = folder / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 192, 3), dtype=np.uint8)).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure and engine")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        photo = test_photo(Path(tmp))
        results: dict[str, dict[str, list[float]]] = {e: {} for e in ENGINES}
        for run in range(args.runs):
            for engine in ENGINES:
                forward, whole = in_process_ms(engine, photo)
                ready, rss, after_server = app_ready(engine)
                for key, value in (("forward", forward), ("whole", whole), ("predict", predict_seconds(engine, photo)),
                                   ("ready", ready), ("after_server", after_server), ("rss", rss),
                                   ("gradio", gradio_import_seconds())):
                    results[engine].setdefault(key, []).append(value)
            print(f"  run {run + 1}/{args.runs} done", flush=True)
    med = {e: {k: statistics.median(v) for k, v in r.items()} for e, r in results.items()}
    print(f"\nMedians of {args.runs} fresh processes per figure; {os.cpu_count()} CPUs; photo {photo.name}\n")
    print("| target | ONNX Runtime | TensorFlow | ratio |")
    print("|---|---|---|---|")
    rows = (("both models, one photo, in-process: forward passes", "forward", "{:.1f} ms"),
            ("both models, one photo, in-process: with decode + resize", "whole", "{:.1f} ms"),
            ("`predict transfer PHOTO` as a process", "predict", "{:.2f} s"),
            ("`app.py` start to models ready", "ready", "{:.1f} s"),
            ("`app.py` server up to models ready", "after_server", "{:.1f} s"),
            ("`import gradio` alone, a fresh process (same for both)", "gradio", "{:.1f} s"),
            ("`app.py` memory when the models are ready", "rss", "{:.0f} MB"))
    for label, key, fmt in rows:
        onnx, tf = med["onnx"][key], med["tf"][key]
        print(f"| {label} | {fmt.format(onnx)} | {fmt.format(tf)} | {tf / onnx:.1f}x |")


if __name__ == "__main__":
    main()
