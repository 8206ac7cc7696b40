"""animalcls: classify animal photos with a scratch and a transfer-learned CNN, side by side.

Importing the package loads no model and downloads nothing; it only sets quieter defaults
for TensorFlow's C++ logging (users can still override TF_CPP_MIN_LOG_LEVEL).
"""

from __future__ import annotations

import os

# Level 2 hides TensorFlow's INFO/WARNING chatter but keeps errors. oneDNN stays on:
# disabling it (TF_ENABLE_ONEDNN_OPTS=0) made training 1.7x slower on this CPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from animalcls.core.errors import AnimalclsError  # noqa: E402
from animalcls.core.labels import DEFAULT_CLASSES  # noqa: E402

__all__ = ["AnimalclsError", "DEFAULT_CLASSES", "__version__"]
