"""Style curriculum trainers inside real nnU-Net (CPU, tiny real data, in-process)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.networks.style_curriculum import RotationTTANetwork
from nnunet_ext.trainers.style_curriculum import (
    CURRICULUM_LOG_FILENAME,
    nnUNetTrainerStyleCurriculum,
    nnUNetTrainerStyleCurriculum_finetune,
    nnUNetTrainerStyleCurriculum_finetune_random,
    nnUNetTrainerStyleCurriculum_finetune_rotTTA,
    nnUNetTrainerStyleCurriculum_finetune_scl,
    nnUNetTrainerStyleCurriculum_histogram,
    nnUNetTrainerStyleCurriculum_smoke,
)
from tests.conftest import count_optimizer_steps, make_trainer

pytestmark = pytest.mark.e2e


def test_settings_and_stock_compatible_network(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerStyleCurriculum_finetune_rotTTA, tiny_workspace, monkeypatch, tmp_path)
    assert trainer.epochs == 10 and trainer.initial_lr == 1e-3 and trainer.curriculum_start_epoch == 0
    trainer.initialize()
    assert isinstance(trainer.network, RotationTTANetwork) and trainer.network.rotation_tta
    trainer.set_deep_supervision_enabled(False)  # nnU-Net's toggle reaches the wrapped decoder
    assert trainer.network.net.decoder.deep_supervision is False

    stock = make_trainer(nnUNetTrainer, tiny_workspace, monkeypatch, tmp_path / "stock")
    stock.initialize()
    assert list(trainer.network.state_dict()) == list(stock.network.state_dict())
    stock.save_checkpoint(str(tmp_path / "stock.pth"))
    load_pretrained_weights(trainer.network, str(tmp_path / "stock.pth"))  # what -pretrained_weights does
    for k, v in stock.network.state_dict().items():
        if ".seg_layers." not in k:
            assert torch.equal(trainer.network.state_dict()[k], v), k

    # what nnUNetv2_predict does: static build from plans, then a strict load; TTA comes from the class
    trainer.save_checkpoint(str(tmp_path / "ckpt.pth"))
    ckpt = torch.load(tmp_path / "ckpt.pth", map_location="cpu", weights_only=False)
    pm = PlansManager(trainer.plans_manager.plans)
    args = (pm, pm.get_configuration("2d"), 1, trainer.label_manager.num_segmentation_heads)
    rebuilt = nnUNetTrainerStyleCurriculum_finetune_rotTTA.build_network_architecture(*args, enable_deep_supervision=False)
    rebuilt.load_state_dict(ckpt["network_weights"])
    assert rebuilt.rotation_tta
    assert not nnUNetTrainerStyleCurriculum.build_network_architecture(*args, False).rotation_tta
    nnUNetTrainer.build_network_architecture(*args, False).load_state_dict(ckpt["network_weights"])


def test_warmup_then_n_plus_1_updates_per_batch_and_json_log(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerStyleCurriculum_smoke, tiny_workspace, monkeypatch, tmp_path,
                           epochs=2, iterations=2)
    trainer.initialize()
    assert trainer.curriculum_start_epoch == 1
    calls = count_optimizer_steps(trainer)
    per_epoch = []
    original = trainer.on_epoch_end

    def record():
        per_epoch.append(calls[0] - sum(per_epoch))
        original()

    trainer.on_epoch_end = record
    trainer.run_training()
    assert per_epoch == [2, 2 * (trainer.curriculum_n + 1)]  # warm-up: 1 update per batch; LSCL: n + 1
    log = json.loads((Path(trainer.output_folder) / CURRICULUM_LOG_FILENAME).read_text())
    assert log["settings"]["n"] == 3 and log["settings"]["start_epoch"] == 1
    [epoch] = log["epochs"]
    assert epoch["epoch"] == 1 and epoch["batches"] == 2
    assert len(epoch["per_batch_losses"]) == 2 and all(len(b) == 4 for b in epoch["per_batch_losses"])
    gammas = epoch["mean_gamma_per_step"]
    assert gammas[0] == 0.0 and all(b >= a for a, b in itertools.pairwise(gammas)) and gammas[-1] <= 0.75
    assert 0.0 <= epoch["fraction_rising"] <= 1.0
    assert "Style curriculum (LSCL)" in Path(trainer.log_file).read_text()


@pytest.mark.parametrize("cls,updates,grows", [
    (nnUNetTrainerStyleCurriculum_finetune, 4, True),
    (nnUNetTrainerStyleCurriculum_finetune_scl, 4, True),
    (nnUNetTrainerStyleCurriculum_finetune_random, 1, False),
    (nnUNetTrainerStyleCurriculum_histogram, 4, True),
])
def test_one_batch_of_each_variant(cls, updates, grows, tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(cls, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.current_epoch = trainer.curriculum_start_epoch
    loader, _ = trainer.get_dataloaders()
    batch = next(loader)
    assert isinstance(batch["target"], list)  # deep supervision on
    calls = count_optimizer_steps(trainer)
    trainer.network.train()
    out = trainer.train_step(batch)
    assert calls[0] == updates and torch.isfinite(torch.as_tensor(out["loss"]))
    gammas = trainer._epoch_gammas[-1]
    assert len(trainer._epoch_losses[-1]) == updates
    assert (gammas[-1] > 0) == grows or updates == 1


def test_grad_scaler_path(tiny_workspace, monkeypatch, tmp_path):
    """nnU-Net's AMP sequence (scale, unscale, clip, step, update) per curriculum step; Gamma from a scaled grad."""
    trainer = make_trainer(nnUNetTrainerStyleCurriculum_finetune, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    loader, _ = trainer.get_dataloaders()
    calls = count_optimizer_steps(trainer)
    trainer.network.train()
    trainer.train_step(next(loader))
    losses = trainer._epoch_losses[-1]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert calls[0] == 4 and trainer._epoch_gammas[-1][-1] > 0
