"""The stderr filter: TensorFlow's known start-up noise is dropped, everything else gets through."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import os, sys
from animalcls.core.logs import filter_stderr, restore_stderr
filter_stderr()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 oneDNN custom operations are on. You may see slightly different numerical results\n")
os.write(2, b"a real warning from C++\n")
print("a Python error message", file=sys.stderr, flush=True)
os.write(2, b"E0000 00:00:1700000000.0 cuda_dnn.cc:8310] Unable to register cuDNN factory\n")
os.write(2, b"last line without a newline")
restore_stderr()
print("after restore", file=sys.stderr, flush=True)
"""


def test_noise_is_dropped_and_everything_else_kept_in_order():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0
    assert run.stderr == ("a real warning from C++\na Python error message\nlast line without a newlineafter restore\n")


def test_is_noise_matches_only_the_known_lines():
    from animalcls.core.logs import is_noise

    assert is_noise("To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow")
    assert not is_noise("error: Checkpoint folder not found: x")
    assert not is_noise("Traceback (most recent call last):")
