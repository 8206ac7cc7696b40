"""`python app.py` as a process over its life: its first request, the temp folders it leaves
(none, after a SIGTERM or at the next start)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, make_image

# On PYTHONPATH as sitecustomize: matplotlib.pyplot's import writes a mark file and takes
# 6 s, so whatever thread imports it leaves a half-imported module in sys.modules that long.
# Without app.import_pyplot, TensorFlow's import (after serving) does it in the background.
SLOW_PYPLOT = """
import importlib.machinery, os, sys, time

class SlowPyplot:
    def find_spec(self, name, path, target=None):
        if name != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            open(os.environ["SLOW_PYPLOT_MARK"], "w").close()
            time.sleep(6)
            run(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, SlowPyplot())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, what: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode} while waiting for {what}")
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@contextmanager
def app_process(tmp: Path, env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python app.py` on the bundled checkpoints, HOME and the fine-tune store in `tmp`."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANIMALCLS_", "GRADIO_SERVER"))}
    env = {**base, "HOME": str(tmp / "home"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
    (tmp / "home").mkdir(exist_ok=True)
    log = open(tmp / "app.log", "a")
    command = [
        sys.executable,
        str(REPO / "app.py"),
        "--no-hub",
        "--port",
        str(port),
        "--finetune-out",
        str(tmp / "finetunes"),
        *args,
    ]
    process = subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until(lambda: _answers(url), "page", process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.mark.slow
def test_the_first_classify_works_while_tensorflow_is_still_importing(tmp_path):
    from gradio_client import Client, handle_file

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_PYPLOT)
    mark = tmp_path / "pyplot-importing"
    photo = make_image(tmp_path / "photo.jpg", (200, 60, 60), size=64)
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SLOW_PYPLOT_MARK": str(mark)}
    with app_process(tmp_path, env) as (url, process):
        _wait_until(mark.exists, "import of matplotlib.pyplot", process)
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 60})
        answer = client.predict(handle_file(str(photo)), api_name="/classify")
        client.close()
    assert answer[1]["confidences"] and answer[3]["confidences"], answer


@pytest.mark.slow
def test_a_stopped_app_leaves_no_temp_folder_and_no_upload_behind(tmp_path):
    import signal

    from gradio_client import Client, handle_file

    temp, cache = tmp_path / "tmp", tmp_path / "gradio"
    temp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp / f"animalcls-plots-{dead.stdout.strip()}-x1y2"  # left by a process that was killed
    stale.mkdir()
    photo = make_image(tmp_path / "photo.jpg", (40, 200, 60), size=64)
    with app_process(tmp_path, {"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache)}) as (url, process):
        assert not stale.exists()
        examples = _files(cache)  # Gradio keeps its copies of the example photos (the same ones at every start)
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 60})
        client.predict(handle_file(str(photo)), api_name="/classify")
        client.close()
        assert [p for p in _files(cache) - examples if p.name == "photo.jpg"]  # the upload, in Gradio's cache
        assert list(temp.glob(f"animalcls-plots-{process.pid}-*"))
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert not list(temp.glob("animalcls-*")), list(temp.iterdir())
    assert _files(cache) <= examples, _files(cache) - examples
