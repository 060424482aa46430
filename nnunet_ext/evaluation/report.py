"""Rendering of ``nnext evaluate`` results: Markdown tables, bar charts, ``evaluation.*`` and ``comparison.*``.

:func:`write_report` writes one result of :func:`nnunet_ext.evaluation.per_domain.evaluate_folder` as
``evaluation.json``, ``evaluation.md`` and ``evaluation.png``; :func:`compare_report` puts several results
(e.g. one per trainer) side by side in ``comparison.json``, ``.md`` and ``.png``. Every file is rendered in
memory first and written atomically only when all of them are ready.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_ext.evaluation.metrics import METRIC_NAMES
from nnunet_ext.utils.outputs import write_result_files
from nnunet_ext.utils.plotting import default_style

#: ``format_version`` of evaluation results (schema in :mod:`nnunet_ext.evaluation.per_domain`)
RESULT_FORMAT_VERSION = 1
_METRIC_HEADERS = {"dice": "Dice", "hd95": "HD95 mm", "assd": "ASSD mm"}  # surface Dice: NSD@<tolerance>mm
_HIGHER_IS_BETTER = {"dice": True, "surface_dice": True, "hd95": False, "assd": False}


def markdown_table(result: dict[str, Any]) -> str:
    """Markdown table of a result: rows domains and all domains, columns mean metrics per label.

    A cell shows ``(n=k)`` when only ``k`` of the domain's cases enter the mean (the label was absent from
    both masks in the others). With more than one label, the mean over foreground labels follows.
    """
    check_result(result, "result")
    settings = result["settings"]
    label_names = settings["labels"]
    # (column prefix, label key or None for the mean over foreground labels)
    columns: list[tuple[str, str | None]] = [(_md_escape(name), key) for key, name in label_names.items()]
    if len(label_names) > 1:
        columns.append(("mean", None))
    header = ["domain", "n"]
    for prefix, _ in columns:
        header += [f"{prefix} {_metric_header(metric, settings['tolerance_mm'])}" for metric in METRIC_NAMES]
    rows = [(_md_escape(d), agg) for d, agg in result["domains"].items()]
    rows.append(("**all domains**", result["overall"]))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, agg in rows:
        cells = [name, str(agg["n_cases"])]
        for _, key in columns:
            block = agg["foreground_mean"] if key is None else agg["labels"][key]
            for metric in METRIC_NAMES:
                cells.append(_format_stat(block[metric], metric, agg["n_cases"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    result: dict[str, Any], out_dir: str | os.PathLike, title: str = "Per-domain evaluation"
) -> dict[str, Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and ``evaluation.png`` for a result of :func:`evaluate_folder`.

    All three are rendered in memory first and then written atomically; existing files are replaced.

    Args:
        result: the dict :func:`evaluate_folder` returned (or read back from ``evaluation.json``).
        out_dir: output folder, created if missing.
        title: heading of the Markdown page and the figure.

    Returns:
        ``{"json": path, "md": path, "png": path}``.

    Raises:
        ValueError: ``result`` is not an evaluation result.
    """
    check_result(result, "result")
    settings = result["settings"]
    n_cases = result["overall"]["n_cases"]
    labels_text = ", ".join(f"{v} = {_md_escape(n)}" for v, n in settings["labels"].items())
    markdown = "\n".join(
        [
            f"# {title}",
            "",
            f"- predictions: `{settings['prediction_dir']}`",
            f"- references: `{settings['reference_dir']}`",
            f"- {n_cases} cases in {len(result['domains'])} domains; labels: {labels_text}",
            f"- means over cases; surface Dice (NSD) tolerance {settings['tolerance_mm']:g} mm; HD95 and ASSD in mm",
            "",
            markdown_table(result),
            f"Empty structures: {settings['empty_structure_policy']}. "
            "A cell shows (n=k) when only k of the domain's cases enter the mean. "
            "Standard deviations, medians and per-case values: `evaluation.json`.",
            "",
            "![Dice per domain and label](evaluation.png)",
            "",
        ]
    )
    domain_names = list(result["domains"])
    label_keys = list(settings["labels"])
    means = np.array(
        [[result["domains"][d]["labels"][k]["dice"]["mean"] for k in label_keys] for d in domain_names], dtype=float
    )
    points = [
        [[c["labels"][k]["dice"] for c in result["cases"].values() if c["domain"] == d] for k in label_keys]
        for d in domain_names
    ]
    png = _grouped_bar_png(
        title=title,
        groups=domain_names,
        series=[settings["labels"][k] for k in label_keys],
        means=means,
        points=points,
        ylabel="Dice (bars: mean; dots: cases)",
    )
    return write_result_files(out_dir, "evaluation", result, markdown, png, "out_dir")


