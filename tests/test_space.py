"""A Hugging Face Space, simulated: a fresh `git clone` of the committed HEAD, an empty HOME,
no ../shared beside it, no ANIMALCLS_* variables, the Space's GRADIO_SERVER_NAME and a port;
`python app.py` started there and driven through gradio_client."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from conftest import REPO

from animalcls.webapp.space import AppNotServing, free_port, space_environment, wait_until_serving


def test_the_wait_for_the_page_ends_when_it_answers_when_the_app_exits_or_at_the_timeout(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(AppNotServing, match="exited with 3"):
        wait_until_serving(f"http://127.0.0.1:{free_port()}/", exited)
    with pytest.raises(AppNotServing, match="did not answer within 0.3 s"):
        wait_until_serving(f"http://127.0.0.1:{free_port()}/", timeout=0.3)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as page:
        threading.Thread(target=page.serve_forever, daemon=True).start()
        assert wait_until_serving(f"http://127.0.0.1:{page.server_address[1]}/", timeout=30) < 30
        page.shutdown()
    monkeypatch.setenv("ANIMALCLS_DATA", "/data")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = space_environment(tmp_path / "home", 7860)
    assert "ANIMALCLS_DATA" not in env and "PYTHONPATH" not in env and env["GRADIO_SERVER_PORT"] == "7860"
    assert env["HOME"] == str(tmp_path / "home") and env["HF_HUB_OFFLINE"] == "1"


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
    port = free_port()
    env = space_environment(home, port)
    log = open(root / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process, timeout=60, every=0.5)
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
