"""Continual-learning evaluation: the accuracy matrix ``R``, mean Dice, BWT, FWT and per-stage Dice curves.

A method trained over a stream of ``N`` stages (:mod:`nnunet_ext.streams`) is evaluated after every stage
on the held-out test cases of every stage. ``R[i][j]`` is the mean Dice of the model *after training stage
i* on the test cases of *stage j* (rows: after-stage ``i``; columns: test stage ``j``; both 0-based).
Per case, Dice is the mean over the foreground labels that are not absent from both masks
(``foreground_mean`` of :mod:`nnunet_ext.evaluation.per_domain`); ``R[i][j]`` averages it over the cases.

Summary metrics (``N >= 2`` for BWT, FWT and stage gain; NaN otherwise):

- **Dice** ``= 1/N sum_j R[N-1][j]``: the final model on the test data of all stages (ODEx paper, Table 1).
- **BWT** (backward transfer, Lopez-Paz & Ranzato 2017, GEM; Diaz-Rodriguez et al. 2018)
  ``= 1/(N-1) sum_{j<N-1} (R[N-1][j] - R[j][j])``: negative when later stages make the model forget.
- **FWT** (forward transfer, Lopez-Paz & Ranzato 2017) ``= 1/(N-1) sum_{j>=1} (R[j-1][j] - b_j)``:
  how well the model does on stage ``j`` *before* training on it, relative to a baseline ``b_j`` (GEM:
  a randomly initialised model; any model evaluated on every stage's test data may serve, e.g. a model
  trained on stage 0 only). Without a baseline FWT is not defined and is reported as NaN.
  :func:`forward_transfer` also offers Diaz-Rodriguez et al.'s variant
  ``= 2/(N(N-1)) sum_{i<j} (R[i][j] - b_j)`` (all models trained before stage ``j``).
- **Stage gain** ``= 1/(N-1) sum_{j>=1} (R[j][j] - R[j-1][j])``: what training on stage ``j`` adds on
  stage ``j``'s test data (plasticity). This is our reading of the ODEx paper's sentence "FWT measures
  what impact training on each stage t_i has on test data T_i"; the paper gives no formula, so we report
  it under its own name and never as FWT.

The ``±`` values are the standard deviations (ddof 0) of the averaged terms (over test stages for Dice,
over ``j`` for BWT, FWT and stage gain), our reading of the paper's ``±``.

>>> R = np.array([[0.8, 0.5], [0.7, 0.9]])
>>> summary = continual_summary(R, baseline=[0.1, 0.2])
>>> round(summary["dice"], 3), round(summary["bwt"], 3), round(summary["fwt"], 3), round(summary["stage_gain"], 3)
(0.8, -0.1, 0.3, 0.4)
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_ext import __version__
from nnunet_ext.domains import DomainMetadata
from nnunet_ext.streams import Stream
from nnunet_ext.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from nnunet_ext.utils.plotting import default_style

RESULT_FORMAT_VERSION = 1
#: placeholder of the after-stage index in prediction folder patterns
STAGE_PLACEHOLDER = "{stage}"

FwtVariant = Literal["lopez_paz", "diaz_rodriguez"]

DEFINITIONS: dict[str, str] = {
    "R": "R[i][j] = mean over the test cases of stage j of the per-case foreground-mean Dice of the model after "
         "training stage i",
    "dice": "1/N sum_j R[N-1][j] (final model, test data of all stages)",
    "bwt": "1/(N-1) sum_{j<N-1} (R[N-1][j] - R[j][j]) (Lopez-Paz & Ranzato 2017)",
    "fwt": "1/(N-1) sum_{j>=1} (R[j-1][j] - b_j) with baseline b_j (Lopez-Paz & Ranzato 2017); NaN without baseline",
    "stage_gain": "1/(N-1) sum_{j>=1} (R[j][j] - R[j-1][j]) (what training on stage j adds on stage j)",
    "std": "standard deviation (ddof 0) of the averaged terms",
}


def _check_matrix(R: Any) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"R must be a square N x N matrix (after-stage i, test stage j), got shape {R.shape}")
    return R


def _check_baseline(baseline: Any, n: int) -> np.ndarray:
    b = np.asarray(baseline, dtype=float)
    if b.shape != (n,):
        raise ValueError(f"baseline must hold one value b_j per stage ({n}), got shape {b.shape}")
    return b


def _mean_std(terms: np.ndarray) -> tuple[float, float]:
    if terms.size == 0:
        return math.nan, math.nan
    return float(terms.mean()), float(terms.std())


def final_dice_terms(R: Any) -> np.ndarray:
    """The last row of ``R``: the final model on every stage's test data."""
    return _check_matrix(R)[-1].copy()


