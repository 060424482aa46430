"""Aggregation of per-case metrics of ``nnext evaluate``: per label and foreground mean, per domain and overall.

An aggregate (schema in :mod:`nnunet_ext.evaluation.per_domain`) holds, per label and for the per-case
foreground mean, the mean, sample standard deviation and median over cases and the number ``n`` of cases
that enter them. NaN values (label absent from both masks: the empty-structure rule of
:mod:`nnunet_ext.core.metrics`) are left out and counted as ``n_both_empty``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnunet_ext.evaluation.metrics import METRIC_NAMES

AGGREGATION = (
    "mean, sample standard deviation (ddof=1; NaN when n < 2) and median over cases; n counts the cases "
    "that enter them. foreground_mean: per case the mean over the evaluated labels that are not empty in "
    "both masks, aggregated over cases like a label"
)


def aggregate_domains(cases: dict[str, dict[str, Any]], label_keys: list[str],
                      domain_order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`aggregate` of the cases of each domain.

    Args:
        cases: case id -> case entry (with ``"domain"``, ``"labels"`` and ``"foreground_mean"``).
        label_keys: evaluated labels as strings.
        domain_order: domains in display order (``domains.json``); domains without cases are left out, and
            domains of cases that it does not list follow in sorted order.

    Returns:
        domain -> aggregate, in that order.
    """
    used = {entry["domain"] for entry in cases.values()}
    order = [d for d in domain_order if d in used] + sorted(used - set(domain_order))
    return {d: aggregate([e for e in cases.values() if e["domain"] == d], label_keys) for d in order}


def aggregate(entries: list[dict[str, Any]], label_keys: list[str]) -> dict[str, Any]:
    """Statistics over case entries: per label and for the foreground mean (schema: ``AGGREGATE``)."""

    def both_empty(label_entry: dict[str, Any]) -> bool:
        return label_entry["reference_voxels"] == 0 and label_entry["prediction_voxels"] == 0

    labels = {}
    for key in label_keys:
        values = [e["labels"][key] for e in entries]
        labels[key] = {
            "n_both_empty": sum(map(both_empty, values)),
            **{metric: stats([v[metric] for v in values]) for metric in METRIC_NAMES},
        }
    fg_empty = sum(all(both_empty(e["labels"][k]) for k in label_keys) for e in entries)
    return {
        "n_cases": len(entries),
        "labels": labels,
        "foreground_mean": {
            "n_both_empty": fg_empty,
            **{metric: stats([e["foreground_mean"][metric] for e in entries]) for metric in METRIC_NAMES},
        },
    }


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (ddof=1), median and count of the values that are not NaN."""
    finite = np.array([v for v in values if not math.isnan(v)], dtype=float)
    n = int(finite.size)
    nan = float("nan")
    return {
        "mean": float(finite.mean()) if n else nan,
        "std": float(finite.std(ddof=1)) if n > 1 else nan,
        "median": float(np.median(finite)) if n else nan,
        "n": n,
    }
