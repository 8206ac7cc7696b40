"""Where a checkpoint's ONNX serving graph lives and whether it still matches `model.keras`.

No TensorFlow, no onnxruntime: only files and hashes, so serving can check freshness cheaply.

Layout: `model.onnx` next to `model.keras`, plus the sidecar `model.onnx.json` holding the
sha256 of the `model.keras` it was converted from and of the graph itself. When the checkpoint
folder is not writable (an installed package, a read-only mount) a rebuilt graph goes to the
user cache `$ANIMALCLS_ONNX_CACHE` (default `~/.cache/animalcls/onnx`) as
`<keras-sha256>.onnx`, keyed by content so it cannot be confused between checkpoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animalcls.core.atomic import file_sha256, write_json
from animalcls.core.settings import ONNX_CACHE_ENV

ONNX_FILE = "model.onnx"
SIDECAR_SUFFIX = ".json"
SIDECAR_FILE = ONNX_FILE + SIDECAR_SUFFIX
FORMAT = "animalcls-onnx/1"
INPUT_NAME = "image"
OUTPUTS = ("probabilities", "pooled", "feature_map")


@dataclass(frozen=True)
class OnnxStatus:
    """The verdict on one candidate graph: `fresh` is True when it can be served as is;
    otherwise `reason` says why not (missing, stale, corrupt), fit for a user."""

    path: Path
    fresh: bool
    reason: str = ""


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + SIDECAR_SUFFIX)


def sidecar_for(keras_sha256: str, onnx_sha256: str, image_size: int, converter: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "keras_sha256": keras_sha256,
        "onnx_sha256": onnx_sha256,
        "input": {"name": INPUT_NAME, "shape": [None, image_size, image_size, 3], "dtype": "float32"},
        "outputs": list(OUTPUTS),
        "converter": converter,
    }


def write_sidecar(onnx_path: Path, sidecar: dict[str, Any]) -> None:
    write_json(sidecar_path(onnx_path), sidecar)


def default_cache_root() -> Path:
    return Path(os.environ.get(ONNX_CACHE_ENV) or Path.home() / ".cache" / "animalcls" / "onnx").expanduser()


def cache_path(keras_sha256: str, root: Path | None = None) -> Path:
    return (root or default_cache_root()) / f"{keras_sha256}.onnx"


def candidates(folder: Path, keras_sha256: str) -> list[Path]:
    """Where a graph for this checkpoint may be, in the order they are tried."""
    return [Path(folder) / ONNX_FILE, cache_path(keras_sha256)]


def check(onnx_path: Path, keras_sha256: str) -> OnnxStatus:
    """Whether `onnx_path` is a complete graph converted from the model with this hash."""
    sidecar_file = sidecar_path(onnx_path)
    if not onnx_path.is_file():
        return OnnxStatus(onnx_path, False, f"{onnx_path.name} is missing")
    try:
        sidecar = json.loads(sidecar_file.read_text())
    except (OSError, ValueError):
        return OnnxStatus(onnx_path, False, f"{sidecar_file.name} is missing or corrupt")
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        return OnnxStatus(onnx_path, False, f"{sidecar_file.name} is not an {FORMAT} sidecar")
    if sidecar.get("keras_sha256") != keras_sha256:
        return OnnxStatus(onnx_path, False, f"{onnx_path.name} was converted from another model.keras (stale)")
    if sidecar.get("onnx_sha256") != file_sha256(onnx_path):
        return OnnxStatus(onnx_path, False, f"{onnx_path.name} does not match its sidecar (corrupt or replaced)")
    return OnnxStatus(onnx_path, True)


def find_fresh(folder: Path, keras_sha256: str) -> tuple[Path | None, list[OnnxStatus]]:
    """The first fresh graph among the candidates, and the verdict on each one tried."""
    verdicts = []
    for path in candidates(folder, keras_sha256):
        status = check(path, keras_sha256)
        if status.fresh:
            return path, verdicts
        verdicts.append(status)
    return None, verdicts


def writable_target(folder: Path, keras_sha256: str) -> Path:
    """Where to write a rebuilt graph: the checkpoint folder if writable, else the cache."""
    folder = Path(folder)
    if os.access(folder, os.W_OK):
        return folder / ONNX_FILE
    return cache_path(keras_sha256)
