"""Fold ``all`` end to end: ``nnUNetv2_train D 2d all`` -> ``nnext fda attach`` (default donors),
``nnext fda select-beta -f all`` and ``nnext evaluate-continual --model -f all``, on tiny real MRI (CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.domains import load_domains
from nnunet_ext.streams import Stage, Stream, write_stream
from nnunet_ext.utils import nnunet_commands as cmd
from tests.conftest import SMOKE_TRAINER

pytestmark = pytest.mark.e2e


def _nnext(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_fold_all_model_through_fda_and_evaluate_continual(tiny_workspace, tmp_path: Path) -> None:
    ws = tiny_workspace
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", "all", SMOKE_TRAINER), dict(ws.env, nnUNet_n_proc_DA="0"),
                    tmp_path / "train_all.log")
    model = ws.model_dir()
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    n_training = json.loads((ws.dataset_dir / "dataset.json").read_text())["numTraining"]

    # attach: default donors are every preprocessed training case (nnU-Net ignores splits_final.json for all)
    mst = tmp_path / "mst_model"
    _nnext(["fda", "attach", str(model), "-o", str(mst), "-f", "all", "--n-mst", "2"], ws.env)
    info = json.loads((mst / "fda_bank.json").read_text())["folds"]["all"]
    assert info["source_cases"] == n_training and info["num_donors"] > 0

    # select-beta on two labelled training cases with the fold-all model
    images, labels = tmp_path / "target" / "images", tmp_path / "target" / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for label in sorted((ws.dataset_dir / "labelsTr").glob("*.nii.gz"))[:2]:
        case = label.name[: -len(".nii.gz")]
        shutil.copy(label, labels / label.name)
        shutil.copy(ws.dataset_dir / "imagesTr" / f"{case}_0000.nii.gz", images)
    out = tmp_path / "beta"
    _nnext(["fda", "select-beta", str(mst), "--target", "train", str(images), str(labels), "--betas", "0", "0.05",
            "-f", "all", "-o", str(out)], ws.env)
    grid = json.loads((out / "beta_grid.json").read_text())
    assert grid["folds"] == ["all"] and all(0.3 < d <= 1.0 for d in grid["dice"]["train"])

    # evaluate-continual --model: the final checkpoint as both stage checkpoints, so R's rows must be equal
    stages = tmp_path / model.name
    shutil.copytree(model, stages, ignore=shutil.ignore_patterns("fold_0"))
    for k in (0, 1):
        shutil.copyfile(stages / "fold_all" / "checkpoint_final.pth", stages / "fold_all" / f"checkpoint_stage_{k}.pth")
    meta = load_domains(ws.dataset_dir)
    train = meta.cases_of("mni152", "train")
    stream = Stream((Stage(0, tuple(train[:3]), (), tuple(meta.cases_of("mni152", "test"))),
                     Stage(1, tuple(train[3:]), (), tuple(meta.cases_of("mni152_sim_severe", "test")))))
    report = tmp_path / "report"
    assert main(["evaluate-continual", "--stream", str(write_stream(stream, tmp_path / "stream.json")), "--ref",
                 str(ws.dataset_dir / "labelsTs"), "--model", f"All={stages}", "-f", "all", "--disable-tta",
                 "-o", str(report)]) == 0
    result = json.loads((report / "continual.json").read_text())
    R = np.array(result["methods"]["All"]["R"])
    assert R.shape == (2, 2) and np.array_equal(R[0], R[1]) and 0.3 < R[0, 0] <= 1
    assert result["settings"]["fold"] == "all"
