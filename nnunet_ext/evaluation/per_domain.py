"""Per-domain evaluation of a prediction folder against reference labels, and its reports.

:func:`evaluate_folder` computes Dice, surface Dice, HD95 and ASSD (:mod:`nnunet_ext.evaluation.metrics`,
including its empty-structure policy) for every case and label, and aggregates them per domain of
``domains.json`` (:mod:`nnunet_ext.domains`) and over all cases. :func:`write_report` writes the result as
``evaluation.json``, ``evaluation.md`` and ``evaluation.png``; :func:`compare_report` puts several results
(e.g. one per trainer) side by side in ``comparison.json``, ``.md`` and ``.png``.

Inputs are checked first from file names and image headers (missing predictions or references, domain
entries, readability, shapes, spacings) for every case; the voxel values (NaN, non-integer, labels not in
``dataset.json``) are checked as each image is read, before its metrics. When the first check finds a
problem, the voxel values of all other cases are checked as well, without computing metrics, so that one
``ValueError`` lists every problem, naming each case and file and saying how to fix it. :func:`evaluate_folder` writes
nothing; the report functions write their files only after all of them are rendered.

Result schema (``format_version`` 1; label values are JSON strings)::

    {"format_version": 1,
     "settings": {"tolerance_mm", "labels": {"1": "name"}, "file_ending", "prediction_dir", "reference_dir",
                  "dataset_json", "domains", "metrics", "empty_structure_policy", "aggregation",
                  "nnunet_ext_version"},
     "cases": {case: {"domain", "prediction", "reference", "shape", "spacing_mm",
                      "labels": {"1": {"dice", "surface_dice", "hd95", "assd",
                                       "reference_voxels", "prediction_voxels"}},
                      "foreground_mean": {"dice", "surface_dice", "hd95", "assd"}}},
     "domains": {domain: AGGREGATE},   # in the order of domains.json, domains without cases left out
     "overall": AGGREGATE}

    AGGREGATE = {"n_cases",
                 "labels": {"1": {"n_both_empty", "dice": STATS, "surface_dice": STATS, "hd95": STATS,
                                  "assd": STATS}},
                 "foreground_mean": {"n_both_empty", "dice": STATS, ...}}
    STATS = {"mean", "std", "median", "n"}

NaN (both masks empty, or fewer than two values for a standard deviation) is written as ``NaN``, as
nnU-Net's own ``summary.json`` does; Python's ``json`` reads it back.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_ext import __version__
from nnunet_ext.domains import DomainMetadata, load_domains
from nnunet_ext.evaluation.metrics import METRIC_NAMES, LabelMetrics, case_metrics
from nnunet_ext.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from nnunet_ext.utils.plotting import default_style

RESULT_FORMAT_VERSION = 1
#: relative tolerance when comparing the spacing of a prediction with its reference
SPACING_RTOL = 1e-3
#: called in the calling process after each case: (cases done, cases in total, case id)
ProgressCallback = Callable[[int, int, str], None]

EMPTY_STRUCTURE_POLICY = (
    "label absent from both reference and prediction: all metrics NaN, excluded from means and counted "
    "as n_both_empty; absent from exactly one: Dice 0, surface Dice 0, HD95 and ASSD = diagonal of the "
    "image's field of view in mm (worse than any real contour), included in means"
)
METRIC_DEFINITIONS: dict[str, str] = {
    "dice": "2 |P and R| / (|P| + |R|) of the predicted (P) and reference (R) masks",
    "surface_dice": "fraction of boundary voxels of both masks within tolerance_mm of the other boundary "
    "(MONAI compute_surface_dice, use_subvoxels=False)",
    "hd95": "max of the two directed 95th percentiles of boundary distances in mm "
    "(MONAI compute_hausdorff_distance, percentile=95)",
    "assd": "mean of the boundary distances of both directions pooled, in mm "
    "(MONAI compute_average_surface_distance, symmetric=True)",
}
AGGREGATION = (
    "mean, sample standard deviation (ddof=1; NaN when n < 2) and median over cases; n counts the cases "
    "that enter them. foreground_mean: per case the mean over the evaluated labels that are not empty in "
    "both masks, aggregated over cases like a label"
)

_METRIC_HEADERS = {"dice": "Dice", "hd95": "HD95 mm", "assd": "ASSD mm"}  # surface Dice: NSD@<tolerance>mm
_HIGHER_IS_BETTER = {"dice": True, "surface_dice": True, "hd95": False, "assd": False}

# problem kind -> (what is wrong, how to fix it); formatted with the fields of _Context
_PROBLEM_KINDS: dict[str, tuple[str, str]] = {
    "missing_prediction": (
        "reference cases without a prediction in {pred_dir}",
        "predict them into that folder (nnUNetv2_predict ... -o {pred_dir}), or evaluate a subset "
        "(cases=[...], nnext evaluate --cases)",
    ),
    "unknown_case": (
        "requested cases without a reference in {ref_dir}",
        "check the case names; a reference is {ref_dir}/<case>{file_ending}",
    ),
    "missing_reference": (
        "predictions without a reference in {ref_dir}",
        "add their reference labels to {ref_dir}, or evaluate only the cases that have one "
        "(cases=[...], nnext evaluate --cases)",
    ),
    "no_domain": (
        "cases without an entry in the domain metadata {domains}",
        "add each case under 'cases' there (format: nnunet_ext/domains.py), or pass the domain metadata of "
        "this dataset (--domains)",
    ),
    "unreadable": (
        "files SimpleITK cannot read",
        "replace them with valid images in the dataset's file format ({file_ending})",
    ),
    "not_scalar": ("images with more than one channel", "save label maps as single-channel integer images"),
    "shape": (
        "predictions whose shape differs from the reference",
        "predict from the image of the same case: nnUNetv2_predict writes predictions on the input grid",
    ),
    "spacing": (
        f"predictions whose spacing differs from the reference (relative tolerance {SPACING_RTOL:g})",
        "predict from the image of the same case: nnUNetv2_predict writes predictions on the input grid",
    ),
    "non_finite": ("images with NaN or infinite values", "label maps hold integer label values; regenerate them"),
    "non_integer": ("images with non-integer values", "label maps hold integer label values; regenerate them"),
    "undefined_label": (
        "images with label values that {dataset_json} does not define (defined: {defined})",
        "pass the dataset.json of this dataset (--dataset-json), or fix the label values",
    ),
}


@dataclass(frozen=True)
class _Problem:
    kind: str
    case: str
    detail: str


@dataclass(frozen=True)
class _Context:
    pred_dir: Path
    ref_dir: Path
    file_ending: str
    dataset_json: str
    domains: str
    defined: str


@dataclass(frozen=True)
class _CaseTask:
    case: str
    prediction: Path
    reference: Path
    labels: tuple[int, ...]
    defined_values: frozenset[int]
    tolerance_mm: float
    compute_metrics: bool = True


@dataclass(frozen=True)
class _CaseOutcome:
    task: _CaseTask
    problems: tuple[_Problem, ...]
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    metrics: dict[int, LabelMetrics] = field(default_factory=dict)


def evaluate_folder(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    dataset_json: dict[str, Any] | str | os.PathLike,
    domains: DomainMetadata | str | os.PathLike,
    tolerance_mm: float = 1.0,
    labels: list[int] | None = None,
    num_processes: int = 1,
    cases: list[str] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate every case of a prediction folder and aggregate the metrics per domain.

    Args:
        pred_dir: folder of predicted label maps ``<case><file_ending>`` (e.g. ``nnUNetv2_predict -o``).
        ref_dir: folder of reference label maps with the same names (e.g. ``DatasetXXX/labelsTs``).
        dataset_json: nnU-Net ``dataset.json`` as a dict, a file path, or its dataset folder. Its ``labels``
            (name -> int) give the labels; ``file_ending`` the file names.
        domains: domain metadata, or the path of ``domains.json`` or of its dataset folder.
        tolerance_mm: surface Dice tolerance in mm.
        labels: label values to evaluate; default all foreground labels of ``dataset_json``.
        num_processes: worker processes (spawned) computing cases in parallel.
        cases: evaluate only these case ids (predictions of other cases are then ignored); default all
            reference cases, and every prediction must have a reference.
        progress: called after each case as ``progress(done, total, case_id)``.

    Returns:
        The result dict described in the module docstring.

    Raises:
        FileNotFoundError: ``pred_dir``, ``ref_dir``, ``dataset_json`` or ``domains`` does not exist.
        NotImplementedError: ``dataset_json`` has region-based labels or an ignore label.
        ValueError: bad arguments, or any case fails a check (all problems listed, each with case, file and fix).
    """
    if not (isinstance(tolerance_mm, numbers.Real) and math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {num_processes!r}")
    if cases is not None and len(cases) == 0:
        raise ValueError("cases is an empty list; pass None to evaluate every reference case")
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    dataset, dataset_source = _load_dataset_json(dataset_json)
    defined = _dataset_labels(dataset, dataset_source)
    file_ending = dataset.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        raise ValueError(f"{dataset_source}: 'file_ending' (e.g. \".nii.gz\") is missing; add it as nnU-Net requires")
    evaluated = _select_labels(defined, labels, dataset_source)
    meta = domains if isinstance(domains, DomainMetadata) else load_domains(domains)
    domains_source = "<DomainMetadata>" if isinstance(domains, DomainMetadata) else str(domains)
    if not ref_dir.is_dir():
        raise FileNotFoundError(f"reference folder {ref_dir} does not exist; check the path (--ref)")
    if not pred_dir.is_dir():
        raise FileNotFoundError(
            f"prediction folder {pred_dir} does not exist; check the path, or predict first "
            f"(nnUNetv2_predict ... -o {pred_dir})"
        )
    context = _Context(
        pred_dir=pred_dir,
        ref_dir=ref_dir,
        file_ending=file_ending,
        dataset_json=dataset_source,
        domains=domains_source,
        defined=", ".join(str(v) for v in sorted(defined)),
    )

    references = _list_cases(ref_dir, file_ending)
    predictions = _list_cases(pred_dir, file_ending)
    if not references:
        raise ValueError(
            f"no reference files ending in {file_ending!r} in {ref_dir}; check the folder and 'file_ending' "
            f"in {dataset_source}"
        )
    problems: list[_Problem] = []
    if cases is None:
        selected = sorted(references)
        problems += [
            _Problem("missing_reference", c, f"prediction {predictions[c]}")
            for c in sorted(set(predictions) - set(references))
        ]
    else:
        selected = sorted(set(cases))
        problems += [
            _Problem("unknown_case", c, f"expected {ref_dir / (c + file_ending)}")
            for c in selected
            if c not in references
        ]
    tasks = []
    for case in selected:
        if case in references and case not in predictions:
            problems.append(_Problem("missing_prediction", case, f"expected {pred_dir / (case + file_ending)}"))
        if case not in meta.cases:
            problems.append(_Problem("no_domain", case, "not listed under 'cases'"))
        if case in references and case in predictions:
            tasks.append(
                _CaseTask(
                    case=case,
                    prediction=predictions[case],
                    reference=references[case],
                    labels=tuple(evaluated),
                    defined_values=frozenset(defined),
                    tolerance_mm=float(tolerance_mm),
                )
            )
    header_problems = [p for task in tasks for p in _header_problems(task)]
    problems += header_problems
    if problems:
        # list every problem at once: check the voxel values of the other cases too, computing no metrics
        bad_headers = {p.case for p in header_problems}
        checks = [replace(t, compute_metrics=False) for t in tasks if t.case not in bad_headers]
        problems += [p for o in _run_tasks(checks, num_processes, progress) for p in o.problems]
        _raise_problems(problems, context)

    outcomes = _run_tasks(tasks, num_processes, progress)
    _raise_problems([p for o in outcomes for p in o.problems], context)

    case_results = {
        o.task.case: _case_entry(o, meta.domain_of(o.task.case)) for o in sorted(outcomes, key=lambda o: o.task.case)
    }
    label_keys = [str(v) for v in evaluated]
    used = {entry["domain"] for entry in case_results.values()}
    domain_order = [d for d in meta.domains if d in used] + sorted(used - set(meta.domains))
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "settings": {
            "tolerance_mm": float(tolerance_mm),
            "labels": {str(v): name for v, name in evaluated.items()},
            "file_ending": file_ending,
            "prediction_dir": str(pred_dir.resolve()),
            "reference_dir": str(ref_dir.resolve()),
            "dataset_json": dataset_source,
            "domains": domains_source,
            "metrics": METRIC_DEFINITIONS,
            "empty_structure_policy": EMPTY_STRUCTURE_POLICY,
            "aggregation": AGGREGATION,
            "nnunet_ext_version": __version__,
        },
        "cases": case_results,
        "domains": {
            d: _aggregate([e for e in case_results.values() if e["domain"] == d], label_keys) for d in domain_order
        },
        "overall": _aggregate(list(case_results.values()), label_keys),
    }


