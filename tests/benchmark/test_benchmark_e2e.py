"""``nnext benchmark`` end to end: stock commands on the tiny brain-scanners data, matrix checked against the runs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnunet_ext.cli.main import main
from tests.conftest import SCANNERS_ID

pytestmark = pytest.mark.e2e

DATASET_ID = SCANNERS_ID
FOLD = "1"  # siemens_3 (fold order of splits_final.json: siemens_15, siemens_3, ge_15, ge_3, philips_15, philips_3)


def _nnext(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnunet_ext", "benchmark", *args], env=env, capture_output=True,
                          text=True)


@pytest.fixture
def nnext_here(monkeypatch, capsys):
    """``nnext benchmark ARGS`` in this process (no interpreter start-up: for the calls that train nothing)."""

    def run(args: list[str], env: dict[str, str]) -> SimpleNamespace:
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            monkeypatch.setenv(key, env[key])
        capsys.readouterr()
        try:
            code = main(["benchmark", *args])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.fixture(scope="module")
def benchmark_run(scanners_workspace, tmp_path_factory):
    ws = scanners_workspace
    dataset, env = ws.dataset_dir, ws.env
    root = tmp_path_factory.mktemp("benchmark")
    out = root / "bench"
    args = [str(DATASET_ID), "--budget", "micro", "--seeds", "0", "--folds", FOLD, "-o", str(out), "--disable-tta"]
    first = _nnext(args, env)
    return dataset, env, out, args, first


def test_matrix_is_complete_and_equals_the_per_case_evaluations(benchmark_run):
    dataset, env, out, args, first = benchmark_run
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert result["complete"] and result["n_runs"] == 3
    fold = result["matrix"]["folds"][FOLD]
    assert fold["source_domains"] == ["siemens_3"]
    assert sorted(fold["target_domains"]) == ["ge_15", "ge_3", "philips_15", "philips_3", "siemens_15"]
    assert list(fold["rows"]) == ["nnUNetTrainer", "nnUNetTrainerNoDA", "nnUNetTrainerDA5"]
    domains = json.loads((dataset / "domains.json").read_text())["cases"]
    for spec, row in fold["rows"].items():
        evaluation = json.loads((out / "runs" / spec / "seed0" / f"fold_{FOLD}" / "evaluation.json").read_text())
        for domain in ["siemens_3", *fold["target_domains"]]:
            per_case = [c["foreground_mean"]["dice"] for case, c in evaluation["cases"].items()
                        if domains[case]["domain"] == domain]
            assert len(per_case) == 2  # two test subjects per scanner in the tiny profile
            assert row["domains"][domain]["dice"]["mean"] == pytest.approx(statistics.fmean(per_case))
        shifted = statistics.fmean(row["domains"][d]["dice"]["mean"] for d in fold["target_domains"])
        assert row["shifted"]["dice"]["mean"] == pytest.approx(shifted)
        assert 0.0 <= row["in_domain"]["dice"]["mean"] <= 1.0
    costs = result["matrix"]["costs"]
    assert costs["nnUNetTrainer"]["train_s_per_iteration"]["ratio"] == pytest.approx(1.0)
    assert costs["nnUNetTrainerDA5"]["train_s_per_iteration"]["median"] > 0
    assert costs["nnUNetTrainer"]["model_step_max_rss_mb"]["median"] > 100  # a torch process, measured by wait4
    assert (out / "benchmark.md").read_text().count("| `nnUNetTrainerDA5` |") == 4  # Dice, surface Dice, HD95, costs
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    assert "nnext benchmark" in first.stderr and "3/4" in first.stderr  # plain progress lines through a pipe


def test_rerun_reuses_every_step_and_collect_only_gives_the_same_matrix(benchmark_run, nnext_here):
    dataset, env, out, args, first = benchmark_run
    before = json.loads((out / "benchmark.json").read_text())["matrix"]
    again = nnext_here(args, env)
    assert again.returncode == 0 and "train (" not in again.stderr and "predict " not in again.stderr
    collected = nnext_here([*args, "--collect-only"], env)
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert json.loads((out / "benchmark.json").read_text())["matrix"] == before


def test_print_commands_lists_the_stock_commands(benchmark_run, nnext_here):
    dataset, env, out, args, first = benchmark_run
    printed = nnext_here([a for a in args if a != "--disable-tta"]
                         + ["-tr", "fda@nnUNetTrainerDA5", "--print-commands"], env)
    assert printed.returncode == 0, printed.stderr[-2000:]
    lines = printed.stdout.splitlines()
    assert any(line.startswith("nnUNet_n_proc_DA=0 nnUNetv2_train 989 2d 1 -tr nnUNetTrainerDA5_microBudget_seed0")
               for line in lines)
    assert any(" fda attach " in line for line in lines)
    assert any(line.startswith("nnUNetv2_predict_from_modelfolder") for line in lines)


@pytest.mark.parametrize(("extra", "message"), [
    (["--budget", "nope"], "unknown budget 'nope'"),
    (["-tr", "nnUNetTrainerDoesNotExist"], "'nnUNetTrainerDoesNotExist' is neither a trainer"),
    (["-tr", "warp@nnUNetTrainer"], "nor a test-time method (fda)"),
    (["--shard", "2/2"], "--shard must be I/N"),
])
def test_bad_input_is_refused_before_anything_runs(benchmark_run, extra, message, nnext_here):
    dataset, env, out, args, first = benchmark_run
    refused = nnext_here([*args, *extra], env)
    assert refused.returncode == 2 and message in refused.stderr


def test_dataset_without_domains_or_test_cases_is_refused(benchmark_run, tmp_path, nnext_here):
    dataset, env, out, args, first = benchmark_run
    raw = Path(env["nnUNet_raw"])
    bare = raw / "Dataset988_Bare"
    bare.mkdir()
    (bare / "dataset.json").write_text((dataset / "dataset.json").read_text())
    refused = nnext_here(["988", "-o", str(tmp_path / "b")], env)
    assert refused.returncode == 2 and "domains.json" in refused.stderr
    metadata = json.loads((dataset / "domains.json").read_text())
    for info in metadata["cases"].values():
        if info["domain"] == "ge_3" and info["split"] == "test":
            info["split"], info["subset"] = "train", "train"
    (bare / "domains.json").write_text(json.dumps(metadata))
    refused = nnext_here(["988", "-o", str(tmp_path / "b")], env)
    assert refused.returncode == 2 and "domains without test cases: ['ge_3']" in refused.stderr
    assert not (tmp_path / "b" / "benchmark.json").exists()



def test_fold_all_runs_nnunets_fold_all_and_its_matrix_has_every_domain_in_domain(benchmark_run, tmp_path,
                                                                                   nnext_here):
    """``--folds all``: nnU-Net's fold ``all`` (every training case; no splits file needed) in every command, and
    a matrix whose source domains are all scanners; before any run finished, --collect-only says incomplete."""
    dataset, env, _, _, _ = benchmark_run
    out = tmp_path / "bench_all"
    args = [str(DATASET_ID), "--budget", "micro", "--seeds", "0", "--folds", "all", "-o", str(out), "--disable-tta"]
    printed = nnext_here([*args, "-tr", "fda@nnUNetTrainer", "--print-commands"], env)
    assert printed.returncode == 0, printed.stderr[-2000:]
    lines = printed.stdout.splitlines()
    assert any(line.startswith("nnUNet_n_proc_DA=0 nnUNetv2_train 989 2d all -tr nnUNetTrainer_microBudget_seed0")
               for line in lines)
    assert any(" fda attach " in line and line.endswith(" -f all") for line in lines)
    assert any(line.startswith("nnUNetv2_predict ") and " -f all " in line for line in lines)

    collected = nnext_here([*args, "--collect-only"], env)
    assert collected.returncode == 1 and "INCOMPLETE: 0 of 3 runs" in collected.stdout, collected.stderr[-2000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert not result["complete"] and len(result["problems"]) == 3
    fold = result["matrix"]["folds"]["all"]
    scanners = list(json.loads((dataset / "domains.json").read_text())["domains"])
    assert fold["source_domains"] == scanners and fold["target_domains"] == []


def test_labels_matrix_is_written_beside_the_default_one(benchmark_run, nnext_here):
    dataset, env, out, args, first = benchmark_run
    before = (out / "benchmark.json").read_text()
    labelled = nnext_here([*args, "--collect-only", "--labels", "2", "3"], env)
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    assert (out / "benchmark.json").read_text() == before
    result = json.loads((out / "benchmark_labels_2_3.json").read_text())
    assert result["labels"] == {"2": "grey matter", "3": "white matter"}
    evaluation = json.loads((out / "runs" / "nnUNetTrainer" / "seed0" / f"fold_{FOLD}" / "evaluation.json").read_text())
    expected = statistics.fmean(evaluation["domains"]["ge_3"]["labels"][label]["dice"]["mean"] for label in "23")
    row = result["matrix"]["folds"][FOLD]["rows"]["nnUNetTrainer"]
    assert row["domains"]["ge_3"]["dice"]["mean"] == pytest.approx(expected)
    assert "mean over the labels 2 (grey matter), 3 (white matter)" in (out / "benchmark_labels_2_3.md").read_text()
    refused = nnext_here([*args, "--collect-only", "--labels", "0"], env)
    assert refused.returncode == 2 and "each must be a foreground label" in refused.stderr
