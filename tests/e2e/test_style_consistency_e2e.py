"""Style consistency with the stock commands: nnUNetv2_train -tr nnUNetTrainerStyleConsistency_smoke ->
nnUNetv2_predict (the plain U-Net: the regeneration decoder stays in the checkpoint) -> nnext evaluate.
Tiny real MRI, CPU, seeded, numeric bounds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnunet_ext.trainers.style_consistency import REGENERATION_DECODER_KEY
from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerStyleConsistency_smoke"
# seeded (one known run, nnUNet_n_proc_DA=0): test Dice 0.70 / 0.71 / 0.68 / 0.62 on the real slabs and the mild /
# moderate / severe simulated-scanner copies
BOUND = 0.5


def test_style_consistency_train_predict_evaluate(tiny_workspace, tmp_path):
    ws = tiny_workspace
    env = dict(ws.env, nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER), env, tmp_path / "train.log")
    fold = ws.model_dir(TRAINER) / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 8
    assert REGENERATION_DECODER_KEY in ckpt
    log = json.loads((fold / "style_consistency.json").read_text())
    epochs = log["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(8)) and all(e["batches"] == 20 for e in epochs)
    assert all(e["mean_consistency"] > 0 and e["mean_regeneration_mse"] > 0 for e in epochs)
    # the regeneration decoder learns: its error falls over training (z-scored images: 1.0 = predicting zeros)
    assert epochs[-1]["mean_regeneration_mse"] < 0.8 * epochs[0]["mean_regeneration_mse"]

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
