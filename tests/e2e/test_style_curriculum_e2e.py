"""LSCL with the stock commands: a stock model fine-tuned by ``nnUNetv2_train -pretrained_weights`` with the
curriculum, then ``nnUNetv2_predict`` with rotation TTA inside the network. Tiny real MRI, CPU, numeric bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke"


def _dice(pred: Path, ws, out: Path) -> float:
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref",
                           str(ws.dataset_dir / "labelsTs"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "evaluation.json").read_text())["domains"]["mni152"]["foreground_mean"]["dice"]["mean"]


def test_finetune_from_stock_checkpoint_and_predict_with_rotation_tta(smoke_model, tiny_workspace, tmp_path):
    ws = tiny_workspace
    env = dict(ws.env, nnUNet_n_proc_DA="0")
    pretrained = smoke_model / "fold_0" / "checkpoint_final.pth"
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER, extra=["-pretrained_weights", str(pretrained)]),
                    env, tmp_path / "train.log")
    assert "Loading pretrained weights" in (tmp_path / "train.log").read_text()
    fold = ws.model_dir(TRAINER) / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    stock = torch.load(pretrained, map_location="cpu", weights_only=False)["network_weights"]
    # stock keys plus the saved TTA switch (test-time state is a buffer: nnunet_ext/networks/wrapper.py)
    assert ckpt["trainer_name"] == TRAINER and list(ckpt["network_weights"]) == [*stock, "rotation_tta_enabled"]
    assert bool(ckpt["network_weights"]["rotation_tta_enabled"])

    log = json.loads((fold / "style_curriculum.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [0, 1, 2] and log["settings"]["rotation_tta"] is True
    for epoch in log["epochs"]:
        assert epoch["batches"] == 10 and len(epoch["per_batch_losses"][0]) == 4
        assert epoch["mean_gamma_per_step"][0] == 0.0 < epoch["mean_gamma_per_step"][-1] <= 0.75

    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0, TRAINER),
                    ws.env, tmp_path / "predict.log")
    assert _dice(pred, ws, tmp_path / "eval") > 0.5  # heads relearnt: 0.66-0.79 in 9 runs (lr 1e-2, see the trainer)