def backward_transfer_terms(R: Any) -> np.ndarray:
    """``R[N-1][j] - R[j][j]`` for ``j < N-1`` (empty for ``N = 1``)."""
    R = _check_matrix(R)
    n = R.shape[0]
    return np.array([R[n - 1, j] - R[j, j] for j in range(n - 1)])


def forward_transfer_terms(R: Any, baseline: Sequence[float], variant: FwtVariant = "lopez_paz") -> np.ndarray:
    """The terms FWT averages (see the module docstring).

    Args:
        R: the ``N x N`` matrix.
        baseline: ``b_j``, one value per stage (``b_0`` is never used).
        variant: ``"lopez_paz"`` (``R[j-1][j] - b_j``, ``j >= 1``) or ``"diaz_rodriguez"``
            (``R[i][j] - b_j`` for every ``i < j``).

    Raises:
        ValueError: bad shapes or an unknown variant.
    """
    R = _check_matrix(R)
    n = R.shape[0]
    b = _check_baseline(baseline, n)
    if variant == "lopez_paz":
        return np.array([R[j - 1, j] - b[j] for j in range(1, n)])
    if variant == "diaz_rodriguez":
        return np.array([R[i, j] - b[j] for j in range(1, n) for i in range(j)])
    raise ValueError(f"variant must be 'lopez_paz' or 'diaz_rodriguez', got {variant!r}")


def stage_gain_terms(R: Any) -> np.ndarray:
    """``R[j][j] - R[j-1][j]`` for ``j >= 1``."""
    R = _check_matrix(R)
    return np.array([R[j, j] - R[j - 1, j] for j in range(1, R.shape[0])])


def backward_transfer(R: Any) -> float:
    """BWT ``= 1/(N-1) sum_{j<N-1} (R[N-1][j] - R[j][j])``; NaN for ``N = 1``."""
    return _mean_std(backward_transfer_terms(R))[0]


def forward_transfer(R: Any, baseline: Sequence[float], variant: FwtVariant = "lopez_paz") -> float:
    """FWT, see :func:`forward_transfer_terms`; NaN for ``N = 1``."""
    return _mean_std(forward_transfer_terms(R, baseline, variant))[0]


def continual_summary(R: Any, baseline: Sequence[float] | None = None,
                      fwt_variant: FwtVariant = "lopez_paz") -> dict[str, float]:
    """Dice, BWT, FWT and stage gain of one method, each with the standard deviation of its terms.

    Args:
        R: the ``N x N`` matrix (NaN entries propagate into the metrics that use them).
        baseline: ``b_j`` per stage for FWT, or ``None`` (FWT is then NaN).
        fwt_variant: see :func:`forward_transfer_terms`.

    Returns:
        ``{"dice", "dice_std", "bwt", "bwt_std", "fwt", "fwt_std", "stage_gain", "stage_gain_std", "n_stages"}``.
    """
    R = _check_matrix(R)
    out: dict[str, float] = {"n_stages": R.shape[0]}
    fwt = (forward_transfer_terms(R, baseline, fwt_variant) if baseline is not None else np.array([math.nan]))
    for name, terms in (("dice", final_dice_terms(R)), ("bwt", backward_transfer_terms(R)), ("fwt", fwt),
                        ("stage_gain", stage_gain_terms(R))):
        out[name], out[f"{name}_std"] = _mean_std(terms)
    return out


def stage_domains(stream: Stream) -> DomainMetadata:
    """Domain metadata that makes every test case's domain its stage (``stage_0``, ``stage_1``, ...)."""
    meta = DomainMetadata()
    for stage in stream.stages:
        meta.add_domain(f"stage_{stage.index}", f"test cases of stage {stage.index}", simulated=False)
        for case in stage.test:
            meta.add_case(case, f"stage_{stage.index}", "test", subject=case)
    return meta


def _check_test_lists(stream: Stream) -> None:
    where = str(stream.source) if stream.source is not None else "<stream>"
    empty = [s.index for s in stream.stages if not s.test]
    if empty:
        raise ValueError(f"{where}: stage(s) {empty} have no 'test' cases; continual evaluation needs held-out test "
                         f"cases in every stage. Rebuild the stream with 'nnext stream ...' (it deals test subjects "
                         f"to stages) or add 'test' lists")


