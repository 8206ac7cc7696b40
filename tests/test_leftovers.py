"""Crash leftovers under the checkpoint and fine-tune roots are removed at startup, never a
folder a live process is still writing (the owner file of animalcls.core.atomic tells them apart)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from animalcls.core.atomic import OWNER_FILE, UNOWNED_GRACE_S, clean_leftovers, work_dir

HOLD_WORK = """
import sys, time
from pathlib import Path
from animalcls.core.atomic import work_dir
with work_dir(Path(sys.argv[1])):
    print("working", flush=True)
    time.sleep(60)
"""


def _old(path: Path) -> Path:
    past = time.time() - 2 * UNOWNED_GRACE_S
    for p in [path, *path.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)
    return path


def test_crash_leftovers_are_removed_live_ones_kept(tmp_path):
    root = tmp_path / "finetunes"
    keep = root / "transfer-ft-1"
    keep.mkdir(parents=True)
    (keep / "manifest.json").write_text("{}")
    crashed_tmp = root / ".transfer-ft-2.tmp-abc"  # atomic_dir of a crashed save, no owner file
    crashed_tmp.mkdir()
    (crashed_tmp / "model.keras").write_bytes(b"x")
    _old(crashed_tmp)
    fresh_tmp = root / ".transfer-ft-3.tmp-def"  # being written right now, owner file not yet there
    fresh_tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_work = root / ".transfer-ft-4.work"  # a killed run: its owner process is gone
    dead_work.mkdir()
    (dead_work / OWNER_FILE).write_text(f"{int(dead.stdout)} {socket.gethostname()}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WORK, str(root / "transfer-ft-5")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    live_work = root / ".transfer-ft-5.work"
    try:
        assert holder.stdout.readline().strip() == "working"
        _old(live_work)  # even when nothing changed for hours, a live owner keeps it
        removed = clean_leftovers([root, tmp_path / "absent"])
    finally:
        holder.kill()
        holder.wait()
    assert removed == [".transfer-ft-2.tmp-abc", ".transfer-ft-4.work"]
    assert keep.is_dir() and fresh_tmp.is_dir() and (live_work / OWNER_FILE).is_file()
    assert clean_leftovers([root]) == [".transfer-ft-5.work"]  # its owner is gone now
    with work_dir(root / "transfer-ft-6"):
        assert clean_leftovers([root]) == []  # this process's own work folder is alive
