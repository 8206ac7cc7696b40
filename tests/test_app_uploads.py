"""The app under hostile raw HTTP: image inputs read only Gradio's upload cache, inline images are
checked before they are decoded, and every bad input gets a specific message (and no traceback)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, launched_app, make_image
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
from animalcls.webapp.inputs import REFUSED  # noqa: E402
from animalcls.webapp.layout import IMAGE_ENDPOINTS  # noqa: E402

FILE_META = {"_type": "gradio.FileData"}
VALIDATED = ("classify", "finetune")  # events whose validator may refuse a call before it is queued
_OPENED: list[str] | None = None  # paths opened while a sweep records (see _record_opens)


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app-uploads")
    (tmp / "examples").mkdir()
    make_image(tmp / "examples" / "cat-tabby.jpg", (200, 120, 60))  # so classify_user_example exists
    with launched_app(tiny_checkpoints, tmp) as (url, demo):
        yield url, demo


def call(url: str, api_name: str, data: list[Any], event_data: Any = None) -> tuple[str, Any]:
    """(event, data) of one raw call: "complete" and the outputs, or "error" and Gradio's error dict.
    json.dumps, not httpx's encoder: the payloads include NaN, which a hostile client can send."""
    body = json.dumps({"data": data, **({"event_data": event_data} if event_data is not None else {})})
    started = httpx.post(
        f"{url}gradio_api/call/{api_name}", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    if started.status_code in (400, 422) and api_name in VALIDATED:  # its validator refused the call up front
        detail = started.json()["detail"]
        if isinstance(detail, list):  # one sentence per refused input
            return "error", {"error": " ".join(check["message"] for check in detail if not check["is_valid"])}
        return "error", {"error": detail.strip("'")}
    assert started.status_code == 200, started.text
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=120) as reply:
        text = "".join(reply.iter_text())
    events = re.findall(r"event: (\w+)\ndata: (.*)", text)
    event, payload = events[-1]
    return event, json.loads(payload)


def upload(url: str, path: Path) -> dict[str, Any]:
    """A file sent through Gradio's own upload route, as the page does: the FileData to pass on."""
    with open(path, "rb") as handle:
        reply = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, handle)}, timeout=60)
    return {"path": reply.json()[0], "orig_name": path.name, "meta": FILE_META}


def inline(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}", "meta": FILE_META}


