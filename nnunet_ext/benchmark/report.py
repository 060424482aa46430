"""Render a benchmark matrix (:mod:`nnunet_ext.benchmark.matrix`) as Markdown and a figure; write all three."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_ext.benchmark.matrix import DA5_ROW, METRICS
from nnunet_ext.benchmark.rows import REFERENCE_ROW
from nnunet_ext.utils.outputs import write_result_files
from nnunet_ext.utils.plotting import default_style

STEM = "benchmark"
_METRIC_TITLES = {"dice": "Dice", "surface_dice": "surface Dice", "hd95": "HD95 (mm)"}
_COST_TITLES = {
    "train_s_per_iteration": "train s/iteration",
    "predict_s_per_case": "predict s/case",
    "model_step_max_rss_mb": "train peak RSS MB",
    "predict_max_rss_mb": "predict peak RSS MB",
    "model_numbers": "model numbers",
}


def _fmt(entry: dict[str, Any], digits: int = 3) -> str:
    if entry["mean"] is None:
        return "–"
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" ± {entry['sd']:.{digits}f}" if entry["sd"] is not None else "")


def _fmt_cost(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if key == "model_numbers":
        return f"{value / 1e6:.2f} M"
    if key.endswith("_mb"):
        return f"{value:.0f}"
    return f"{value:.3g}"


def _per_domain_sentence(result: dict[str, Any]) -> str:
    labels = result.get("labels")
    if not labels:
        return "Per domain: mean over its test cases of the per-case foreground mean; mean ± sd over seeds."
    names = ", ".join(f"{label} ({name})" if name else str(label) for label, name in labels.items())
    return (f"Per domain: mean over the labels {names} of the label's mean over the domain's test cases (the other "
            f"labels left out); mean ± sd over seeds.")


def stem_for(labels: Iterable[int | str] | None) -> str:
    """Output name of a matrix: ``benchmark``, or ``benchmark_labels_2_3`` for one over labels 2 and 3."""
    return STEM if not labels else f"{STEM}_labels_" + "_".join(str(label) for label in labels)


def markdown(result: dict[str, Any]) -> str:
    """The whole report as Markdown (header, one table per fold and metric, costs, problems)."""
    s = result["settings"]
    lines = [f"# nnext benchmark: {s['dataset']}", ""]
    if not result["complete"]:
        lines += [f"**INCOMPLETE: {len(result['problems'])} of {result['n_runs']} runs are not finished; the "
                  f"numbers below cover the finished runs only.**", ""]
    lines += [f"- command: `{result['command']}`",
              f"- budget `{s['budget']}` ({result['budget']['description']}), configuration `{s['configuration']}`, "
              f"plans `{s['plans']}`, seeds {', '.join(map(str, s['seeds']))}, folds {', '.join(s['folds'])}, "
              f"device `{s['device']}`, mirroring TTA {'on' if s['tta'] else 'off'}, surface Dice tolerance "
              f"{s['tolerance_mm']} mm",
              f"- machine: {result['machine']}", f"- versions: {result['versions']}", ""]
    for fold, entry in result["matrix"]["folds"].items():
        sources, targets = entry["source_domains"], entry["target_domains"]
        lines += [f"## Fold {fold}: trained on {', '.join(sources)}", ""]
        stock = entry["rows"].get(REFERENCE_ROW)
        if stock is not None and stock["in_domain"]["dice"]["mean"] is not None \
                and stock["shifted"]["dice"]["mean"] is not None:
            gap = stock["in_domain"]["dice"]["mean"] - stock["shifted"]["dice"]["mean"]
            lines += [f"Stock `{REFERENCE_ROW}` loses {gap:.3f} Dice from its source domain to the other domains "
                      f"(in-domain − shifted mean): the gap that \"gap closed\" divides by; with a small gap the "
                      f"share is noisy.", ""]
        for metric in METRICS:
            lines += [f"### {_METRIC_TITLES[metric]}" + (f" (tolerance {s['tolerance_mm']} mm)"
                                                         if metric == "surface_dice" else ""), "",
                      _per_domain_sentence(result), ""]
            header = ["row", *[f"{d} (in)" for d in sources], *targets, "shifted mean", "gap closed"]
            if metric == "dice":
                header.append(f"vs {DA5_ROW} (Δ shifted, seeds better)")
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for spec, row in entry["rows"].items():
                gap = row["gap_closed"][metric]
                cells = [f"`{spec}`", *[_fmt(row["domains"][d][metric]) for d in [*sources, *targets]],
                         _fmt(row["shifted"][metric]), "–" if gap is None else f"{gap:+.2f}"]
                if metric == "dice":
                    paired = row["vs_da5"]
                    diff = paired["shifted_dice_diff"]
                    cells.append("–" if spec == DA5_ROW or diff["mean"] is None
                                 else f"{diff['mean']:+.3f} ({paired['seeds_better']}/{paired['n']})")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"## Costs vs stock `{REFERENCE_ROW}` in the same run", "",
              "Medians over each row's runs; in brackets the ratio to stock. Training s/iteration from nnU-Net's "
              "epoch timestamps (epoch time / iterations per epoch); prediction s/case = wall time of the "
              "prediction command / test cases (model loading included); peak RSS of the command's process tree; "
              "model numbers = values stored in network_weights (parameters and buffers). Test-time rows "
              "(METHOD@BASE) add no training: their train column is the attach command.", ""]
    header = ["row", *_COST_TITLES.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec, costs in result["matrix"]["costs"].items():
        cells = [f"`{spec}`"]
        for key in _COST_TITLES:
            value, ratio = costs[key]["median"], costs[key]["ratio"]
            cells.append(_fmt_cost(key, value) + ("" if ratio is None else f" ({ratio:.2f}x)"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if result["problems"]:
        lines += ["## Runs not finished", "", "| run | status | error |", "|---|---|---|"]
        for key, problem in result["problems"].items():
            error = (problem["error"] or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| `{key}` | {problem['status']} | {error} |")
        lines.append("")
    return "\n".join(lines)


def figure_png(result: dict[str, Any]) -> bytes:
    """Per fold: a heatmap of mean Dice (rows x domains, in-domain columns first) and the shifted mean ± sd."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folds = result["matrix"]["folds"]
    with default_style():
        n_rows = max(len(e["rows"]) for e in folds.values())
        fig = Figure(figsize=(13, 1.2 + (0.42 * n_rows + 1.2) * len(folds)), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(folds), 2, squeeze=False, width_ratios=(3, 1.3))
        for (fold, entry), (heat, bars) in zip(folds.items(), axes):
            specs = list(entry["rows"])
            columns = [*entry["source_domains"], *entry["target_domains"]]
            values = np.array([[entry["rows"][r]["domains"][d]["dice"]["mean"] or np.nan for d in columns]
                               for r in specs], dtype=float)
            image = heat.imshow(values, aspect="auto", cmap="viridis", vmin=np.nanmin(values) if np.isfinite(values).any()
                                else 0, vmax=1)
            heat.set_xticks(range(len(columns)), [f"{d}\n(in)" if d in entry["source_domains"] else d
                                                  for d in columns], rotation=30, ha="right", fontsize="small")
            heat.set_yticks(range(len(specs)), specs, fontsize="small")
            for i in range(len(specs)):
                for j in range(len(columns)):
                    if np.isfinite(values[i, j]):
                        heat.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize="x-small",
                                  color="white" if values[i, j] < np.nanmean(values) else "black")
            heat.set_title(f"fold {fold}: mean Dice per test domain (trained on {', '.join(entry['source_domains'])})",
                           fontsize="medium")
            fig.colorbar(image, ax=heat, shrink=0.8)
            means = [entry["rows"][r]["shifted"]["dice"]["mean"] for r in specs]
            sds = [entry["rows"][r]["shifted"]["dice"]["sd"] or 0.0 for r in specs]
            y = np.arange(len(specs))
            bars.barh(y, [m if m is not None else 0 for m in means], xerr=sds, color="tab:blue", capsize=2)
            for spec, style in ((REFERENCE_ROW, ":"), (DA5_ROW, "--")):
                if spec in entry["rows"] and entry["rows"][spec]["shifted"]["dice"]["mean"] is not None:
                    bars.axvline(entry["rows"][spec]["shifted"]["dice"]["mean"], color="k", ls=style, lw=1,
                                 label=spec)
            finite = [m for m in means if m is not None]
            if finite:
                bars.set_xlim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
            bars.set_yticks(y, [])
            bars.invert_yaxis()
            bars.set_xlabel("shifted mean Dice (± sd over seeds)")
            if bars.get_legend_handles_labels()[0]:  # no reference lines before the baselines finished
                bars.legend(fontsize="x-small", loc="lower right")
        if not result["complete"]:
            fig.suptitle("INCOMPLETE: not every run finished", color="red")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_outputs(result: dict[str, Any], output: Path) -> dict[str, Path]:
    """Render first, then write ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` into ``output``."""
    return write_result_files(output, stem_for(result.get("labels")), result, markdown(result), figure_png(result))

