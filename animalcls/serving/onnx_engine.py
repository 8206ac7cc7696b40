"""Serve a checkpoint through ONNX Runtime, without TensorFlow or Keras.

    engine = load_engine("checkpoints/transfer-efficientnet_lite0")
    out = engine.run(batch)                 # batch: (N, S, S, 3) float32 raw RGB 0-255
    out["probabilities"]  # (N, C) softmax, class order engine.class_names
    out["pooled"]         # (N, D) pooled backbone features (models.POOL_LAYER)
    out["feature_map"]    # (N, h, w, D) the backbone's last feature map
    engine.probabilities(batch)             # only the (N, C) array

All three come from one forward pass. Importing this module imports neither TensorFlow nor
Keras (nor onnxruntime: that happens in `load_engine`). Only when a checkpoint has no fresh
graph and `build=True` is the graph converted, which imports TensorFlow once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from animalcls.core.errors import AnimalclsError, CheckpointError
from animalcls.core.settings import ORT_THREADS_ENV
from animalcls.store import onnx_store
from animalcls.store.checkpoints import ManifestFacts

if TYPE_CHECKING:
    from animalcls.serving.forward import Forward

log = logging.getLogger(__name__)


class OnnxUnavailableError(AnimalclsError, RuntimeError):
    """No usable ONNX graph for a checkpoint and none could be built here."""


def onnxruntime_available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def default_threads() -> int:
    """Intra-op threads: $ANIMALCLS_ORT_THREADS, else every core the process may use (max 8:
    small convnets at batch 1 gain nothing beyond that)."""
    configured = os.environ.get(ORT_THREADS_ENV, "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


@dataclass
class OnnxEngine(ManifestFacts):
    """An onnxruntime session over one checkpoint's serving graph; `run` is thread-safe."""

    path: Path
    manifest: dict[str, Any]
    session: Any = field(repr=False)

    def run(self, batch: np.ndarray, outputs: Sequence[str] = onnx_store.OUTPUTS) -> dict[str, np.ndarray]:
        """Named outputs for a (N, S, S, 3) batch of raw RGB 0-255 (any numeric dtype)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"Expected a batch of shape (N, {size}, {size}, 3), got {batch.shape}.")
        arrays = self.session.run(list(outputs), {onnx_store.INPUT_NAME: batch})
        return dict(zip(outputs, arrays))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, ("probabilities",))["probabilities"]


def make_session(onnx_path: Path | bytes) -> Any:
    """A CPU onnxruntime session (of a file or a serialised graph) with full graph optimisation:
    on the process's shared thread pool after `share_thread_pool()`, else on a pool of its own
    whose idle threads sleep."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.use_per_session_threads = not _pool_shared
    if options.use_per_session_threads:  # sizes are the shared pool's otherwise (ORT warns if set)
        options.intra_op_num_threads = default_threads()
        options.inter_op_num_threads = 1
        # Idle threads sleep: with two sessions of their own pools run one after the other,
        # spinning threads of one starve the other's on 2 cores (benchmarks/bench_thread_pools.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own choices
    try:
        graph = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
        return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        what = "a serialised graph" if isinstance(onnx_path, bytes) else onnx_path
        raise CheckpointError(f"onnxruntime could not load {what}: {exc}") from None


_pool_lock = threading.Lock()
_pool_shared = False


def share_thread_pool() -> bool:
    """From now on, every session `make_session` makes shares one process-wide thread pool,
    sized by `default_threads()`, whose idle threads spin; True when onnxruntime is installed and
    allowed it.

    For a program that owns its process, called before any session exists (the app calls it
    before its warm-up thread starts): both models on one photo took 8.1 ms with one shared
    pool against 10.2 ms with a pool each (benchmarks/bench_thread_pools.py). It changes
    onnxruntime for the whole process: any other session made in it afterwards needs
    `use_per_session_threads = False` (`make_session` sets it).
    """
    global _pool_shared
    with _pool_lock:
        if not _pool_shared:
            try:
                import onnxruntime as ort

                ort.set_global_thread_pool_sizes(default_threads(), 1)
                _pool_shared = True
            except (ImportError, AttributeError, RuntimeError):  # no onnxruntime, one without the call, or too late
                return False
        return True


def load_engine(folder: str | Path, build: bool = True) -> OnnxEngine:
    """An engine for the checkpoint in `folder`, using its fresh ONNX graph.

    A missing, stale or corrupt graph is rebuilt from `model.keras` when `build` is True and
    TensorFlow and tf2onnx are installed; otherwise OnnxUnavailableError says why.
    """
    from animalcls.store.checkpoints import MODEL_FILE, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    keras_file = folder / MODEL_FILE
    if not keras_file.is_file():
        raise CheckpointError(f"Missing {MODEL_FILE} in {folder}")
    keras_sha = onnx_store.file_sha256(keras_file)
    path, verdicts = onnx_store.find_fresh(folder, keras_sha)
    if path is None:
        path = _rebuild(folder, keras_sha, verdicts, build)
    session = make_session(path)
    engine = OnnxEngine(path, manifest, session)
    _check_io(engine)
    return engine


def onnx_forward(folder: str | Path) -> Forward | None:
    """A `forward.Forward` through the checkpoint's fresh ONNX graph, or None when onnxruntime
    or a fresh graph is missing (the caller then runs Keras). Never converts: that takes seconds."""
    from animalcls.serving.forward import Forward

    if not onnxruntime_available():
        return None
    try:
        engine = load_engine(folder, build=False)
    except Exception:  # noqa: BLE001 - no engine, no graph or a stale one: Keras runs instead
        return None
    return Forward(engine.image_size, engine=engine)


def _rebuild(folder: Path, keras_sha: str, verdicts: list[onnx_store.OnnxStatus], build: bool) -> Path:
    why = f"{folder}: {verdicts[0].reason}" if verdicts else f"{folder}: no ONNX graph"
    if not build:
        raise OnnxUnavailableError(f"{why}.")
    if not conversion_available():
        raise OnnxUnavailableError(
            f"{why}, and it cannot be rebuilt here: converting needs tensorflow and tf2onnx. "
            f"Run `python -m animalcls.serving.convert_onnx {folder}` where they are installed."
        )
    from animalcls.serving.convert_onnx import write_onnx

    log.info("building the ONNX graph for %s once (%s)...", folder.name, verdicts[0].reason)
    return write_onnx(folder, target=onnx_store.writable_target(folder, keras_sha))


def conversion_available() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorflow") is not None and find_spec("tf2onnx") is not None


def _check_io(engine: OnnxEngine) -> None:
    """The graph must take (N, S, S, 3), give the three outputs, and as many classes as the manifest."""
    outputs = {output.name: output.shape for output in engine.session.get_outputs()}
    shape = engine.session.get_inputs()[0].shape
    fits = set(onnx_store.OUTPUTS) <= set(outputs) and list(shape[1:]) == [engine.image_size, engine.image_size, 3]
    if not fits or outputs["probabilities"][-1] != len(engine.class_names):
        raise CheckpointError(f"{engine.path} does not fit its checkpoint (input {shape}, outputs {outputs}).")
