"""ODEx with the stock commands: nnUNetv2_train over a 2-stage stream, then nnUNetv2_predict routes each patch
through the saved pool and ``nnext odex explain`` lists the routing. Tiny real MRI, CPU, numeric bounds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from nnunet_ext.utils import nnunet_commands as cmd
from tests.trainers.stream_workspace import stream_workspace

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerODEx_xiNegInf_smoke"  # a new expert at stage 1, so the pool size is known
CASES = ("mni152_slab02", "mni152_slab05")


def test_stock_train_and_predict_with_a_pool(tiny_workspace, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    results = tmp_path / "results"
    env = dict(ws.env, nnUNet_results=str(results), nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER), env, tmp_path / "train.log")
    fold = results / ws.dataset_dir.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    experts = {k.split(".")[1] for k in ckpt["network_weights"] if k.startswith("experts.")}
    assert ckpt["trainer_name"] == TRAINER and experts == {"0", "1"}
    assert [ckpt["network_weights"][f"histories.{i}.means"].shape[0] for i in (0, 1)] == [1, 2]
    assert (fold / "checkpoint_stage_0.pth").is_file() and (fold / "checkpoint_stage_1.pth").is_file()
    decisions = json.loads((fold / "odex_decisions.json").read_text())
    assert [d["action"] for d in decisions["decisions"]] == ["train", "expand"]

    images = tmp_path / "images"  # the two unshifted test scans keep the test within the CPU budget
    images.mkdir()
    for case in CASES:
        shutil.copy(ws.dataset_dir / "imagesTs" / f"{case}_0000.nii.gz", images)
    pred, log = tmp_path / "pred", tmp_path / "selection.jsonl"
    cmd.run_command(cmd.predict_argv(images, pred, ws.dataset_id, "2d", 0, TRAINER), env, tmp_path / "predict.log")
    explain = subprocess.run([sys.executable, "-m", "nnunet_ext", "odex", "explain", str(fold.parent), "-i",
                              str(images), "-o", str(log), "-f", "0", "--device", "cpu"],
                             capture_output=True, text=True, env=env)
    assert explain.returncode == 0, explain.stdout + explain.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["case"] for r in records] == sorted(CASES)
    assert all(r["patches"] > 0 and len(r["score"][0]) == 2 and set(r["expert"]) <= {0, 1} for r in records)

    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref",
                           str(ws.dataset_dir / "labelsTs"), "--cases", *CASES, "-o", str(tmp_path / "eval")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    domains = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["domains"]
    assert domains["mni152"]["foreground_mean"]["dice"]["mean"] > 0.4
