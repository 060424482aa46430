"""Subject-grouped splits, and a converted dataset through the stock nnU-Net planner (2d and 3d_fullres)
and through ``nnext evaluate``'s per-domain aggregation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nnunet_ext.dataset_conversion.mnms import convert_mnms
from nnunet_ext.dataset_conversion.splits import (
    check_no_straddling,
    grouped_folds,
    holdout_subjects,
    install_splits,
    single_source_folds,
)
from nnunet_ext.evaluation.per_domain import evaluate_folder
from nnunet_ext.utils import nnunet_commands as cmd
from tests.dataset_conversion.layouts import make_mnms


def test_grouped_folds_keep_subjects_together_and_cover_everything() -> None:
    cases = {f"p{i}_frame{f:02d}": f"p{i}" for i in range(7) for f in (0, 4)}
    folds = grouped_folds(cases, num_folds=3, seed=1)
    assert len(folds) == 3
    assert sorted(c for f in folds for c in f["val"]) == sorted(cases)
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == set(cases)
    assert folds == grouped_folds(cases, num_folds=3, seed=1)
    assert len(grouped_folds({"a": "a", "b": "b"}, num_folds=5)) == 2
    with pytest.raises(ValueError, match="straddle"):
        check_no_straddling([{"train": ["p0_frame00"], "val": ["p0_frame04"]}], cases)
    with pytest.raises(ValueError, match="at least 2"):
        grouped_folds({"a": "s", "b": "s"})
    with pytest.raises(ValueError, match="num_folds"):
        grouped_folds(cases, num_folds=1)


def test_holdout_subjects() -> None:
    subjects = [f"s{i}" for i in range(10)]
    assert len(holdout_subjects(subjects, 0.2, 0)) == 2
    assert holdout_subjects(subjects, 0.2, 0) == holdout_subjects(list(reversed(subjects)), 0.2, 0)
    assert holdout_subjects(subjects, 0.0, 0) == set() and holdout_subjects(["one"], 0.5, 0) == set()
    with pytest.raises(ValueError, match="test fraction"):
        holdout_subjects(subjects, 1.0, 0)


def test_single_source_folds_train_and_validate_on_one_domain_each() -> None:
    domains = ["ge_3", "siemens_15", "philips_3"]
    subset = {"s0": "train", "s1": "train", "s2": "val"}
    case_domain = {f"{d}_{s}": d for d in domains for s in subset}
    case_subject = {c: c.rsplit("_", 1)[1] for c in case_domain}
    case_subset = {c: subset[case_subject[c]] for c in case_domain}
    folds = single_source_folds(case_domain, case_subject, case_subset, domains)
    assert folds[1] == {"train": ["siemens_15_s0", "siemens_15_s1"], "val": ["siemens_15_s2"]}
    assert [{case_domain[c] for c in f["train"] + f["val"]} for f in folds] == [{d} for d in domains]
    with pytest.raises(ValueError, match=r"domain 'canon_3' has no train and no val cases"):
        single_source_folds(case_domain, case_subject, case_subset, [*domains, "canon_3"])
    leaky = case_subset | {"ge_3_s1": "val", "ge_3_s2": "train"}  # s1, s2 swap roles on ge_3 only
    with pytest.raises(ValueError, match=r"\['s1', 's2'\] train in one fold and validate in another"):
        single_source_folds(case_domain, case_subject, leaky, domains)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        single_source_folds(case_domain, case_subject, case_subset | {"ge_3_s0": "test"}, domains)


def test_install_splits_copies_into_the_preprocessed_dataset(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw" / "Dataset992_X"
    raw.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="splits_final.json does not exist"):
        install_splits(raw, tmp_path / "pre")
    (raw / "splits_final.json").write_text('[{"train": ["a"], "val": ["b"]}]')
    with pytest.raises(FileNotFoundError, match=r"nnUNetv2_plan_and_preprocess -d 992 first"):
        install_splits(raw, tmp_path / "pre")
    (tmp_path / "pre" / raw.name).mkdir(parents=True)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(ValueError, match="export nnUNet_preprocessed"):
        install_splits(raw)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    target = install_splits(raw)
    assert target == tmp_path / "pre" / raw.name / "splits_final.json"
    assert json.loads(target.read_text()) == [{"train": ["a"], "val": ["b"]}]


@pytest.mark.e2e
def test_planner_installs_our_splits_and_evaluate_uses_domains(tmp_path: Path) -> None:
    raw, pre, res = tmp_path / "nnUNet_raw", tmp_path / "nnUNet_preprocessed", tmp_path / "nnUNet_results"
    for d in (raw, pre, res):
        d.mkdir()
    make_mnms(tmp_path / "MnM")
    folder = convert_mnms(tmp_path / "MnM", 114, raw, test_fraction=0.0, num_folds=2)
    env = cmd.nnunet_env(raw, pre, res)
    # no --verify_dataset_integrity (SimpleITK readability is checked in test_mnms): it only adds a worker pool
    cmd.run_command(["nnUNetv2_plan_and_preprocess", "-d", "114", "-c", "2d", "3d_fullres", "-np", "1", "1"], env,
                    tmp_path / "plan.log")
    installed = pre / folder.name / "splits_final.json"
    assert json.loads(installed.read_text()) == json.loads((folder / "splits_final.json").read_text())
    plans = json.loads((pre / folder.name / "nnUNetPlans.json").read_text())
    assert {"2d", "3d_fullres"} <= set(plans["configurations"])
    train = sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / "imagesTr").iterdir())
    for configuration in ("2d", "3d_fullres"):
        data = pre / folder.name / plans["configurations"][configuration]["data_identifier"]
        assert {p.name.split(".")[0] for p in data.iterdir()} >= set(train), configuration
    # nnext evaluate aggregates the test cases per vendor from domains.json beside labelsTs
    predictions = tmp_path / "pred"
    shutil.copytree(folder / "labelsTs", predictions)
    result = evaluate_folder(predictions, folder / "labelsTs", folder, folder)
    assert set(result["domains"]) == {"vendor_A", "vendor_C", "vendor_D"}
    assert result["overall"]["foreground_mean"]["dice"]["mean"] == pytest.approx(1.0)