def markdown_table(result: dict[str, Any]) -> str:
    """Markdown table of a result: rows domains and all domains, columns mean metrics per label.

    A cell shows ``(n=k)`` when only ``k`` of the domain's cases enter the mean (the label was absent from
    both masks in the others). With more than one label, the mean over foreground labels follows.
    """
    _check_result(result, "result")
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
    _check_result(result, "result")
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
    return _write_outputs(Path(out_dir), "evaluation", result, markdown, png)


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
        _check_result(results[run], f"results[{run!r}]")
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
    return _write_outputs(Path(out_dir), "comparison", comparison, "\n".join(sections), png)


def _load_dataset_json(dataset_json: dict[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str]:
    if isinstance(dataset_json, dict):
        return dataset_json, "dataset_json"
    path = Path(dataset_json)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset.json not found at {path}; pass the dataset.json of the dataset (--dataset-json)"
        )
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{path}: expected a JSON object (nnU-Net dataset.json), got {type(dataset).__name__}")
    return dataset, str(path)


def _dataset_labels(dataset: dict[str, Any], source: str) -> dict[int, str]:
    """All label values of a dataset.json (background included) -> name."""
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source}: 'labels' must be an object name -> integer value, as nnU-Net requires")
    defined: dict[int, str] = {}
    for name, value in raw.items():
        if name == "ignore":
            raise NotImplementedError(
                f"{source}: label 'ignore' ({value}) is an nnU-Net ignore label, which nnext evaluate does not "
                "support; evaluate with a dataset.json without it and references without ignored voxels"
            )
        if isinstance(value, (list, tuple)):
            raise NotImplementedError(
                f"{source}: label {name!r} is region-based ({value}); nnext evaluate supports only integer labels"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{source}: label {name!r} must be an integer >= 0, got {value!r}")
        if value in defined:
            raise ValueError(f"{source}: labels {defined[value]!r} and {name!r} share the value {value}")
        defined[value] = name
    return defined


def _select_labels(defined: dict[int, str], labels: list[int] | None, source: str) -> dict[int, str]:
    foreground = {v: n for v, n in sorted(defined.items()) if v != 0}
    if labels is None:
        if not foreground:
            raise ValueError(f"{source}: 'labels' defines no foreground label (value > 0) to evaluate")
        return foreground
    if len(labels) == 0:
        raise ValueError("labels is an empty list; pass None to evaluate every foreground label")
    unknown = [v for v in labels if v not in foreground]
    if unknown:
        raise ValueError(
            f"labels {unknown} are not foreground labels of {source} (available: {sorted(foreground)}); "
            "background 0 is never evaluated"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {labels} contain duplicates; list each label once")
    return {v: foreground[v] for v in sorted(labels)}


def _list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(file_ending) and not p.name.startswith(".") and p.is_file()
    }


def _header_problems(task: _CaseTask) -> list[_Problem]:
    """Checks that need only the image headers: readable, one channel, same shape and spacing."""
    headers = {}
    problems = []
    for role, path in (("prediction", task.prediction), ("reference", task.reference)):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            problems.append(_Problem("unreadable", task.case, f"{role} {path}: {reason}"))
            continue
        if reader.GetNumberOfComponents() != 1:
            problems.append(
                _Problem("not_scalar", task.case, f"{role} {path} has {reader.GetNumberOfComponents()} channels")
            )
        headers[role] = (tuple(reversed(reader.GetSize())), tuple(reversed(reader.GetSpacing())))
    if len(headers) == 2:
        (pred_shape, pred_spacing), (ref_shape, ref_spacing) = headers["prediction"], headers["reference"]
        if pred_shape != ref_shape:
            problems.append(
                _Problem(
                    "shape",
                    task.case,
                    f"prediction {task.prediction} has shape {pred_shape}, reference {task.reference} {ref_shape} "
                    "(numpy axis order)",
                )
            )
        elif any(abs(p - r) > SPACING_RTOL * max(abs(p), abs(r)) for p, r in zip(pred_spacing, ref_spacing)):
            problems.append(
                _Problem(
                    "spacing",
                    task.case,
                    f"prediction {task.prediction} has spacing {_fmt_tuple(pred_spacing)} mm, reference "
                    f"{task.reference} {_fmt_tuple(ref_spacing)} mm (numpy axis order)",
                )
            )
    return problems


def _value_problems(case: str, role: str, path: Path, array: np.ndarray, defined: frozenset[int]) -> list[_Problem]:
    """Checks of the voxel values: finite, integer, and defined in dataset.json."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            return [_Problem("non_finite", case, f"{role} {path}: {int(np.count_nonzero(~finite))} voxels")]
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            return [
                _Problem(
                    "non_integer", case, f"{role} {path}: {int(np.count_nonzero(fractional))} voxels, e.g. {example:g}"
                )
            ]
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        return [_Problem("non_integer", case, f"{role} {path}: pixel type {array.dtype}")]
    undefined = sorted(int(v) for v in np.unique(array).tolist() if int(v) not in defined)
    if undefined:
        return [_Problem("undefined_label", case, f"{role} {path}: values {undefined}")]
    return []


def _evaluate_case(task: _CaseTask) -> _CaseOutcome:
    """Read one case, check its voxel values, and compute its metrics if asked (runs in worker processes)."""
    paths = {"prediction": task.prediction, "reference": task.reference}
    images = {role: sitk.ReadImage(str(path)) for role, path in paths.items()}
    arrays = {role: sitk.GetArrayViewFromImage(image) for role, image in images.items()}
    problems = [
        problem
        for role, path in paths.items()
        for problem in _value_problems(task.case, role, path, arrays[role], task.defined_values)
    ]
    if problems or not task.compute_metrics:
        return _CaseOutcome(task, tuple(problems))
    # SimpleITK spacing is (x, y, z); numpy arrays are (z, y, x)
    spacing = tuple(reversed(images["reference"].GetSpacing()))
    metrics = case_metrics(arrays["prediction"], arrays["reference"], task.labels, spacing, task.tolerance_mm)
    return _CaseOutcome(task, (), tuple(arrays["reference"].shape), spacing, metrics)


def _run_tasks(tasks: list[_CaseTask], num_processes: int, progress: ProgressCallback | None) -> list[_CaseOutcome]:
    outcomes: list[_CaseOutcome] = []
    with ExitStack() as stack:
        if num_processes > 1 and len(tasks) > 1:
            # spawn, as nnU-Net does: forking a process that already ran torch's thread pool can hang
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))))
            results: Iterable[_CaseOutcome] = pool.imap_unordered(_evaluate_case, tasks)
        else:
            results = map(_evaluate_case, tasks)
        for outcome in results:
            outcomes.append(outcome)
            if progress is not None:
                progress(len(outcomes), len(tasks), outcome.task.case)
    return outcomes


def _raise_problems(problems: list[_Problem], context: _Context) -> None:
    if not problems:
        return
    fields = vars(context)
    lines = [
        f"cannot evaluate {context.pred_dir} against {context.ref_dir}: {len(problems)} problem(s); "
        "nothing was computed or written."
    ]
    for kind, (what, fix) in _PROBLEM_KINDS.items():
        of_kind = [p for p in problems if p.kind == kind]
        if of_kind:
            lines.append(f"{what.format(**fields)} ({len(of_kind)}). Fix: {fix.format(**fields)}:")
            lines += [f"  - case {p.case!r}: {p.detail}" for p in sorted(of_kind, key=lambda p: p.case)]
    raise ValueError("\n".join(lines))


def _case_entry(outcome: _CaseOutcome, domain: str) -> dict[str, Any]:
    per_label = {str(label): m.as_dict() for label, m in outcome.metrics.items()}
    present = [m for m in outcome.metrics.values() if not m.both_empty]
    return {
        "domain": domain,
        "prediction": str(outcome.task.prediction),
        "reference": str(outcome.task.reference),
        "shape": list(outcome.shape),
        "spacing_mm": list(outcome.spacing),
        "labels": per_label,
        "foreground_mean": {
            metric: float(np.mean([getattr(m, metric) for m in present])) if present else float("nan")
            for metric in METRIC_NAMES
        },
    }


def _aggregate(entries: list[dict[str, Any]], label_keys: list[str]) -> dict[str, Any]:
    def both_empty(label_entry: dict[str, Any]) -> bool:
        return label_entry["reference_voxels"] == 0 and label_entry["prediction_voxels"] == 0

    labels = {}
    for key in label_keys:
        values = [e["labels"][key] for e in entries]
        labels[key] = {
            "n_both_empty": sum(map(both_empty, values)),
            **{metric: _stats([v[metric] for v in values]) for metric in METRIC_NAMES},
        }
    fg_empty = sum(all(both_empty(e["labels"][k]) for k in label_keys) for e in entries)
    return {
        "n_cases": len(entries),
        "labels": labels,
        "foreground_mean": {
            "n_both_empty": fg_empty,
            **{metric: _stats([e["foreground_mean"][metric] for e in entries]) for metric in METRIC_NAMES},
        },
    }


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    finite = np.array([v for v in values if not math.isnan(v)], dtype=float)
    n = int(finite.size)
    nan = float("nan")
    return {
        "mean": float(finite.mean()) if n else nan,
        "std": float(finite.std(ddof=1)) if n > 1 else nan,
        "median": float(np.median(finite)) if n else nan,
        "n": n,
    }


def _format_stat(stats: dict[str, float | int], metric: str, n_cases: int) -> str:
    mean = float(stats["mean"])
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.3f}" if _HIGHER_IS_BETTER[metric] else f"{mean:.2f}"
    return text if stats["n"] == n_cases else f"{text} (n={stats['n']})"


def _check_result(result: Any, name: str) -> None:
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


def _write_outputs(out_dir: Path, stem: str, data: dict[str, Any], markdown: str, png: bytes) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown)
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths


def _metric_header(metric: str, tolerance_mm: float) -> str:
    return f"NSD@{tolerance_mm:g}mm" if metric == "surface_dice" else _METRIC_HEADERS[metric]


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _fmt_tuple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
