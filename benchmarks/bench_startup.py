"""Serving targets, whole processes: ONNX Runtime (the default engine) against TensorFlow.

Each figure is the median of --runs fresh processes, engines alternated within a run:

* in-process: both bundled models on one photo, after loading and one warm-up call (median of
  20 calls per process), ONNX Runtime's sessions sharing one thread pool as in the app: the
  forward passes alone, and with decoding and resizing;
* `python -m animalcls predict transfer PHOTO` as a process, wall time;
* `python app.py`: seconds from its start until its models were ready and until it was serving
  (as it reports them), seconds from spawning it until its page answers, and its resident
  memory once the models are ready.

    python benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from animalcls.webapp.space import free_port, wait_until_serving

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("onnx", "tf")

IN_PROCESS = """
import statistics, time
from animalcls.store.checkpoints import default_pair
from animalcls.serving.inference import load_image, load_predictor, to_model_input
from animalcls.serving.onnx_engine import share_thread_pool
share_thread_pool()  # as app.py does (without effect on the TF engine)
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
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ANIMALCLS_ENGINE": engine,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


def in_process_ms(engine: str, photo: Path) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS.format(photo=str(photo))],
        env=engine_env(engine),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    forward, whole = map(float, out.stdout.split()[-2:])
    return forward, whole


def predict_seconds(engine: str, photo: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "animalcls", "predict", "transfer", str(photo)],
        env=engine_env(engine),
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return time.perf_counter() - start


def app_ready(engine: str, timeout: float = 300.0) -> tuple[float, float, float, float]:
    """For one `python app.py`: seconds from spawning it until its page answers HTTP 200 (polled
    every 20 ms), its RSS (MB) once it reports its models ready, and the seconds from its start
    until the models were ready and until it was serving, as the app reports them."""
    port = free_port()
    command = [sys.executable, "app.py", "--no-hub", "--port", str(port)]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=engine_env(engine), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", process, timeout, every=0.02)
        page = time.perf_counter() - start
        for line in process.stdout:
            if line.startswith("Models ready"):
                status = Path(f"/proc/{process.pid}/status").read_text()
                rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
                ready, serving = map(float, re.search(r"Models ready ([\d.]+) s .* serving ([\d.]+) s", line).groups())
                return page, rss, ready, serving
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
                page, rss, ready, serving = app_ready(engine)
                for key, value in (
                    ("forward", forward),
                    ("whole", whole),
                    ("predict", predict_seconds(engine, photo)),
                    ("ready", ready),
                    ("serving", serving),
                    ("page", page),
                    ("rss", rss),
                    ("gradio", gradio_import_seconds()),
                ):
                    results[engine].setdefault(key, []).append(value)
            print(f"  run {run + 1}/{args.runs} done", flush=True)
    med = {e: {k: statistics.median(v) for k, v in r.items()} for e, r in results.items()}
    print(f"\nMedians of {args.runs} fresh processes per figure; {os.cpu_count()} CPUs; photo {photo.name}\n")
    print("| target | ONNX Runtime | TensorFlow | ratio |")
    print("|---|---|---|---|")
    rows = (
        ("both models, one photo, in-process: forward passes", "forward", "{:.1f} ms"),
        ("both models, one photo, in-process: with decode + resize", "whole", "{:.1f} ms"),
        ("`predict transfer PHOTO` as a process", "predict", "{:.2f} s"),
        ("`app.py` start to models ready (the app's own clock)", "ready", "{:.1f} s"),
        ("`app.py` start to serving (the app's own clock)", "serving", "{:.1f} s"),
        ("`app.py` spawned to its page answering HTTP 200", "page", "{:.1f} s"),
        ("`import gradio` alone, a fresh process (same for both)", "gradio", "{:.1f} s"),
        ("`app.py` memory when the models are ready", "rss", "{:.0f} MB"),
    )
    for label, key, fmt in rows:
        onnx, tf = med["onnx"][key], med["tf"][key]
        print(f"| {label} | {fmt.format(onnx)} | {fmt.format(tf)} | {tf / onnx:.1f}x |")


if __name__ == "__main__":
    main()