def compare_report(
    results: dict[str, dict[str, Any]], out_dir: str | os.PathLike, title: str = "Comparison"
) -> dict[str, Path]:
    """Compare several evaluation results (e.g. one per trainer) of the same cases, per domain.

    Writes ``comparison.json`` (per domain and run: the foreground-mean statistics of every metric),
    ``comparison.md`` (one table per metric, rows domains, columns runs, best run per row in bold) and
    ``comparison.png`` (mean foreground Dice per domain and run, dots: cases).

    Args:
        results: run name -> result of :func:`evaluate_folder` (or its ``evaluation.json``), in display order.
        out_dir: output folder, created if missing.
        title: heading of the Markdown page and the figure.

    Returns:
        ``{"json": path, "md": path, "png": path}``.

    Raises:
        ValueError: no results, a value is not an evaluation result, or the runs differ in tolerance, labels,
            cases or case domains (each names the run and the fix).
    """
    if not results:
        raise ValueError("results is empty; pass {run_name: evaluate_folder(...) result, ...}")
    runs = list(results)
    for run in runs:
        check_result(results[run], f"results[{run!r}]")
    first, base = runs[0], results[runs[0]]
    for run in runs[1:]:
        other = results[run]
        for key in ("tolerance_mm", "labels"):
            if other["settings"][key] != base["settings"][key]:
                raise ValueError(
                    f"results[{run!r}] was evaluated with {key} {other['settings'][key]!r}, results[{first!r}] "
                    f"with {base['settings'][key]!r}; evaluate every run with the same settings"
                )
        case_domains = {c: e["domain"] for c, e in other["cases"].items()}
        base_domains = {c: e["domain"] for c, e in base["cases"].items()}
        if case_domains != base_domains:
            differing = sorted(set(case_domains.items()) ^ set(base_domains.items()))
            shown = ", ".join(f"{c!r} ({d})" for c, d in differing[:10])
            raise ValueError(
                f"results[{run!r}] and results[{first!r}] differ in their cases or case domains "
                f"({len(differing)} differences, e.g. {shown}); evaluate every run on the same cases with the "
                "same domain metadata"
            )

    domain_names = list(base["domains"])
    comparison = {
        "format_version": RESULT_FORMAT_VERSION,
        "title": title,
        "runs": runs,
        "settings": {
            "tolerance_mm": base["settings"]["tolerance_mm"],
            "labels": base["settings"]["labels"],
            "statistic": "foreground_mean of each run's evaluation (see its settings.aggregation)",
        },
        "domains": {
            d: {
                "n_cases": base["domains"][d]["n_cases"],
                "runs": {r: results[r]["domains"][d]["foreground_mean"] for r in runs},
            }
            for d in domain_names
        },
        "overall": {
            "n_cases": base["overall"]["n_cases"],
            "runs": {r: results[r]["overall"]["foreground_mean"] for r in runs},
        },
    }

    sections = [
        f"# {title}",
        "",
        f"Mean over foreground labels, then over cases; {len(runs)} runs; best per row in bold.",
        "",
    ]
    rows = [(_md_escape(d), comparison["domains"][d]) for d in domain_names]
    rows.append(("**all domains**", comparison["overall"]))
    for metric in METRIC_NAMES:
        heading = _metric_header(metric, base["settings"]["tolerance_mm"])
        sections += [f"## {heading}", "", "| domain | n | " + " | ".join(_md_escape(r) for r in runs) + " |"]
        sections.append("|" + "---|" * (len(runs) + 2))
        for name, block in rows:
            means = [block["runs"][r][metric]["mean"] for r in runs]
            finite = [m for m in means if not math.isnan(m)]
            best = (max(finite) if _HIGHER_IS_BETTER[metric] else min(finite)) if finite else None
            cells = []
            for r, m in zip(runs, means):
                text = _format_stat(block["runs"][r][metric], metric, block["n_cases"])
                cells.append(f"**{text}**" if len(runs) > 1 and m == best else text)
            sections.append(f"| {name} | {block['n_cases']} | " + " | ".join(cells) + " |")
        sections.append("")
    sections += ["![mean foreground Dice per domain and run](comparison.png)", ""]

    png = _grouped_bar_png(
        title=title,
        groups=domain_names,
        series=runs,
        means=np.array(
            [[comparison["domains"][d]["runs"][r]["dice"]["mean"] for r in runs] for d in domain_names], dtype=float
        ),
        points=[
            [[c["foreground_mean"]["dice"] for c in results[r]["cases"].values() if c["domain"] == d] for r in runs]
            for d in domain_names
        ],
        ylabel="mean foreground Dice (bars: mean; dots: cases)",
    )
    return write_result_files(out_dir, "comparison", comparison, "\n".join(sections), png, "out_dir")


