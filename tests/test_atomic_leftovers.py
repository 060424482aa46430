"""atomic_directory after a kill: leftovers of dead writers go, those of live writers stay, an interrupted
replace is rolled back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext.utils.atomic import atomic_directory, remove_leftovers

WRITER = """
import sys, time
from nnunet_ext.utils.atomic import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    (tmp / "half.txt").write_text("half")
    print("inside", flush=True)
    time.sleep(600)
"""


def start_writer(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_leftovers_of_a_live_writer_are_kept_and_removed_once_it_is_killed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    proc = start_writer(target)
    try:
        siblings = sorted(p.name for p in tmp_path.iterdir())
        assert len(siblings) == 2 and siblings[0].endswith(".lock") and siblings[1].endswith(".tmp")
        assert remove_leftovers(target) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    finally:
        kill(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # SIGKILL: nothing cleaned up by the writer
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["done.txt"]


def test_a_replace_interrupted_between_its_two_renames_is_rolled_back(tmp_path: Path) -> None:
    target = tmp_path / "out"
    stem = tmp_path / ".out.x1y2z3w4"
    Path(f"{stem}.old").mkdir()           # the previous version, moved aside
    (Path(f"{stem}.old") / "v1").write_text("1")
    Path(f"{stem}.tmp").mkdir()           # the new version, not yet moved in
    Path(f"{stem}.lock").touch()          # its writer died: nobody holds the lock
    removed = remove_leftovers(target)
    assert Path(f"{stem}.old") in removed and Path(f"{stem}.tmp") in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["v1"]


def test_unattributable_leftovers_are_refused_and_similar_names_ignored(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (tmp_path / ".out.v2.abc.tmp").mkdir()     # another target's temporaries (".out.v2")
    (tmp_path / ".out.q9w8e7r6.tmp").touch()   # a file, as atomic_path leaves: not a folder leftover
    assert remove_leftovers(target) == []
    (tmp_path / ".out.old").mkdir()            # versions without locks named the moved-aside folder so
    with pytest.raises(FileExistsError, match=r"delete them: rm -rf '.*\.out\.old'"):
        with atomic_directory(target):
            pass