def stage_means(stream: Stream, case_dice: Mapping[str, float]) -> np.ndarray:
    """Mean Dice of one model on each stage's test cases (NaN cases, i.e. both masks empty, are left out).

    Args:
        stream: the stream; every stage needs ``test`` cases.
        case_dice: test case id -> Dice of the model.

    Returns:
        Shape ``(N,)``; NaN for a stage whose cases are all NaN.

    Raises:
        ValueError: a stage has no test cases, or ``case_dice`` lacks test cases (up to five named).
    """
    _check_test_lists(stream)
    missing = [c for s in stream.stages for c in s.test if c not in case_dice]
    if missing:
        raise ValueError(f"no Dice for {len(missing)} test case(s) of the stream: {missing[:5]}; evaluate the model "
                         f"on the test cases of every stage (the union of the stages' 'test' lists)")
    means = []
    for stage in stream.stages:
        values = np.array([case_dice[c] for c in stage.test], dtype=float)
        means.append(float(np.nanmean(values)) if np.isfinite(values).any() else math.nan)
    return np.array(means)


def stage_matrix(stream: Stream, case_dice: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``R[i][j]`` from per-case Dice: ``case_dice[i][case]`` is the model after stage ``i`` on test ``case``.

    Raises:
        ValueError: ``case_dice`` does not hold one mapping per stage, or see :func:`stage_means`.
    """
    if len(case_dice) != len(stream):
        raise ValueError(f"need per-case Dice of the model after each of the {len(stream)} stages, got "
                         f"{len(case_dice)}")
    return np.stack([stage_means(stream, d) for d in case_dice])


def stage_folders(pattern: str | os.PathLike, num_stages: int, require_placeholder: bool = True) -> list[Path]:
    """Prediction folders of the model after each stage: ``pattern`` with ``{stage}`` replaced by 0, 1, ...

    Raises:
        ValueError: ``pattern`` lacks ``{stage}`` while ``require_placeholder`` is True.
    """
    pattern = os.fspath(pattern)
    if STAGE_PLACEHOLDER not in pattern:
        if require_placeholder:
            raise ValueError(f"prediction folder pattern {pattern!r} must contain {STAGE_PLACEHOLDER} (the "
                             f"after-stage index), e.g. preds/seq/after_stage{STAGE_PLACEHOLDER}")
        return [Path(pattern)] * num_stages
    return [Path(pattern.replace(STAGE_PLACEHOLDER, str(i))) for i in range(num_stages)]


def case_dice_of_folder(stream: Stream, pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                        dataset_json: dict[str, Any] | str | os.PathLike, num_processes: int = 1) -> dict[str, float]:
    """Per-case foreground-mean Dice of a prediction folder on the union of the stream's test cases.

    Uses :func:`nnunet_ext.evaluation.per_domain.evaluate_folder` (same metrics, checks and error messages).

    Raises:
        ValueError: a stage has no test cases, or any problem :func:`evaluate_folder` finds (missing
            predictions or references, bad files), all listed.
    """
    from nnunet_ext.evaluation.per_domain import evaluate_folder

    _check_test_lists(stream)
    cases = [c for s in stream.stages for c in s.test]
    result = evaluate_folder(pred_dir, ref_dir, dataset_json, stage_domains(stream), cases=cases,
                             num_processes=num_processes)
    return {case: entry["foreground_mean"]["dice"] for case, entry in result["cases"].items()}


def continual_result(
    stream: Stream,
    methods: Mapping[str, Sequence[Mapping[str, float]]],
    baseline: Sequence[Mapping[str, float]] | None = None,
    baseline_source: str = "",
    pool_sizes: Mapping[str, int] | None = None,
    fwt_variant: FwtVariant = "lopez_paz",
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The continual-evaluation result of several methods (written as ``continual.json``).

    Args:
        stream: the stream the methods were trained on.
        methods: method name -> per-case Dice after each stage (``[{case: dice}, ...]``, one per stage).
        baseline: per-case Dice of the FWT baseline, one mapping per stage (``b_j`` uses mapping ``j``;
            repeat one mapping for a single baseline model), or ``None``.
        baseline_source: description of the baseline (folders, model).
        pool_sizes: method name -> number of models in its pool (``|Θ|``), where known.
        fwt_variant: see :func:`forward_transfer_terms`.
        settings: extra settings to record (inputs, paths).

    Returns:
        ``{"format_version", "settings", "definitions", "stages", "baseline", "methods": {name: {"R",
        "summary", "pool_size", "per_case_dice"}}}``.

    Raises:
        ValueError: no method, or see :func:`stage_matrix`.
    """
    if not methods:
        raise ValueError("give at least one method (NAME=PREDICTION_FOLDER_PATTERN)")
    pool_sizes = dict(pool_sizes or {})
    unknown = sorted(set(pool_sizes) - set(methods))
    if unknown:
        raise ValueError(f"pool sizes given for unknown methods {unknown}; known methods: {list(methods)}")
    b = None
    if baseline is not None:
        if len(baseline) != len(stream):
            raise ValueError(f"baseline needs per-case Dice for each of the {len(stream)} stages, got {len(baseline)}")
        b = np.array([stage_means(stream, baseline[j])[j] for j in range(len(stream))])
    out_methods = {}
    for name, case_dice in methods.items():
        R = stage_matrix(stream, case_dice)
        out_methods[name] = {"R": R.tolist(), "summary": continual_summary(R, b, fwt_variant),
                             "pool_size": pool_sizes.get(name),
                             "per_case_dice": [dict(sorted(d.items())) for d in case_dice]}
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "settings": {"stream": str(stream.source) if stream.source else None, "fwt_variant": fwt_variant,
                     "nnunet_ext_version": __version__, **dict(settings or {})},
        "definitions": DEFINITIONS,
        "stages": [{"stage": s.index, "test": list(s.test)} for s in stream.stages],
        "baseline": None if b is None else {"b": b.tolist(), "source": baseline_source,
                                            "per_case_dice": [dict(sorted(d.items())) for d in baseline]},
        "methods": out_methods,
    }


