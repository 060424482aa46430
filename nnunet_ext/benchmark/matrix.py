"""The benchmark matrix: trainer x domain, mean +- sd over seeds, gap closed vs stock, costs vs stock.

Per run, the value of a domain is the domain's mean over its test cases of the per-case foreground mean
(``evaluation.json``: ``domains[d]["foreground_mean"][metric]["mean"]``), or, with ``labels``, the mean over
those labels of the domain's per-label means (``domains[d]["labels"][label][metric]["mean"]``). Per fold, the **in-domain** value is
the mean over the fold's source domains (the domains of its training cases) and the **shifted** value the mean
over every other domain. Across seeds: mean, sample sd (ddof 1; None with one seed) and n.

**Gap closed** (per fold, from means over seeds): the share of stock nnU-Net's in-domain-to-shifted gap that
a row closes, ``(shifted_row - shifted_stock) / (in_domain_stock - shifted_stock)`` for Dice and surface
Dice (higher is better) and the same with signs flipped for HD95; 0 = no better than stock on shifted data,
1 = as good as stock in-domain, negative = worse than stock. None when stock has no gap.

**vs DA5**: nnU-Net's strong augmentation is what a user would pick instead of a method, so each row's shifted
Dice is compared with DA5's seed by seed (same seed and fold): the mean difference and the number of seeds in
which the row is better.

**Costs** (:func:`nnunet_ext.benchmark.runner.run_costs`): per row the median over its runs, and the ratio to
the median of stock ``nnUNetTrainer`` measured in the same benchmark.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from nnunet_ext.benchmark.rows import REFERENCE_ROW, Run

METRICS: tuple[str, ...] = ("dice", "surface_dice", "hd95")
HIGHER_IS_BETTER = {"dice": True, "surface_dice": True, "hd95": False}
DA5_ROW = "nnUNetTrainerDA5"
COST_KEYS: tuple[str, ...] = ("train_s_per_iteration", "predict_s_per_case", "model_step_max_rss_mb",
                              "predict_max_rss_mb", "model_numbers", "model_step_seconds")


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample sd and n of the finite values (None when there are none / fewer than two)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else None,
            "sd": statistics.stdev(finite) if len(finite) > 1 else None, "n": len(finite), "values": finite}


def domain_value(evaluation: dict[str, Any], domain: str, metric: str,
                 labels: Sequence[int] | None = None) -> float | None:
    """A domain's mean foreground ``metric`` in one ``evaluation.json`` (None if the domain has no value).

    With ``labels``: the mean over those labels of the domain's per-label means (None if any is missing).
    """
    entry = evaluation.get("domains", {}).get(domain)
    if entry is None:
        return None
    if labels is None:
        value = entry["foreground_mean"][metric]["mean"]
        return None if value is None or not math.isfinite(value) else float(value)
    values = [entry["labels"].get(str(label), {}).get(metric, {}).get("mean") for label in labels]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return statistics.fmean(float(v) for v in values)


def build_matrix(rows: Sequence[str], seeds: Sequence[int], fold_sources: dict[str, list[str]],
                 domains: Sequence[str], evaluations: dict[str, dict[str, Any]],
                 costs: dict[str, dict[str, Any]], labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Aggregate finished runs (see the module docstring).

    Args:
        rows: row strings in display order (stock first).
        seeds: the benchmark's seeds.
        fold_sources: fold -> its source domains.
        domains: every domain with test cases, in display order.
        evaluations: run key (:attr:`~nnunet_ext.benchmark.rows.Run.key`) -> ``evaluation.json`` content, for the
            finished runs.
        costs: run key -> costs of the run.
        labels: label values to average instead of every foreground label (:func:`domain_value`).

    Returns:
        ``{"folds": {fold: {"source_domains", "target_domains", "rows": {row: ...}}}, "costs": {row: ...}}``.
    """
    from nnunet_ext.benchmark.rows import parse_row

    parsed = {spec: parse_row(spec) for spec in rows}
    folds_out: dict[str, Any] = {}
    for fold, sources in fold_sources.items():
        targets = [d for d in domains if d not in sources]
        per_seed: dict[str, dict[int, dict[str, Any]]] = {}
        for spec in rows:
            per_seed[spec] = {}
            for seed in seeds:
                evaluation = evaluations.get(Run(parsed[spec], seed, fold).key)
                if evaluation is None:
                    continue
                values = {m: {d: domain_value(evaluation, d, m, labels) for d in domains} for m in METRICS}
                per_seed[spec][seed] = {
                    "domains": values,
                    "in_domain": {m: _mean([values[m][d] for d in sources]) for m in METRICS},
                    "shifted": {m: _mean([values[m][d] for d in targets]) for m in METRICS},
                }
        rows_out = {}
        for spec in rows:
            seeds_here = per_seed[spec]
            rows_out[spec] = {
                "kind": parsed[spec].kind,
                "seeds": sorted(seeds_here),
                "domains": {d: {m: stats([s["domains"][m][d] for s in seeds_here.values()]) for m in METRICS}
                            for d in domains},
                "in_domain": {m: stats([s["in_domain"][m] for s in seeds_here.values()]) for m in METRICS},
                "shifted": {m: stats([s["shifted"][m] for s in seeds_here.values()]) for m in METRICS},
            }
        reference = rows_out.get(REFERENCE_ROW)
        for spec in rows:
            rows_out[spec]["gap_closed"] = {m: _gap_closed(rows_out[spec], reference, m) for m in METRICS}
            rows_out[spec]["vs_da5"] = _paired(per_seed.get(spec, {}), per_seed.get(DA5_ROW, {}))
        folds_out[fold] = {"source_domains": list(sources), "target_domains": targets, "rows": rows_out}
    return {"folds": folds_out, "costs": _costs(rows, parsed, seeds, list(fold_sources), costs)}


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return statistics.fmean(finite) if finite and len(finite) == len(values) else None


