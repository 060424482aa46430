"""GIN-IPA with the stock commands: nnUNetv2_plan_and_preprocess (session fixture) -> nnUNetv2_train -tr
nnUNetTrainerGINIPA_smoke -> nnUNetv2_predict -> nnext evaluate. Tiny real MRI, CPU, seeded, numeric bounds."""

from __future__ import annotations

import json

import pytest

from tests.conftest import predict_and_evaluate, train_with_stock_command

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerGINIPA_smoke"
# seeded (one known run, nnUNet_n_proc_DA=0): an in-process run of this budget reached test Dice 0.65
BOUND = 0.5


def test_gin_ipa_train_predict_evaluate(tiny_workspace, tmp_path):
    fold, ckpt = train_with_stock_command(tiny_workspace, TRAINER, tmp_path)
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 8
    log = json.loads((fold / "gin.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(8))
    assert all(e["batches"] == 25 and e["mean_consistency_loss"] > 0 for e in log["epochs"])
    assert "augmentation on the device after nnU-Net's" in next(fold.glob("training_log_*.txt")).read_text()
    dice = predict_and_evaluate(tiny_workspace, TRAINER, tmp_path)
    assert min(dice.values()) > BOUND, dice  # the real slabs and each simulated-scanner copy