def write_continual_report(result: dict[str, Any], out_dir: str | os.PathLike,
                           title: str = "Continual evaluation") -> dict[str, Path]:
    """Write ``continual.json``, ``continual.md`` and ``continual.png`` atomically into ``out_dir``.

    All three are rendered before the first is written.

    Returns:
        ``{"json": path, "md": path, "png": path}``.
    """
    markdown = markdown_report(result, title)
    png = curves_png(result["methods"], title)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "continual.json", "md": out_dir / "continual.md", "png": out_dir / "continual.png"}
    write_json_atomic(paths["json"], result)
    write_text_atomic(paths["md"], markdown)
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths


def markdown_report(result: dict[str, Any], title: str = "Continual evaluation") -> str:
    """Markdown: the summary table over methods, then every method's ``R`` matrix.

    Args:
        result: the dict :func:`continual_result` returns.
        title: heading.
    """
    def cell(mean: float, std: float) -> str:
        return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"

    methods = result["methods"]
    with_pool = any(m.get("pool_size") is not None for m in methods.values())
    lines = [f"# {title}", "", "| method | Dice ↑ | BWT ↑ | FWT ↑ | stage gain ↑ |" + (" \\|Θ\\| |" if with_pool else ""),
             "|---|---|---|---|---|" + ("---|" if with_pool else "")]
    for name, m in methods.items():
        s = m["summary"]
        row = [name] + [cell(s[k], s[f"{k}_std"]) for k in ("dice", "bwt", "fwt", "stage_gain")]
        if with_pool:
            row.append("" if m.get("pool_size") is None else str(m["pool_size"]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Definitions (N stages, R[i][j]: model after stage i on the test cases of stage j):", ""]
    lines += [f"- **{k}**: {v}" for k, v in result.get("definitions", DEFINITIONS).items()]
    if result.get("baseline") is not None:
        b = ", ".join("n/a" if math.isnan(v) else f"{v:.3f}" for v in result["baseline"]["b"])
        lines += [f"- baseline b_j = {b} ({result['baseline']['source']})"]
    for name, m in methods.items():
        R = np.asarray(m["R"], dtype=float)
        n = R.shape[0]
        lines += ["", f"## {name}: R (rows: after stage i; columns: test stage j)", "",
                  "| after stage | " + " | ".join(f"test {j}" for j in range(n)) + " |",
                  "|---|" + "---|" * n]
        lines += ["| " + " | ".join([str(i)] + ["n/a" if math.isnan(v) else f"{v:.3f}" for v in R[i]]) + " |"
                  for i in range(n)]
    return "\n".join(lines) + "\n"


@default_style()
def curves_png(methods: dict[str, Any], title: str = "Per-stage Dice") -> bytes:
    """One panel per test stage ``j``: Dice on stage ``j``'s test data after each training stage, one line per method.

    A dashed vertical line marks the stage ``j`` itself (left of it: forward transfer; right: forgetting).

    Args:
        methods: method name -> dict with ``R`` (``N x N``).
        title: figure title.

    Returns:
        PNG bytes.
    """
    n = len(next(iter(methods.values()))["R"])
    fig = Figure(figsize=(2.6 * n + 1.8, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True))
    x = np.arange(n)
    for j, ax in enumerate(axes):
        for k, (name, m) in enumerate(methods.items()):
            ax.plot(x, np.asarray(m["R"], dtype=float)[:, j], marker="o", ms=4, color=f"C{k % 10}", label=name)
        ax.axvline(j, color="grey", ls="--", lw=0.8)
        ax.set_title(f"test data of stage {j}", fontsize="medium")
        ax.set_xticks(x)
        ax.set_xlabel("after training stage")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
