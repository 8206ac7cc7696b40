"""Hostile raw-HTTP inputs against the app run as a Space (a `git clone` of HEAD, `python app.py`,
bundled checkpoints), with an audit hook in the app's process logging every file it opens.

* reads: every image endpoint gets server paths in every form (absolute, relative, `..`, a link
  inside Gradio's cache, `file=` and http routes, with and without Gradio's "meta"); prints what
  each answered and every file the app opened meanwhile outside its upload cache and examples/.
* bombs: an inline data: URL PNG of 12000x12000 (0.4 MB), the same uploaded, and a 51 MB inline
  PNG; prints the app's peak resident memory above its size before each (Linux clear_refs) and
  the time to the answer.

    python benchmarks/bench_hostile_inputs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from animalcls.webapp.layout import IMAGE_ENDPOINTS

REPO = Path(__file__).resolve().parents[1]
META = {"_type": "gradio.FileData"}
HOOK = """import os, sys, time
log = open(os.environ["OPEN_LOG"], "a", buffering=1)
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        log.write(f"{time.time()}\\t{os.fsdecode(args[0])}\\n")
sys.addaudithook(hook)
import runpy
runpy.run_path("app.py", run_name="__main__")
"""


def call(url: str, api: str, data: list[Any]) -> tuple[str, Any, float]:
    started = time.perf_counter()
    reply = httpx.post(
        f"{url}gradio_api/call/{api}",
        content=json.dumps({"data": data}),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    if reply.status_code != 200:
        return f"http {reply.status_code}", reply.text[:200], time.perf_counter() - started
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{reply.json()['event_id']}", timeout=300) as stream:
        text = "".join(stream.iter_text())
    event, payload = re.findall(r"event: (\w+)\ndata: (.*)", text)[-1]
    return event, json.loads(payload), time.perf_counter() - started


def upload(url: str, name: str, data: bytes) -> dict[str, Any]:
    reply = httpx.post(f"{url}gradio_api/upload", files={"files": (name, data)}, timeout=120)
    return {"path": reply.json()[0], "orig_name": name, "meta": META}


def inline(data: bytes) -> dict[str, Any]:
    return {"url": "data:image/png;base64," + base64.b64encode(data).decode(), "meta": META}


def png(side: int, padding: int = 0) -> bytes:
    """A black greyscale PNG, built row by row; `padding` bytes of an ancillary chunk make it big."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(side + 1)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    extra = chunk(b"zzPd", b"\0" * padding) if padding else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + extra
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def status_kb(pid: int, field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def start_app(app_dir: Path, work: Path) -> tuple[str, subprocess.Popen, Path]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    opened = work / "opened.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANIMALCLS_", "KERAS_", "GRADIO_", "HF_"))}
    env.update(
        HOME=str(work / "home"),
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        OPEN_LOG=str(opened),
    )
    log = open(work / "app.log", "w")
    process = subprocess.Popen([sys.executable, "-c", HOOK], cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited with {process.returncode}; see {work / 'app.log'}")
        try:
            httpx.get(url, timeout=2)
            return url, process, opened
        except httpx.HTTPError:
            time.sleep(0.1)


def hostile(url: str, app_dir: Path, cache: Path, secret: Path) -> list[dict[str, Any]]:
    confusion = next(app_dir.glob("checkpoints/*/confusion_matrix.png"))
    links = cache / "bench-links"
    links.mkdir(parents=True, exist_ok=True)
    for name, target in (("passwd.png", Path("/etc/passwd")), ("confusion.png", confusion), ("secret.png", secret)):
        (links / name).unlink(missing_ok=True)
        (links / name).symlink_to(target)
    paths = [
        "/etc/passwd",
        "/etc/shadow",
        "/proc/self/environ",
        "/",
        str(secret),
        str(confusion),
        str(confusion.relative_to(app_dir)),
        "../../../../../../etc/passwd",
        f"{cache}/../../etc/passwd",
        *(str(p) for p in links.iterdir()),
        f"file={secret}",
        f"/gradio_api/file={confusion}",
        f"{url}gradio_api/file={confusion}",
        "http://127.0.0.1:1/x.png",
        "http://169.254.169.254/latest",
    ]
    return [
        *({"path": p} for p in paths),
        *({"path": p, "meta": META} for p in paths),
        {"url": f"file://{secret}"},
        {"url": f"{url}gradio_api/file={confusion}"},
    ]


def wait_quiet(opened: Path, quiet_s: float = 5.0, limit_s: float = 180.0) -> None:
    """Until the app has opened no file for `quiet_s`: app.py imports TensorFlow after serving, and
    those imports would mix with what the requests make it open."""
    size, since, began = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - began < limit_s:
        if opened.stat().st_size != size:
            size, since = opened.stat().st_size, time.monotonic()
        time.sleep(0.2)


def sweep(url: str, app_dir: Path, work: Path, opened: Path) -> None:
    cache = Path(tempfile.gettempdir(), "gradio").resolve()
    secret = work / "secret.png"
    secret.write_bytes(png(64))
    payloads = hostile(url, app_dir, cache, secret)
    endpoints = {
        api: shape for api, shape in IMAGE_ENDPOINTS.items() if not call(url, api, shape(None))[0].startswith("http")
    }
    print(f"image endpoints served: {', '.join(endpoints)}")
    wait_quiet(opened)
    began, answers = time.time(), Counter()
    for payload in payloads:
        for api, shape in endpoints.items():
            event, data, _ = call(url, api, shape(payload))
            answers[(event, json.dumps(data.get("error") if isinstance(data, dict) else "outputs"))] += 1
    ended = time.time()
    print(f"{len(payloads)} hostile payloads x {len(endpoints)} endpoints = {len(payloads) * len(endpoints)} requests")
    for (event, error), count in answers.most_common():
        print(f"  {count:4d} x {event}: {error[:150]}")
    allowed = (cache, (app_dir / "examples").resolve())
    # Python's own module files: imports still running in the background (TensorFlow after serving).
    python = {Path(os.path.realpath(p)) for p in (sys.prefix, sys.base_prefix, app_dir)}
    outside, modules = set(), set()
    for line in opened.read_text().splitlines():
        stamp, _, path = line.partition("\t")
        if began <= float(stamp) <= ended:
            resolved = Path(os.path.realpath(os.path.join(app_dir, path)))
            if any(resolved.is_relative_to(folder) for folder in allowed):
                continue
            is_module = any(resolved.is_relative_to(p) for p in python) and resolved.suffix in (".py", ".pyc", ".so")
            (modules if is_module else outside).add(str(resolved))
    print(
        f"files opened meanwhile outside the upload cache and examples/: {len(outside)}, plus {len(modules)} "
        "Python module files (imports)"
    )
    for path in sorted(outside):
        print(f"  {path}")


def bombs(url: str, pid: int, repeat: int) -> None:
    call(url, "classify", [inline(png(64)), False])  # what a first call loads, loaded
    bomb = png(12000)
    big = png(8, padding=51 * 2**20)
    cases = {
        "inline 12000x12000 PNG (%.2f MB) to /classify" % (len(bomb) / 2**20): ("classify", lambda: inline(bomb)),
        "inline 12000x12000 PNG to /teach_add (webcam)": ("teach_add", lambda: inline(bomb)),
        "uploaded 12000x12000 PNG to /classify": ("classify", lambda: upload(url, "bomb.png", bomb)),
        "inline 51 MB PNG (%.0f MB body) to /classify" % (len(big) * 4 / 3 / 2**20): ("classify", lambda: inline(big)),
    }
    for what, (api, make) in cases.items():
        grown, seconds = [], []
        for _ in range(repeat):
            payload = make()
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            before = status_kb(pid, "VmHWM")
            event, data, took = call(url, api, IMAGE_ENDPOINTS[api](payload))
            grown.append((status_kb(pid, "VmHWM") - before) / 1024)
            seconds.append(took)
        answer = str(data.get("error") if isinstance(data, dict) else data)[:110]
        print(
            f"{what}: peak RSS +{max(grown):.0f} MB (max of {repeat}), {statistics.median(seconds):.2f} s median "
            f"({max(seconds):.2f} max); answer: {event}: {answer}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    (work / "home").mkdir()
    app_dir = work / "app"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(app_dir)], check=True)
    url, process, opened = start_app(app_dir, work)
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=app_dir, text=True).strip()
        print(f"app.py of {commit} serving at {url} (pid {process.pid})")
        sweep(url, app_dir, work, opened)
        bombs(url, process.pid, args.repeat)
        print(f"server log tracebacks: {(work / 'app.log').read_text().count('Traceback')}")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