def _format_stat(stats: dict[str, float | int], metric: str, n_cases: int) -> str:
    mean = float(stats["mean"])
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.3f}" if _HIGHER_IS_BETTER[metric] else f"{mean:.2f}"
    return text if stats["n"] == n_cases else f"{text} (n={stats['n']})"


def check_result(result: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``result`` is an evaluation result of this format version."""
    keys = ("format_version", "settings", "cases", "domains", "overall")
    missing = [k for k in keys if not isinstance(result, dict) or k not in result]
    if missing or result["format_version"] != RESULT_FORMAT_VERSION:
        raise ValueError(
            f"{name} is not an evaluation result of format_version {RESULT_FORMAT_VERSION} (missing: "
            f"{', '.join(missing) or 'nothing'}); pass the dict evaluate_folder returned or the content of its "
            "evaluation.json"
        )


@default_style()
def _grouped_bar_png(
    title: str,
    groups: list[str],
    series: list[str],
    means: np.ndarray,
    points: list[list[list[float]]],
    ylabel: str,
) -> bytes:
    """Bars of ``means[group, series]`` in groups along x, with the per-case values as dots (PNG bytes)."""
    fig = Figure(figsize=(max(6.0, 1.5 + len(groups) * (0.6 + 0.4 * len(series))), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    jitter = np.random.default_rng(0)
    for s, name in enumerate(series):
        centres = x - 0.4 + width * (s + 0.5)
        ax.bar(centres, means[:, s], width * 0.9, label=name, color=f"C{s % 10}", alpha=0.8)
        for g in range(len(groups)):
            values = [v for v in points[g][s] if not math.isnan(v)]
            offsets = jitter.uniform(-0.25 * width, 0.25 * width, len(values))
            ax.scatter(centres[g] + offsets, values, s=9, color="black", linewidths=0, zorder=3)
    rotate = len(groups) > 4 or max(len(g) for g in groups) > 10
    ax.set_xticks(x, groups, rotation=25 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylim(-0.02, 1.04)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _metric_header(metric: str, tolerance_mm: float) -> str:
    return f"NSD@{tolerance_mm:g}mm" if metric == "surface_dice" else _METRIC_HEADERS[metric]


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")