def png_bomb(side: int) -> bytes:
    """A valid black greyscale PNG of side x side pixels (about 0.4 MB at 12000), built row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(side + 1)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def hostile_payloads(url: str, secret: Path, inside_link: Path) -> list[dict[str, Any]]:
    """Ways to name a server file: absolute, relative, through a link inside the cache, as a route."""
    confusion = next(REPO.glob("checkpoints/*/confusion_matrix.png"), secret)
    paths = [
        "/etc/passwd",
        str(secret),
        str(confusion),
        os.path.relpath(secret),
        os.path.relpath(confusion),
        f"{inside_link.parent.parent}/{os.path.relpath(secret, inside_link.parent.parent)}",
        str(inside_link),
        f"file={secret}",
        f"/gradio_api/file={secret}",
        f"{url}gradio_api/file={secret}",
        "/",
        "/proc/self/environ",
    ]
    return [*({"path": p} for p in paths), {"url": f"file://{secret}"}, {"path": str(secret), "url": "x"}]


@pytest.mark.slow
def test_no_payload_makes_the_app_open_a_file_it_was_not_sent(server, tmp_path):
    """Paths without Gradio's "meta" skip its upload check: each image input refuses them itself,
    with one message, and nothing outside the upload cache is opened (an audit hook watches)."""
    global _OPENED
    url, demo = server
    secret = make_image(tmp_path / "private.png", (10, 200, 10))  # a real photo: would be classified
    cache = Path(demo.GRADIO_CACHE)
    link_dir = cache / f"test-link-{os.getpid()}"
    link_dir.mkdir(parents=True, exist_ok=True)
    inside_link = link_dir / "photo.png"
    inside_link.unlink(missing_ok=True)
    inside_link.symlink_to(secret)
    sys.addaudithook(_record_opens)  # cannot be removed: it records only while _OPENED is a list
    _OPENED = []
    try:
        answers = {
            (api, json.dumps(p)): call(url, api, shape(p))
            for p in hostile_payloads(url, secret, inside_link)
            for api, shape in IMAGE_ENDPOINTS.items()
        }
        opened = {os.path.realpath(p) for p in _OPENED}
    finally:
        _OPENED = None
        inside_link.unlink()
        link_dir.rmdir()
    wrong = {key: answer for key, answer in answers.items() if answer[0] != "error" or answer[1]["error"] != REFUSED}
    assert not wrong, list(wrong.items())[:3]
    assert not opened & {os.path.realpath(secret), "/etc/passwd"}
    assert not [p for p in opened if "confusion_matrix" in p]


def test_a_real_upload_and_an_inline_image_are_classified(server, tmp_path):
    url, _ = server
    photo = make_image(tmp_path / "red.png", (200, 30, 30), size=64)
    for payload in (upload(url, photo), inline(photo.read_bytes())):
        event, outputs = call(url, "classify", [payload, False])
        assert event == "complete" and outputs[1]["confidences"], outputs


def _peak_rss_kb() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from now


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_an_inline_pixel_bomb_is_refused_before_it_is_decoded(server):
    url, _ = server
    bomb = inline(png_bomb(12000))  # 144 megapixels in 0.4 MB
    call(url, "classify", [inline(png_bomb(64)), False])  # anything a first call loads, loaded
    _reset_peak_rss()  # the peak restarts from the current resident size
    before = _peak_rss_kb()
    event, answer = call(url, "classify", [bomb, False])
    grown_mb = (_peak_rss_kb() - before) / 1024
    assert event == "error" and "40,000,000" in answer["error"], answer
    assert grown_mb < 300, grown_mb  # decoded, it costs over 1 GB
    print(f"peak RSS +{grown_mb:.0f} MB")
    event, answer = call(url, "teach_add", ["dog", None, bomb])  # the Teach panel's webcam input
    assert event == "error" and "40,000,000" in answer["error"], answer


@pytest.mark.slow
def test_an_inline_image_over_50_mb_is_refused(server):
    """A valid 8x8 PNG padded past 50 MB with an ancillary chunk: the size, not the pixels, refuses it."""
    url, _ = server
    small = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(small, format="PNG")
    head, tail = small.getvalue()[:33], small.getvalue()[33:]  # after the IHDR chunk
    padding = b"\0" * (51 * 2**20)
    padded = (
        head
        + struct.pack(">I", len(padding))
        + b"zzPd"
        + padding
        + struct.pack(">I", zlib.crc32(b"zzPd" + padding))
        + tail
    )
    event, answer = call(url, "classify", [inline(padded), False])
    assert event == "error" and "larger than 50 MB" in answer["error"], answer


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("empty", "is an empty file"),
        ("text", "is not an image"),
        ("bomb", "40,000,000"),
        ("ico", "is not an image"),
    ],
)
def test_teach_classify_names_what_is_wrong_with_the_photo(server, tmp_path, kind, expected):
    url, _ = server
    path = tmp_path / ("photo.ico" if kind == "ico" else "photo.png")
    if kind == "ico":
        Image.new("RGB", (16, 16)).save(path, format="ICO")
    else:
        path.write_bytes({"empty": b"", "text": b"not a photo", "bomb": png_bomb(12000)}[kind])
    event, answer = call(url, "teach_classify", [upload(url, path)])
    assert event == "error" and expected in (answer["error"] or ""), answer


@pytest.mark.parametrize(
    "settings, expected",
    [
        ([float("nan"), 1e-3, 0], "Epochs must be a whole number from 1 to 20 on this server."),
        ([3, 1e-3, float("nan")], "Unfrozen backbone layers must be a whole number from 0 to 0 on this server."),
        ([3, float("inf"), 0], "The learning rate must be a number above 0 and at most 1"),
        ([999, 1e-3, 0], "Epochs must be a whole number from 1 to 20 on this server."),
        ([3, 5, 0], "The learning rate must be a number above 0 and at most 1"),
        ([3, 1e-3, -4], "Unfrozen backbone layers must be a whole number from 0 to 0"),
        (["three", "fast", 2.5], "Epochs must be a whole number from 1 to 20 on this server. The learning rate"),
    ],
)
def test_bad_finetune_numbers_get_a_message_and_no_traceback(server, capfd, settings, expected):
    event, answer = call(server[0], "finetune", settings)
    assert event == "error" and expected in (answer["error"] or ""), answer
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "event_data",
    [
        {"index": "abc", "value": None},
        {"index": [1.5, 2], "value": None},
        {"index": [0, "x"]},
        {"value": 3},
        None,
    ],
)
def test_a_bad_confusion_cell_index_gets_a_message(server, capfd, event_data):
    for kind in ("scratch", "transfer"):
        event, outputs = call(server[0], f"cell_photos_{kind}", [], event_data)
        assert (event, outputs[0]) == ("complete", "Click a cell of the table."), outputs
    assert "Traceback" not in capfd.readouterr().err


def test_error_texts_are_plain_text_not_html(server):
    event, answer = call(server[0], "use_model", ["no-such-model"])
    assert event == "error" and "this server's models" in answer["error"] and "&#x27;" not in answer["error"]


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PPM", "EPS"])
def test_only_the_formats_the_page_names_are_opened(tmp_path, fmt):
    """Named .png, as an upload may be: PIL would identify (and for EPS, run Ghostscript on) them."""
    from animalcls.core.errors import ImageError
    from animalcls.serving.inference import check_image_file, load_image

    path = tmp_path / "photo.png"
    if fmt == "EPS":
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto showpage\n%%EOF\n")
    else:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path, format=fmt)
    for read in (check_image_file, load_image):
        with pytest.raises(ImageError, match="photo.png is not an image"):
            read(path)


def test_a_camera_mpo_still_opens_as_jpeg(tmp_path):
    from animalcls.serving.inference import load_image

    path = tmp_path / "phone.jpg"
    frame = Image.new("RGB", (8, 8), (200, 30, 30))
    frame.save(path, format="MPO", save_all=True, append_images=[frame])
    assert load_image(path).size == (8, 8)
