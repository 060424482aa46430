"""Fourier MST trainers inside real nnU-Net (CPU, tiny real data, in-process)."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.networks.fourier_mst import FourierMSTNetwork
from nnunet_ext.trainers.fourier_mst import (
    nnUNetTrainerFourierMST,
    nnUNetTrainerFourierMST_mode2p5d,
    nnUNetTrainerFourierMST_random,
    nnUNetTrainerFourierMST_single,
    nnUNetTrainerFourierMST_smoke,
)
from tests.conftest import make_trainer

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("cls,expected", [
    (nnUNetTrainerFourierMST, {"n_mst": 7, "selection": "srsim", "mode": "2d", "beta": 0.03}),
    (nnUNetTrainerFourierMST_single, {"n_mst": 1, "selection": "random"}),
    (nnUNetTrainerFourierMST_random, {"n_mst": 7, "selection": "random"}),
])
def test_settings_reach_the_network(cls, expected, tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(cls, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    assert isinstance(trainer.network, FourierMSTNetwork)
    settings = trainer.network.bank.settings()
    assert {k: settings[k] for k in expected} == expected


def test_2p5d_on_a_2d_configuration_fails_at_initialize(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerFourierMST_mode2p5d, tiny_workspace, monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="3D configuration"):
        trainer.initialize()


def test_bank_from_training_cases_survives_the_stock_rebuild(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerFourierMST_smoke, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.set_deep_supervision_enabled(False)  # nnU-Net's toggle reaches the wrapped decoder
    assert trainer.network.net.decoder.deep_supervision is False
    trainer.build_style_bank()
    bank = trainer.network.bank
    patch = tuple(trainer.configuration_manager.patch_size)
    assert 0 < len(bank) <= trainer.fda_bank_size and tuple(bank.donors.shape[2:]) == patch
    trainer.save_checkpoint(str(tmp_path / "ckpt.pth"))

    # what nnUNetv2_predict does: the static build from plans, then a strict load
    ckpt = torch.load(tmp_path / "ckpt.pth", map_location="cpu", weights_only=False)
    pm = PlansManager(trainer.plans_manager.plans)
    rebuilt = nnUNetTrainerFourierMST_smoke.build_network_architecture(
        pm, pm.get_configuration("2d"), 1, trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    assert len(rebuilt.bank) == 0
    rebuilt.load_state_dict(ckpt["network_weights"])
    assert len(rebuilt.bank) == len(bank)
    trainer.network.eval()
    rebuilt.eval()
    x = bank.donors[:2].float() * 0.9 + 0.1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trainer.network(x))
