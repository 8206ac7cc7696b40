"""The app's input components: gr.Image that reads only files inside Gradio's upload cache, and
gr.Number that answers a bad value with a message.

Why subclasses with their own `preprocess`: Gradio checks that a file "was uploaded by a user"
only when the payload carries `"meta": {"_type": "gradio.FileData"}`; a raw `{"path": "/etc/passwd"}`
reaches gr.Image's `preprocess` unchecked (its ImageData, unlike gr.File's FileData, does not insist
on "meta"), and a plain gr.Image then opens it. A subclass also survives Gradio rebuilding a
component for one session after a gr.update (`block.__class__(**kwargs)`), which a method patched
on an instance does not. `is_template` makes the page draw them with the parent's widget. Gradio
writes a .pyi stub of this module (git ignores it). No extra constructor arguments: Gradio would
put them in the page's config.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import ImageData

from animalcls.core.errors import ImageError
from animalcls.serving.inference import MAX_FILE_BYTES, check_image_file
from animalcls.webapp.views import public

# The one answer for any file the app did not receive: it says nothing about what is on disk.
REFUSED = "That file was not uploaded to this app: upload the photo itself (or send it inline as a data: URL)."
SUPPORTED = "supported: JPEG, PNG, GIF, BMP, WebP, TIFF"
# The longest base64 text that can decode to MAX_FILE_BYTES: refused before decoding anything.
MAX_BASE64_CHARS = 4 * math.ceil(MAX_FILE_BYTES / 3)
_SUFFIXES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/tiff": ".tiff",
}


class UnusableUpload(str):
    """What the photo input passes on, instead of a path, for an upload it cannot open: the
    reason. Raising in preprocessing would mark every output with a red "Error" badge and
    leave a broken image in the input; the handlers show the reason once and clear instead."""


def user_error(message: str, title: str) -> gr.Error:
    """The one way the app refuses a request: a toast titled in plain words (never just "Error"),
    whose text names no server path and no environment variable. Plain text, not HTML-escaped:
    API clients read it as is (the page's toast sanitises what it shows)."""
    return gr.Error(public(message), title=title, print_exception=False)


def refused() -> gr.Error:
    return user_error(REFUSED, "Not an upload")


def uploaded_file(path: str | None, cache: str) -> str:
    """`path` resolved, when it names a regular file inside Gradio's upload folder `cache`;
    else gr.Error(REFUSED). Judged on the text first, so a foreign path is never even looked
    at; then on the resolved path, so a symbolic link cannot lead out of the cache."""
    if not path or "\x00" in path:
        raise refused()
    if not _inside(os.path.abspath(path), os.path.abspath(cache)):
        raise refused()
    resolved = os.path.realpath(path)
    if not _inside(resolved, os.path.realpath(cache)) or not os.path.isfile(resolved):
        raise refused()
    return resolved


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


def save_data_url(url: str, cache: str) -> str:
    """An inline `data:image/...;base64,...` image written, still encoded as sent, to a new file
    in the upload cache. Over MAX_FILE_BYTES is refused from its length, before decoding; the
    pixels are never decoded here (Gradio's own preprocessing decodes and re-saves them)."""
    head, _, body = url.partition(",")
    if not head.lower().endswith(";base64"):
        raise ImageError(f"An inline image must be base64 data ({SUPPORTED}).")
    if len(body) > MAX_BASE64_CHARS:
        raise ImageError(f"The image is larger than {MAX_FILE_BYTES // 2**20} MB; use a smaller image.")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"The inline image is not valid base64 data ({SUPPORTED}).") from None
    os.makedirs(cache, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="inline-", dir=cache)  # a new folder: no two requests share a file
    path = Path(folder) / ("inline-image" + _SUFFIXES.get(head[5:-7].lower(), ""))
    path.write_bytes(data)
    return str(path)


class UploadedImage(gr.Image):
    """gr.Image (type="filepath") that reads only uploads: a path outside Gradio's upload cache
    is refused with REFUSED; an inline data: URL is kept as sent, not decoded; an upload whose
    size or header is unusable comes out as UnusableUpload (the reason), decoding nothing."""

    is_template = True

    def preprocess(self, payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        try:
            if payload.url and payload.url.startswith("data:"):
                path = save_data_url(payload.url, self.GRADIO_CACHE)
            else:
                path = uploaded_file(payload.path, self.GRADIO_CACHE)
            check_image_file(path)
        except ImageError as exc:
            return UnusableUpload(str(exc))
        return path


class CheckedNumber(gr.Number):
    """gr.Number that hands its event any payload: a finite number rounded to its precision, in
    range or not, and anything else (text, NaN, infinity: only API callers send those) unchanged.
    The event's validator judges them all, so a visitor reads one sentence by the field and an API
    caller the same sentences: Gradio's own range error prints a traceback and its NaN error no
    message, and an error raised here would reach the page titled just "Error", before the validator."""

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        finite = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
        return self.round_to_precision(payload, self.precision) if finite else payload


def checked_examples(examples: gr.Examples) -> gr.Examples:
    """An example gallery whose load endpoint answers an index it does not have with a message."""
    dataset = examples.dataset
    original = dataset.preprocess

    def preprocess(payload: Any) -> Any:
        count = len(dataset.raw_samples)
        if payload is not None and (type(payload) is not int or not 0 <= payload < count):
            raise gr.Error(
                f"No example {str(payload)[:40]!r}: choose a whole number from 0 to {count - 1}.",
                title="No such example",
                print_exception=False,
            )
        return original(payload)

    dataset.preprocess = preprocess  # type: ignore[method-assign]
    return examples