def _gap_closed(row: dict[str, Any], reference: dict[str, Any] | None, metric: str) -> float | None:
    if reference is None:
        return None
    inside, shifted_ref, shifted = (reference["in_domain"][metric]["mean"], reference["shifted"][metric]["mean"],
                                    row["shifted"][metric]["mean"])
    if inside is None or shifted_ref is None or shifted is None:
        return None
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    gap = sign * (inside - shifted_ref)
    return None if gap <= 0 else sign * (shifted - shifted_ref) / gap


def _paired(row: dict[int, dict[str, Any]], da5: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Shifted Dice of the row minus DA5's, seed by seed."""
    diffs = [row[s]["shifted"]["dice"] - da5[s]["shifted"]["dice"] for s in sorted(set(row) & set(da5))
             if row[s]["shifted"]["dice"] is not None and da5[s]["shifted"]["dice"] is not None]
    return {"shifted_dice_diff": stats(diffs), "seeds_better": sum(d > 0 for d in diffs), "n": len(diffs)}


def _costs(rows: Sequence[str], parsed: dict, seeds: Sequence[int], folds: Sequence[str],
           costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    medians: dict[str, dict[str, float | None]] = {}
    for spec in rows:
        runs = [costs.get(Run(parsed[spec], seed, fold).key) for seed in seeds for fold in folds]
        runs = [c for c in runs if c]
        medians[spec] = {}
        for key in COST_KEYS:
            values = [c[key] for c in runs if c.get(key) is not None]
            medians[spec][key] = statistics.median(values) if values else None
    reference = medians.get(REFERENCE_ROW, {})
    out = {}
    for spec in rows:
        out[spec] = {}
        for key in COST_KEYS:
            value, ref = medians[spec][key], reference.get(key)
            out[spec][key] = {"median": value,
                              "ratio": value / ref if value is not None and ref not in (None, 0) else None}
    return out
