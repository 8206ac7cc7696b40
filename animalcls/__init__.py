"""animalcls: classify animal photos with a scratch and a transfer-learned CNN, side by side.

The public API, imported lazily (`import animalcls` loads no model, imports no TensorFlow and
downloads nothing; the first use of a name imports its module):

    import animalcls
    folder = animalcls.default_pair()["transfer"]            # the bundled transfer model's folder
    predictor = animalcls.load_predictor(folder)
    animalcls.predict("photo.jpg", predictor)                # [{"cat": 0.97, ...}]
    judge = animalcls.judge_for(folder)                      # + "none of the five" and Grad-CAM

Subpackages by job: core, data, models, store, training, heads, serving, trust, cli, webapp
(docs/development.md). Importing the package only sets a quieter default for TensorFlow's C++
logging (users can still override TF_CPP_MIN_LOG_LEVEL).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Level 2 hides TensorFlow's INFO/WARNING chatter but keeps errors. oneDNN stays on: turning it
# off made training slower on these CPUs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from animalcls.core.errors import AnimalclsError  # noqa: E402
from animalcls.core.labels import DEFAULT_CLASSES  # noqa: E402

# name -> module that defines it
_LAZY = {
    "load_predictor": "animalcls.serving.inference",
    "predict": "animalcls.serving.inference",
    "Predictor": "animalcls.serving.inference",
    "load_checkpoint": "animalcls.store.checkpoints",
    "default_pair": "animalcls.store.checkpoints",
    "judge_for": "animalcls.trust.verdicts",
    "explain": "animalcls.trust.explain",
    "train_checkpoint": "animalcls.training.workflows",
    "evaluate_checkpoint": "animalcls.training.workflows",
    "TrainConfig": "animalcls.training.train",
    "PRESETS": "animalcls.training.train",
    "finetune": "animalcls.heads.finetune",
}

__all__ = ["AnimalclsError", "DEFAULT_CLASSES", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'animalcls' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
