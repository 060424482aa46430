"""StepProgress: plain flushed lines with elapsed time when not on a terminal (tested through a pipe), a rich
bar on one."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from nnunet_ext.utils.progress import StepProgress, format_elapsed

LINE = re.compile(r"^\[\d\d:\d\d \+\d+:\d\d\] (?P<text>.*)$")


def texts(output: str) -> list[str]:
    lines = output.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    return [LINE.match(line)["text"] for line in lines]


def test_plain_lines_count_steps_notes_and_the_end() -> None:
    out = io.StringIO()
    with StepProgress("convert cc359", stream=out) as progress:
        progress.note("checking the inputs")
        progress.total = 2
        progress.step("writing CC0001")
        progress.step("writing CC0002")
    assert texts(out.getvalue()) == ["convert cc359: checking the inputs", "convert cc359 1/2: writing CC0001",
                                     "convert cc359 2/2: writing CC0002", "convert cc359: done, 2 steps in 0:00"]
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with StepProgress("demo", stream=out) as progress:
            progress.step("training")
            raise RuntimeError("nnUNetv2_train failed")
    assert texts(out.getvalue()) == ["demo 1: training", "demo: stopped at step 1 after 0:00 (RuntimeError)"]


def test_elapsed_format_and_bad_total() -> None:
    assert [format_elapsed(s) for s in (0, 59.9, 61, 3600, 36000 + 61)] == ["0:00", "0:59", "1:01", "1:00:00",
                                                                             "10:01:01"]
    with pytest.raises(ValueError, match="total must be a non-negative integer or None, got -1"):
        StepProgress("demo", total=-1)


CHILD = """
import sys
from nnunet_ext.utils.progress import StepProgress
with StepProgress("demo", total=2) as progress:
    progress.step("building data")
    sys.stdin.readline()          # the parent reads the line above before letting the child go on
    progress.step("training nnUNetTrainerCPU_demo")
print("result table")
"""


def test_lines_arrive_through_a_pipe_while_the_command_runs() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()       # blocks until the child flushed it: the child is still running
        assert proc.poll() is None
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    assert texts(first) == ["demo 1/2: building data"]
    assert texts(err)[0] == "demo 2/2: training nnUNetTrainerCPU_demo"
    assert re.fullmatch(r"demo: done, 2 steps in \d+:\d\d", texts(err)[1])
    assert out == "result table\n"  # progress never mixes into the results on stdout


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_rich_bar_not_plain_lines() -> None:
    out = FakeTerminal()
    with StepProgress("demo", total=2, stream=out) as progress:
        assert progress.is_terminal
        progress.step("building data")
        progress.note("reusing nnext_demo")
        progress.step("training")
    text = out.getvalue()
    assert "demo: reusing nnext_demo" in text and "2/2" in text
    assert not any(LINE.match(line) for line in text.splitlines())
