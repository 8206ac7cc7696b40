"""Memory per request is bounded: a 6320 x 6320 PNG (128 KB on disk, 120 MB as 8-bit RGB) is
shrunk before any float conversion, so classifying it costs well under 300 MB extra."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image

# Runs in a fresh process: loads the bundled models, classifies a small photo (loading and
# tracing), resets the kernel's peak-RSS counter (/proc/self/clear_refs "5"), classifies the
# big PNG and reports the peak (VmHWM) above the RSS just before it.
MEASURE = """
import json, sys
from animalcls.webapp.handlers import AnimalApp

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

app = AnimalApp(use_hub=False, finetune_root=sys.argv[4], examples_dir=sys.argv[4])
app.classify_tab.classify(sys.argv[2])
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
answer = app.classify_tab.classify(sys.argv[3])
print(json.dumps({"before_mb": before, "peak_mb": status("VmHWM"), "top": max(answer[3], key=answer[3].get)}))
"""


@pytest.mark.slow
def test_a_huge_solid_png_costs_under_300_mb(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (200, 150), (200, 40, 40)).save(small)
    Image.new("RGB", (6320, 6320), (200, 40, 40)).save(big)
    assert big.stat().st_size < 300_000
    env = {
        "KERAS_HOME": str(tmp_path / "keras"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "Agg",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(REPO), str(small), str(big), str(tmp_path / "ft")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(measured)
    assert measured["peak_mb"] - measured["before_mb"] < 300, measured
