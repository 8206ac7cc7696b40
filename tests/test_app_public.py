"""The app as strangers meet it: whole images under concurrent page loads, and no server
internals (paths, environment variable names) on the page or in any API answer."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, launched_app
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    with launched_app(tiny_checkpoints, tmp_path_factory.mktemp("app-public")) as (url, demo):
        yield url, demo.animalcls_app


@pytest.mark.slow
def test_concurrent_page_loads_get_whole_images(server, tiny_checkpoints):
    from gradio_client import Client

    expected = {}
    for kind in ("scratch", "transfer"):
        for name in ("history.png", "confusion_matrix.png"):
            with Image.open(tiny_checkpoints[kind] / name) as image:
                expected[(kind, name)] = image.size
    # Loaded first, as `python app.py` does before serving: this test is about whole images
    # under concurrent page loads, not about a cold start (a tiny checkpoint's first load may
    # convert it to ONNX, importing TensorFlow, which can outlast the client's 20 s default).
    server[1].registry.warm_up()
    clients = [Client(server[0], verbose=False, httpx_kwargs={"timeout": 60}) for _ in range(8)]
    failures: list[str] = []
    checked = []

    def load_page(client) -> None:
        for _ in range(4):
            try:
                values = client.predict(api_name="/model_info")
                for kind, (history, confusion) in (("scratch", values[3:5]), ("transfer", values[7:9])):
                    for name, path in (("history.png", history), ("confusion_matrix.png", confusion)):
                        with Image.open(path) as image:
                            image.load()  # a truncated body fails to decode fully
                            assert image.size == expected[(kind, name)], (path, image.size)
                        checked.append(path)
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load_page, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    assert len(checked) == 8 * 4 * 4


def _forbidden(server_tmp: Path) -> list[str]:
    return [str(REPO), str(Path.home()), "/tmp", "/work", "ANIMALCLS_", str(server_tmp)]


def _without_gradio_cache(text: str) -> str:
    """Gradio's own file URLs name its upload cache (GRADIO_TEMP_DIR, default /tmp/gradio):
    that is Gradio's, not the app's. Everything else must be free of server paths."""
    cache = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return text.replace(cache, "GRADIO_CACHE")


@pytest.mark.slow
def test_no_server_internals_on_the_page_or_in_api_answers(server, tiny_checkpoints, tmp_path):
    from gradio_client import Client, handle_file

    from animalcls.webapp.views import held_out_photos

    url, animal_app = server
    pages = [
        urllib.request.urlopen(url, timeout=30).read().decode(),
        urllib.request.urlopen(url + "config", timeout=30).read().decode(),
    ]
    client = Client(url, verbose=False)
    photo = held_out_photos([tiny_checkpoints["transfer"]])[0]
    answers = [client.predict(api_name="/model_info"), client.predict(handle_file(photo), api_name="/classify")]
    finetuned = client.predict(1, 1e-3, 0, api_name="/finetune")
    answers += [
        finetuned,
        client.predict(finetuned[6], api_name="/use_model"),
        client.predict(api_name="/restore_models"),
        client.predict(api_name="/cancel_finetune"),
    ]
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    for call in (
        lambda: client.predict(handle_file(str(bad)), api_name="/classify"),
        lambda: client.predict("no-such-model", api_name="/use_model"),
        lambda: client.predict(999, 1e-3, 0, api_name="/finetune"),
    ):
        with pytest.raises(Exception) as error:
            call()
        answers.append(str(error.value))
    texts = [_without_gradio_cache(page) for page in pages]
    for answer in answers:  # file outputs arrive as local copies: their CONTENT is an image, not text
        values = answer if isinstance(answer, (list, tuple)) else [answer]
        texts += [json.dumps(v, default=str) for v in values if not (isinstance(v, str) and os.path.isfile(v))]
    forbidden = _forbidden(animal_app.finetune_root.parent)
    leaks = [
        (word, text[max(0, text.find(word) - 80) : text.find(word) + 80])
        for text in texts
        for word in forbidden
        if word and word in text
    ]
    assert not leaks, leaks[:5]
