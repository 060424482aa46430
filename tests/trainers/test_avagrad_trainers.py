"""AvaGrad trainers inside real nnU-Net training (CPU, tiny real data, in-process)."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_ext.core.avagrad import AvaGrad
from tests.conftest import make_trainer, use_workspace_env
from nnunet_ext.trainers.avagrad import (
    LAYER_SPEED_FILENAME,
    nnUNetTrainerAvaGrad,
    nnUNetTrainerAvaGrad_25epochs,
    nnUNetTrainerAvaGrad_1000epochs,
    nnUNetTrainerAvaGrad_layerspeed,
    nnUNetTrainerEarlyStopAdam_25epochs,
    nnUNetTrainerEarlyStopAdamNoDA_25epochs,
    nnUNetTrainerEarlyStopSGD_25epochs,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cls,epochs", [(nnUNetTrainerAvaGrad, 50), (nnUNetTrainerAvaGrad_25epochs, 25),
                                        (nnUNetTrainerAvaGrad_1000epochs, 1000),
                                        (nnUNetTrainerEarlyStopSGD_25epochs, 25),
                                        (nnUNetTrainerEarlyStopAdam_25epochs, 25),
                                        (nnUNetTrainerEarlyStopAdamNoDA_25epochs, 25)])
def test_paper_settings(cls, epochs, tiny_workspace, monkeypatch, tmp_path):
    use_workspace_env(tiny_workspace, monkeypatch, tmp_path)
    pre = tiny_workspace.preprocessed / tiny_workspace.dataset_dir.name
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    trainer = cls(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), device=torch.device("cpu"))
    assert trainer.num_epochs == epochs
    if issubclass(cls, nnUNetTrainerAvaGrad):
        assert trainer.initial_lr == 10.0 and trainer.avagrad_eps == 0.1


def test_avagrad_training_records_layer_speed_and_checkpoints_optimizer_state(tiny_workspace, monkeypatch,
                                                                              tmp_path):
    trainer = make_trainer(nnUNetTrainerAvaGrad_layerspeed, tiny_workspace, monkeypatch, tmp_path)
    trainer.run_training()
    assert isinstance(trainer.optimizer, AvaGrad)
    assert trainer.optimizer.param_groups[0]["step"] == 6
    # poly schedule from lr 10 over 2 epochs
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(10.0 * (1 - 1 / 2) ** 0.9)

    speed = json.loads((tmp_path / "results").glob("**/fold_0/" + LAYER_SPEED_FILENAME).__next__().read_text())
    assert speed["epochs"] == [0, 1] and speed["optimizer"] == "AvaGrad"
    assert set(speed["groups"].values()) == {"context", "transpose", "localization", "segmentation"}
    # nnU-Net weights the lowest-resolution deep-supervision output with 0, so its head never moves
    frozen = {n for n, v in speed["updates"].items() if not all(x > 0 for x in v)}
    assert frozen == {"decoder.seg_layers.0.weight"}
    assert speed["updates"]["decoder.seg_layers.0.weight"] == [0.0, 0.0]
    assert all(len(v) == 2 for v in speed["updates"].values())

    ckpt_path = next((tmp_path / "results").glob("**/fold_0/checkpoint_final.pth"))
    resumed = make_trainer(nnUNetTrainerAvaGrad_layerspeed, tiny_workspace, monkeypatch, tmp_path)
    resumed.load_checkpoint(str(ckpt_path))
    assert resumed.optimizer.param_groups[0]["step"] == 6
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)["optimizer_state"]["state"]
    for idx, state in resumed.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(state["exp_avg_sq"], saved[idx]["exp_avg_sq"], rtol=0, atol=0)
