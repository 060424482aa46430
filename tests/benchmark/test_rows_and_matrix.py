"""Benchmark logic without nnU-Net runs: rows, shards, matrix aggregation, report rendering."""

from __future__ import annotations

import math

import pytest

from nnunet_ext.benchmark import matrix, report
from nnunet_ext.benchmark.rows import (
    BASELINE_ROWS,
    Run,
    parse_row,
    parse_shard,
    plan_runs,
    shard_runs,
    with_baselines,
)


def test_parse_row_kinds():
    assert parse_row("nnUNetTrainerGIN").kind == "train"
    finetune = parse_row("nnUNetTrainerStyleCurriculum_finetune@nnUNetTrainer")
    assert (finetune.kind, finetune.trainer, finetune.base) == ("finetune", "nnUNetTrainerStyleCurriculum_finetune",
                                                                "nnUNetTrainer")
    attach = parse_row("fda@nnUNetTrainerDA5")
    assert (attach.kind, attach.trainer, attach.base) == ("attach", None, "nnUNetTrainerDA5")
    assert attach.slug == "fda-on-nnUNetTrainerDA5"


@pytest.mark.parametrize("spec", ["", "a@b@c", "nnUNet__Trainer", "fda", "9abc", "x y", "fda@"])
def test_parse_row_refuses(spec):
    with pytest.raises(ValueError, match="row"):
        parse_row(spec)


def test_baselines_first_and_bases_added():
    specs = [r.spec for r in with_baselines([parse_row("fda@nnUNetTrainerGIN"), parse_row("nnUNetTrainerDA5")])]
    assert specs[:3] == list(BASELINE_ROWS)
    assert specs.index("nnUNetTrainerGIN") < specs.index("fda@nnUNetTrainerGIN")
    assert len(specs) == len(set(specs)) == 5


@pytest.mark.parametrize("value", ["1/1", "a/2", "2", "-1/3", "3/2"])
def test_parse_shard_refuses(value):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(value)


def test_shards_partition_runs_and_keep_dependents_with_their_base():
    rows = with_baselines([parse_row("fda@nnUNetTrainerDA5"), parse_row("nnUNetTrainerX_finetune@nnUNetTrainer")])
    runs = plan_runs(rows, [0, 1, 2], ["0"])
    shards = [shard_runs(runs, i, 4) for i in range(4)]
    keys = [r.key for s in shards for r in s]
    assert sorted(keys) == sorted(r.key for r in runs)  # a partition
    for shard in shards:
        mine = {(r.row.spec, r.seed) for r in shard}
        for run in shard:
            if run.row.base is not None:
                assert (run.row.base, run.seed) in mine


def _evaluation(values: dict[str, float]) -> dict:
    def entry(v):
        return {"mean": v, "std": 0.0, "median": v, "n": 4}

    return {"domains": {d: {"foreground_mean": {"dice": entry(v), "surface_dice": entry(v),
                                                "hd95": entry(10 * (1 - v))}} for d, v in values.items()}}


