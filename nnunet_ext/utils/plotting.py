"""Figures that look the same whatever the process did to matplotlib before.

nnU-Net's trainer draws its progress plot with ``seaborn.set(font_scale=2.5)``, which changes matplotlib's
*global* settings for the rest of the process. A figure drawn after an in-process training (a benchmark, a
notebook) would then get 2.5x fonts, a grey background and labels that overflow the canvas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def default_style() -> Iterator[None]:
    """Draw with matplotlib's default settings inside the block (or the decorated function), then restore the
    caller's settings.

    >>> from nnunet_ext.utils.plotting import default_style
    >>> @default_style()
    ... def draw(): ...
    """
    import matplotlib.style

    with matplotlib.style.context("default"):
        yield
