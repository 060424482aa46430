"""The paper's Fig. 2 (Sheikh et al., DART 2022): per-layer weight-update magnitude, one panel per run.

Reads the ``layer_speed.json`` files that :class:`nnunet_ext.trainers.avagrad.LayerSpeedMixin` writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nnunet_ext.utils.atomic import atomic_path
from nnunet_ext.utils.plotting import default_style

FILENAME = "layer_speed.json"
GROUP_COLOURS = {"context": "C0", "transpose": "C1", "localization": "C2", "segmentation": "C3"}


def find_layer_speed(folder: str | os.PathLike) -> Path:
    """``folder/layer_speed.json``, or the single one below it (a trainer folder with one fold).

    Raises:
        FileNotFoundError: none or several found (names the folder and the fix).
    """
    folder = Path(folder)
    if (folder / FILENAME).is_file():
        return folder / FILENAME
    found = sorted(folder.glob(f"**/{FILENAME}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"no {FILENAME} in {folder}. Train with a *_layerspeed trainer (e.g. -tr nnUNetTrainerAvaGrad_layerspeed)"
            " or a trainer that mixes in LayerSpeedMixin")
    raise FileNotFoundError(f"several {FILENAME} below {folder}: pass one fold folder, e.g. {found[0].parent}")


def spread(record: dict[str, Any]) -> float:
    """Ratio of the fastest to the slowest layer's mean update over all epochs (1 = uniform speed)."""
    means = [sum(v) / len(v) for v in record["updates"].values() if v]
    positive = [m for m in means if m > 0]
    return max(positive) / min(positive) if positive else math.nan


@default_style()
def plot_layer_speed(folders: list[str | os.PathLike], output: str | os.PathLike,
                     labels: list[str] | None = None) -> dict[str, float]:
    """Draw one panel per run (log scale, a line per layer coloured by group); return the spread per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    paths = [find_layer_speed(f) for f in folders]
    records = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    labels = labels or [f"{r.get('optimizer', '?')}: {p.parent.parent.name.split('__')[0]}" for r, p in
                        zip(records, paths)]
    if len(labels) != len(records):
        raise ValueError(f"--labels: expected {len(records)} labels (one per folder), got {len(labels)}")
    fig = Figure(figsize=(5.0 * len(records), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(records), sharey=True, squeeze=False)[0]
    spreads = {}
    for ax, record, label in zip(axes, records, labels):
        for layer, values in record["updates"].items():
            ax.plot(record["epochs"], values, color=GROUP_COLOURS.get(record["groups"][layer], "grey"),
                    alpha=0.7, linewidth=1)
        spreads[label] = spread(record)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{label}\nfastest/slowest layer: {spreads[label]:.1f}x", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean |weight update| per iteration")
    fig.legend(handles=[Line2D([], [], color=c, label=g) for g, c in GROUP_COLOURS.items()],
               loc="outside lower center", ncols=4, fontsize="small")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return spreads