def test_matrix_in_domain_shifted_gap_and_da5():
    domains = ["A", "B", "C"]
    rows = ["nnUNetTrainer", "nnUNetTrainerNoDA", "nnUNetTrainerDA5", "nnUNetTrainerM"]
    scores = {  # per row and seed: dice on A (source), B, C
        "nnUNetTrainer": [(0.9, 0.5, 0.7), (0.9, 0.5, 0.7)],
        "nnUNetTrainerNoDA": [(0.9, 0.3, 0.5), (0.9, 0.3, 0.5)],
        "nnUNetTrainerDA5": [(0.9, 0.7, 0.7), (0.9, 0.7, 0.7)],
        "nnUNetTrainerM": [(0.9, 0.8, 0.8), (0.9, 0.6, 0.6)],
    }
    evaluations, costs = {}, {}
    for spec, per_seed in scores.items():
        for seed, values in enumerate(per_seed):
            key = Run(parse_row(spec), seed, "0").key
            evaluations[key] = _evaluation(dict(zip(domains, values)))
            costs[key] = {"train_s_per_iteration": 2.0 if spec == "nnUNetTrainerM" else 1.0, "model_numbers": 10}
    result = matrix.build_matrix(rows, [0, 1], {"0": ["A"]}, domains, evaluations, costs)
    fold = result["folds"]["0"]
    assert fold["target_domains"] == ["B", "C"]
    stock = fold["rows"]["nnUNetTrainer"]
    assert stock["in_domain"]["dice"]["mean"] == pytest.approx(0.9)
    assert stock["shifted"]["dice"]["mean"] == pytest.approx(0.6)
    m = fold["rows"]["nnUNetTrainerM"]
    assert m["shifted"]["dice"]["mean"] == pytest.approx(0.7)
    assert m["shifted"]["dice"]["sd"] == pytest.approx(math.sqrt(2) * 0.1)
    assert m["gap_closed"]["dice"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))
    assert fold["rows"]["nnUNetTrainerNoDA"]["gap_closed"]["dice"] == pytest.approx(-2 / 3)
    assert m["gap_closed"]["hd95"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))  # lower is better, same share
    assert m["vs_da5"]["seeds_better"] == 1 and m["vs_da5"]["n"] == 2
    assert m["vs_da5"]["shifted_dice_diff"]["mean"] == pytest.approx(0.0)
    assert result["costs"]["nnUNetTrainerM"]["train_s_per_iteration"]["ratio"] == pytest.approx(2.0)
    assert result["costs"]["nnUNetTrainer"]["model_numbers"]["ratio"] == pytest.approx(1.0)


def test_matrix_with_missing_runs_and_report_says_incomplete():
    domains = ["A", "B"]
    rows = list(BASELINE_ROWS)
    key = Run(parse_row("nnUNetTrainer"), 0, "0").key
    built = matrix.build_matrix(rows, [0], {"0": ["A"]}, domains, {key: _evaluation({"A": 0.9, "B": 0.6})}, {})
    assert built["folds"]["0"]["rows"]["nnUNetTrainerDA5"]["shifted"]["dice"]["mean"] is None
    result = {"complete": False, "n_runs": 3, "problems": {"x/seed0/fold_0": {"status": "failed", "error": "boom|x"}},
              "command": "nnext benchmark 1", "machine": "m", "versions": "v",
              "budget": {"description": "tiny"},
              "settings": {"dataset": "Dataset001_X", "budget": "smoke", "configuration": "2d", "plans": "nnUNetPlans",
                           "seeds": [0], "folds": ["0"], "device": "cpu", "tta": False, "tolerance_mm": 2.0},
              "matrix": built}
    text = report.markdown(result)
    assert "INCOMPLETE" in text and "boom\\|x" in text
    assert "| `nnUNetTrainer` | 0.900 | 0.600 | 0.600 | +0.00 |" in text
    png = report.figure_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_average_the_chosen_labels_per_domain_and_name_the_outputs():
    def entry(v):
        return {"mean": v, "std": 0.0, "median": v, "n": 4}

    evaluation = {"domains": {"A": {
        "foreground_mean": {"dice": entry(0.5), "surface_dice": entry(0.5), "hd95": entry(9.0)},
        "labels": {"1": {"dice": entry(0.0)}, "2": {"dice": entry(0.8)}, "3": {"dice": entry(0.6)}}}}}
    assert matrix.domain_value(evaluation, "A", "dice") == pytest.approx(0.5)
    assert matrix.domain_value(evaluation, "A", "dice", [2, 3]) == pytest.approx(0.7)
    assert matrix.domain_value(evaluation, "A", "dice", [2, 4]) is None  # a label the evaluation lacks
    assert matrix.domain_value(evaluation, "B", "dice", [2]) is None
    assert report.stem_for(None) == "benchmark" and report.stem_for([2, 3]) == "benchmark_labels_2_3"
