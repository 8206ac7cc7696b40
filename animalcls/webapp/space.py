"""The app started as a Hugging Face Space starts it, for the checks that do so (tests/test_space.py,
benchmarks/bench_space_reliability.py, benchmarks/bench_startup.py): a free port, the Space's
environment, and the one wait until the page answers. Standard library only; imports no Gradio."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class AppNotServing(RuntimeError):
    """app.py exited, or did not answer in time."""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def space_environment(home: Path, port: int) -> dict[str, str]:
    """This process's environment as a Space would have it: none of the app's, Keras', Gradio's,
    the Hub's or Python's own settings, an empty HOME, Gradio on all interfaces at `port`, the Hub offline."""
    prefixes = ("ANIMALCLS_", "KERAS_", "GRADIO_", "HF_", "PYTHON")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    env.update(
        HOME=str(home),
        GRADIO_SERVER_NAME="0.0.0.0",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    return env


def wait_until_serving(
    url: str, process: subprocess.Popen | None = None, timeout: float | None = None, every: float = 0.05
) -> float:
    """Seconds until `url` answers, asked every `every` s; AppNotServing when `process` exits
    first or `timeout` s pass (None: no limit, for a benchmark that measures how long it takes)."""
    start = time.monotonic()
    while timeout is None or time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            raise AppNotServing(f"app.py exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.monotonic() - start
        except OSError:
            time.sleep(every)
    raise AppNotServing(f"{url} did not answer within {timeout} s")
