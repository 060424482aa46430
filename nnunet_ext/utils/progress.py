"""Progress of long commands, readable on a terminal and in a log file.

``rich`` draws a progress bar only on a terminal; redirected to a file (CI, a batch job,
``nnext demo > demo.log 2>&1``) it draws nothing until the end, so a 40-minute run looks dead.
:class:`StepProgress` shows a rich bar on a terminal and otherwise prints one flushed plain line per step,
with the wall-clock time and the time elapsed since the start::

    [12:04 +0:42] demo 3/8: nnUNetv2_train -tr nnUNetTrainerCPU_demo

Progress goes to standard error, so standard output keeps only a command's results (tables, paths).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO


def format_elapsed(seconds: float) -> str:
    """``M:SS`` below an hour, ``H:MM:SS`` above.

    >>> format_elapsed(42), format_elapsed(3725)
    ('0:42', '1:02:05')
    """
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StepProgress:
    """Context manager reporting the steps of a long command.

    On a terminal it shows a rich progress bar (steps done out of ``total``, elapsed time); otherwise each
    :meth:`step` and :meth:`note` prints one flushed plain line ``[HH:MM +elapsed] title n/total: message``.
    When the block ends, a last plain line says how long it took, or at which step it stopped.

    Args:
        title: short name of the command (``"demo"``, ``"convert cc359"``).
        total: number of steps, if known; may be set later through :attr:`total`.
        stream: where to write (default ``sys.stderr``); whether it is a terminal decides the form.

    >>> import io
    >>> out = io.StringIO()
    >>> with StepProgress("demo", total=2, stream=out) as progress:
    ...     progress.step("building data")
    ...     progress.note("reusing nnext_demo/nnUNet_raw")
    ...     progress.step("training")
    >>> for line in out.getvalue().splitlines():
    ...     print(line.split("] ", 1)[1])  # after "[HH:MM +M:SS] "
    demo 1/2: building data
    demo: reusing nnext_demo/nnUNet_raw
    demo 2/2: training
    demo: done, 2 steps in 0:00
    """

    def __init__(self, title: str, total: int | None = None, *, stream: TextIO | None = None) -> None:
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"total must be a non-negative integer or None, got {total!r}")
        self.title = title
        self._total = total
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    @property
    def total(self) -> int | None:
        """Number of steps (None when unknown)."""
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        if self._bar is not None:
            self._bar.update(self._task, total=value)

    @property
    def is_terminal(self) -> bool:
        """Whether :attr:`stream` is a terminal (then a rich bar is drawn)."""
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __enter__(self) -> StepProgress:
        self._start = time.monotonic()
        if self.is_terminal:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                 console=Console(file=self.stream))
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=self._total)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        elapsed = format_elapsed(time.monotonic() - self._start)
        if self._bar is not None:
            if exc_type is None:
                self._bar.update(self._task, completed=self.done)
            self._bar.stop()
            self._bar = None
            return
        where = f"{self.done}/{self._total}" if self._total is not None else str(self.done)
        if exc_type is None:
            self._print(f"{self.title}: done, {self.done} step{'s' if self.done != 1 else ''} in {elapsed}")
        else:
            self._print(f"{self.title}: stopped at step {where} after {elapsed} ({exc_type.__name__})")

    def step(self, message: str) -> None:
        """Start the next step: advance the count by one and show ``message``."""
        self.done += 1
        count = f"{self.done}/{self._total}" if self._total is not None else str(self.done)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=f"{self.title}: {message}")
        else:
            self._print(f"{self.title} {count}: {message}")

    def note(self, message: str) -> None:
        """Show ``message`` without advancing (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(f"{self.title}: {message}", markup=False, highlight=False)
        else:
            self._print(f"{self.title}: {message}")

    def _print(self, text: str) -> None:
        clock = time.strftime("%H:%M")
        print(f"[{clock} +{format_elapsed(time.monotonic() - self._start)}] {text}", file=self.stream, flush=True)
