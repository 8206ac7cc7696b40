"""Atomic folders and crash leftovers: a folder whose writer was killed is cleaned by the next
write of the same target; a folder that a live process is writing is never touched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from animalcls.core import atomic

# Opens a temp folder and a work folder for TARGET with the library's own code, says so, then waits to be killed.
WRITER = """
import sys, time
from pathlib import Path
from animalcls.core import atomic
target = Path(sys.argv[1])
with atomic.work_dir(target), atomic.atomic_dir(target):
    print("writing", flush=True)
    time.sleep(600)
"""


def _writer(target: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout.readline().strip() == "writing"
    return process


def _leftover_names(target: Path) -> list[str]:
    return sorted(
        p.name.split(".tmp-")[0] + (".tmp-*" if ".tmp-" in p.name else "") for p in atomic.leftovers_of(target)
    )


def test_a_killed_writers_folders_are_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "ck"
    process = _writer(target)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _leftover_names(target) == [".ck.tmp-*", ".ck.work"]  # what a kill -9 leaves
    with atomic.atomic_dir(target) as tmp:
        (tmp / "model.keras").write_text("x")
    assert atomic.leftovers_of(target) == []
    assert sorted(p.name for p in target.iterdir()) == ["model.keras"]  # no owner file in the result


def test_a_live_writers_folders_are_kept(tmp_path):
    target = tmp_path / "ck"
    process = _writer(target)
    try:
        assert atomic.remove_stale_leftovers(target) == []
        with atomic.atomic_dir(tmp_path / "other"):
            pass
        with pytest.raises(FileExistsError, match=f"pid {process.pid}"):
            with atomic.work_dir(target):
                pass
        assert _leftover_names(target) == [".ck.tmp-*", ".ck.work"]
    finally:
        process.kill()
        process.wait()


def test_planted_leftovers_dead_pid_unowned_and_other_targets(tmp_path):
    target = tmp_path / "ck"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    folders = {
        "dead": tmp_path / ".ck.tmp-dead",
        "mine": tmp_path / ".ck.tmp-mine",
        "remote": tmp_path / ".ck.work",
        "old-unowned": tmp_path / ".ck.tmp-old",
        "new-unowned": tmp_path / ".ck.tmp-new",
        "swap": tmp_path / f".ck.old-{dead_pid}",
        "other-target": tmp_path / ".ck2.tmp-dead",
    }
    for folder in folders.values():
        folder.mkdir()
    for name, owner in (
        ("dead", f"{dead_pid} {host}"),
        ("mine", f"{os.getpid()} {host}"),
        ("remote", f"{dead_pid} some-other-host"),
        ("other-target", f"{dead_pid} {host}"),
    ):
        (folders[name] / atomic.OWNER_FILE).write_text(owner)
    hours_ago = time.time() - 2 * atomic.UNOWNED_GRACE_S
    os.utime(folders["old-unowned"], (hours_ago, hours_ago))
    removed = {p.name for p in atomic.remove_stale_leftovers(target)}
    assert removed == {folders[n].name for n in ("dead", "old-unowned", "swap")}
    assert all(folders[n].is_dir() for n in ("mine", "remote", "new-unowned", "other-target"))
