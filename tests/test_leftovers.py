"""Crash leftovers under the checkpoint and fine-tune roots are removed at startup, never a
folder a live process is still writing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from animalcls.atomic import OWNER_LOCK, clean_leftovers, owner_lock

HOLD_LOCK = """
import sys, time
from animalcls.atomic import owner_lock
with owner_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _old(path: Path) -> Path:
    past = time.time() - 3600
    for p in [path, *path.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)
    return path


def test_crash_leftovers_are_removed_live_ones_kept(tmp_path):
    root = tmp_path / "finetunes"
    keep = root / "transfer-ft-1"
    keep.mkdir(parents=True)
    (keep / "manifest.json").write_text("{}")
    crashed_tmp = root / ".transfer-ft-2.tmp-abc"  # atomic_dir of a crashed save
    crashed_tmp.mkdir()
    (crashed_tmp / "model.keras").write_bytes(b"x")
    _old(crashed_tmp)
    fresh_tmp = root / ".transfer-ft-3.tmp-def"  # being written right now, no lock
    fresh_tmp.mkdir()
    dead_work = root / ".transfer-ft-4.work"  # a killed run: its lock file is free
    with owner_lock(dead_work):
        pass
    live_work = root / ".transfer-ft-5.work"
    live_work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(live_work)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        _old(live_work)  # even when nothing changed for an hour, a held lock keeps it
        removed = clean_leftovers([root, tmp_path / "absent"])
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == [".transfer-ft-2.tmp-abc", ".transfer-ft-4.work"]
    assert keep.is_dir() and fresh_tmp.is_dir() and (live_work / OWNER_LOCK).is_file()
    assert clean_leftovers([root]) == [".transfer-ft-5.work"]  # its owner is gone now
