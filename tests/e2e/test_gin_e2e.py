"""GIN-IPA with the stock commands: nnUNetv2_plan_and_preprocess (session fixture) -> nnUNetv2_train -tr
nnUNetTrainerGINIPA_smoke -> nnUNetv2_predict -> nnext evaluate. Tiny real MRI, CPU, seeded, numeric bounds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerGINIPA_smoke"
# seeded (one known run, nnUNet_n_proc_DA=0): an in-process run of this budget reached test Dice 0.65
BOUND = 0.5


def test_gin_ipa_train_predict_evaluate(tiny_workspace, tmp_path):
    ws = tiny_workspace
    env = dict(ws.env, nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER), env, tmp_path / "train.log")
    fold = ws.model_dir(TRAINER) / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 8
    log = json.loads((fold / "gin.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(8))
    assert all(e["batches"] == 25 and e["mean_consistency_loss"] > 0 for e in log["epochs"])
    assert "augmentation on the device after nnU-Net's" in next(fold.glob("training_log_*.txt")).read_text()

    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0, TRAINER),
                    ws.env, tmp_path / "predict.log")
    assert f"Using trainer '{TRAINER}' from:" in (tmp_path / "predict.log").read_text()
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref",
                           str(ws.dataset_dir / "labelsTs"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    domains = json.loads((out / "evaluation.json").read_text())["domains"]
    dice = {d: v["foreground_mean"]["dice"]["mean"] for d, v in domains.items()}
    assert min(dice.values()) > BOUND, dice  # the real slabs and each simulated-scanner copy

