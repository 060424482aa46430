"""Per-domain evaluation of a prediction folder against reference labels: the computation over cases.

:func:`evaluate_folder` computes Dice, surface Dice, HD95 and ASSD (:mod:`nnunet_ext.evaluation.metrics`,
including its empty-structure policy) for every case and label, and aggregates them per domain of
``domains.json`` (:mod:`nnunet_ext.domains`) and over all cases (:mod:`nnunet_ext.evaluation.aggregate`).
:func:`write_report` writes the result as ``evaluation.json``, ``evaluation.md`` and ``evaluation.png``;
:func:`compare_report` puts several results (e.g. one per trainer) side by side in ``comparison.json``,
``.md`` and ``.png`` (both in :mod:`nnunet_ext.evaluation.report`, importable from here too).

Inputs are checked first (:mod:`nnunet_ext.evaluation.checks`) from file names and image headers (missing
predictions or references, domain entries, readability, and the grid: shape, spacing, origin, direction,
tolerances stated there) for every case; the voxel values (NaN, non-integer, labels not in
``dataset.json``) are checked as each image is read, before its metrics. When the first check finds a
problem, the voxel values of all other cases are checked as well, without computing metrics, so that one
``ValueError`` lists every problem, naming each case and file and saying how to fix it.
:func:`evaluate_folder` writes nothing; the report functions write their files only after all of them are
rendered.

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

import math
import multiprocessing
import numbers
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunet_ext import __version__
from nnunet_ext.domains import DomainMetadata, load_domains
from nnunet_ext.evaluation.aggregate import AGGREGATION, aggregate, aggregate_domains
from nnunet_ext.evaluation.checks import (
    Context,
    Problem,
    dataset_labels,
    header_problems,
    list_cases,
    load_dataset_json,
    raise_problems,
    select_labels,
    value_problems,
)
from nnunet_ext.evaluation.metrics import METRIC_NAMES, LabelMetrics, case_metrics
from nnunet_ext.evaluation.report import RESULT_FORMAT_VERSION, compare_report, markdown_table, write_report
from nnunet_ext.utils.image_io import ImageReadError, read_image

__all__ = ["EMPTY_STRUCTURE_POLICY", "METRIC_DEFINITIONS", "RESULT_FORMAT_VERSION", "ProgressCallback",
           "compare_report", "evaluate_folder", "markdown_table", "write_report"]

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
    problems: tuple[Problem, ...]
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
    dataset, dataset_source = load_dataset_json(dataset_json)
    defined = dataset_labels(dataset, dataset_source)
    file_ending = dataset.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending:
        raise ValueError(f"{dataset_source}: 'file_ending' (e.g. \".nii.gz\") is missing; add it as nnU-Net requires")
    evaluated = select_labels(defined, labels, dataset_source)
    meta = domains if isinstance(domains, DomainMetadata) else load_domains(domains)
    domains_source = "<DomainMetadata>" if isinstance(domains, DomainMetadata) else str(domains)
    if not ref_dir.is_dir():
        raise FileNotFoundError(f"reference folder {ref_dir} does not exist; check the path (--ref)")
    if not pred_dir.is_dir():
        raise FileNotFoundError(
            f"prediction folder {pred_dir} does not exist; check the path, or predict first "
            f"(nnUNetv2_predict ... -o {pred_dir})"
        )
    context = Context(
        pred_dir=pred_dir,
        ref_dir=ref_dir,
        file_ending=file_ending,
        dataset_json=dataset_source,
        domains=domains_source,
        defined=", ".join(str(v) for v in sorted(defined)),
    )

    references = list_cases(ref_dir, file_ending)
    predictions = list_cases(pred_dir, file_ending)
    if not references:
        raise ValueError(
            f"no reference files ending in {file_ending!r} in {ref_dir}; check the folder and 'file_ending' "
            f"in {dataset_source}"
        )
    problems: list[Problem] = []
    if cases is None:
        selected = sorted(references)
        problems += [
            Problem("missing_reference", c, f"prediction {predictions[c]}")
            for c in sorted(set(predictions) - set(references))
        ]
    else:
        selected = sorted(set(cases))
        problems += [
            Problem("unknown_case", c, f"expected {ref_dir / (c + file_ending)}")
            for c in selected
            if c not in references
        ]
    tasks = []
    for case in selected:
        if case in references and case not in predictions:
            problems.append(Problem("missing_prediction", case, f"expected {pred_dir / (case + file_ending)}"))
        if case not in meta.cases:
            problems.append(Problem("no_domain", case, "not listed under 'cases'"))
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
    from_headers = [p for task in tasks for p in header_problems(task.case, task.prediction, task.reference)]
    problems += from_headers
    if problems:
        # list every problem at once: check the voxel values of the other cases too, computing no metrics
        bad_headers = {p.case for p in from_headers}
        checks = [replace(t, compute_metrics=False) for t in tasks if t.case not in bad_headers]
        problems += [p for o in _run_tasks(checks, num_processes, progress) for p in o.problems]
        raise_problems(problems, context)

    outcomes = _run_tasks(tasks, num_processes, progress)
    raise_problems([p for o in outcomes for p in o.problems], context)

    case_results = {
        o.task.case: _case_entry(o, meta.domain_of(o.task.case)) for o in sorted(outcomes, key=lambda o: o.task.case)
    }
    label_keys = [str(v) for v in evaluated]
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
        "domains": aggregate_domains(case_results, label_keys, list(meta.domains)),
        "overall": aggregate(list(case_results.values()), label_keys),
    }


def _evaluate_case(task: _CaseTask) -> _CaseOutcome:
    """Read one case, check its voxel values, and compute its metrics if asked (runs in worker processes)."""
    paths = {"prediction": task.prediction, "reference": task.reference}
    images, problems = {}, []
    for role, path in paths.items():
        try:  # the header check passed; the voxels may still be cut off (read_image checks NIfTI completeness)
            images[role] = read_image(path)
        except ImageReadError as e:
            problems.append(Problem("unreadable", task.case, f"{role} {path}: {e.reason}"))
    if problems:
        return _CaseOutcome(task, tuple(problems))
    arrays = {role: sitk.GetArrayViewFromImage(image) for role, image in images.items()}
    problems = [
        problem
        for role, path in paths.items()
        for problem in value_problems(task.case, role, path, arrays[role], task.defined_values)
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
