"""A Hugging Face Space, simulated: a fresh `git clone` of the committed HEAD, an empty HOME,
no ../shared beside it, no ANIMALCLS_* variables, the Space's GRADIO_SERVER_NAME and a port;
`python app.py` started there and driven through gradio_client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """(url, clone) of app.py running in a fresh clone, as a Space runs it."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    root = tmp_path_factory.mktemp("space")
    clone, home = root / "app", root / "home"
    home.mkdir()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head], check=True)
    assert not (clone.parent / "shared").exists()
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANIMALCLS_", "KERAS_", "GRADIO_", "HF_", "PYTHON"))
    }
    env.update(
        HOME=str(home),
        GRADIO_SERVER_NAME="0.0.0.0",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    log = open(root / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, process)
        yield url, clone
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        print((root / "app.log").read_text()[-3000:])


@pytest.mark.slow
def test_a_fresh_clone_serves_examples_classifies_finetunes_and_isolates_visitors(space):
    from gradio_client import Client, handle_file

    url, clone = space
    config = urllib.request.urlopen(url + "config", timeout=30).read().decode()
    shipped = sorted(p.name for p in (clone / "examples").iterdir() if p.suffix in (".jpg", ".png"))
    assert len(shipped) >= 10 and all(name in config for name in shipped)  # listed as clickable examples
    assert "Photos from the test split" not in config  # no dataset on a Space

    first, second = Client(url, verbose=False), Client(url, verbose=False)
    answer = first.predict(handle_file(str(clone / "examples" / "cat-chelsea.jpg")), api_name="/classify")
    assert answer[3]["label"] == "cat" and "transfer-efficientnet_lite0" in answer[2]

    status, *rest = first.predict(1, 1e-3, 0, api_name="/finetune")  # on the stored features
    assert status.startswith("**Done.**"), status
    name = rest[5]
    assert (clone / "runs" / "finetunes" / name / "model.keras").is_file()
    assert (
        json.loads((clone / "runs" / "finetunes" / name / "manifest.json").read_text())["training"]["method"]
        == "stored-features"
    )

    first.predict(name, api_name="/use_model")
    photo = handle_file(str(clone / "examples" / "elephant-african.jpg"))
    assert name in first.predict(photo, api_name="/classify")[2]
    assert name not in second.predict(photo, api_name="/classify")[2]
    with pytest.raises(Exception, match="no model called"):
        second.predict(name, api_name="/use_model")
    second_views = second.predict(api_name="/model_info")
    assert name not in second_views[1]
