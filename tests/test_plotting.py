"""Our figures keep matplotlib's default look after nnU-Net's trainer has restyled matplotlib globally."""

import matplotlib
import pytest
from matplotlib.figure import Figure

from nnunet_ext.evaluation.continual import curves_png
from nnunet_ext.utils.plotting import default_style


@pytest.fixture
def nnunet_progress_plot_style():
    seaborn = pytest.importorskip("seaborn")  # an nnunetv2 dependency
    with matplotlib.rc_context():
        seaborn.set(font_scale=2.5)  # what nnU-Net's logger does when it draws progress.png
        yield matplotlib.rcParams["font.size"]


def test_figures_are_drawn_in_the_default_style_and_the_callers_style_is_restored(nnunet_progress_plot_style,
                                                                                 monkeypatch):
    seen = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (seen.append(
        (matplotlib.rcParams["font.size"], matplotlib.rcParams["axes.facecolor"])), original(self, *a, **k))[1])
    png = curves_png({"Seq": {"R": [[0.9, 0.5], [0.8, 0.9]]}})
    assert png.startswith(b"\x89PNG")
    assert seen == [(10.0, "white")]
    assert nnunet_progress_plot_style > 20 and matplotlib.rcParams["font.size"] == nnunet_progress_plot_style


def test_default_style_as_decorator_restores_on_error(nnunet_progress_plot_style):
    @default_style()
    def fails():
        assert matplotlib.rcParams["font.size"] == 10.0
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        fails()
    assert matplotlib.rcParams["font.size"] == nnunet_progress_plot_style
