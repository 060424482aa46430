"""Style consistency with the stock commands: nnUNetv2_train -tr nnUNetTrainerStyleConsistency_smoke ->
nnUNetv2_predict (the plain U-Net: the regeneration decoder stays in the checkpoint) -> nnext evaluate.
Tiny real MRI, CPU, seeded, numeric bounds."""

from __future__ import annotations

import json

import pytest

from nnunet_ext.trainers.style_consistency import REGENERATION_DECODER_KEY
from tests.conftest import predict_and_evaluate, train_with_stock_command

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerStyleConsistency_smoke"
# seeded (one known run, nnUNet_n_proc_DA=0): test Dice 0.70 / 0.71 / 0.68 / 0.62 on the real slabs and the mild /
# moderate / severe simulated-scanner copies
BOUND = 0.5


def test_style_consistency_train_predict_evaluate(tiny_workspace, tmp_path):
    fold, ckpt = train_with_stock_command(tiny_workspace, TRAINER, tmp_path)
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 8
    assert REGENERATION_DECODER_KEY in ckpt
    epochs = json.loads((fold / "style_consistency.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(8)) and all(e["batches"] == 20 for e in epochs)
    assert all(e["mean_consistency"] > 0 and e["mean_regeneration_mse"] > 0 for e in epochs)
    # the regeneration decoder learns: its error falls over training (z-scored images: 1.0 = predicting zeros)
    assert epochs[-1]["mean_regeneration_mse"] < 0.8 * epochs[0]["mean_regeneration_mse"]
    dice = predict_and_evaluate(tiny_workspace, TRAINER, tmp_path)
    assert min(dice.values()) > BOUND, dice  # the real slabs and each simulated-scanner copy
