"""CPU-budget trainers: the budget overrides and the seed that makes the tests' smoke runs repeat exactly."""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.trainers.budget import nnUNetTrainerCPU_smoke
from tests.conftest import make_trainer

pytestmark = pytest.mark.e2e


def _train(cls, ws, monkeypatch, tmp_path) -> dict[str, torch.Tensor]:
    trainer = make_trainer(cls, ws, monkeypatch, tmp_path, epochs=1, iterations=3)
    trainer.run_training()
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def test_a_seeded_smoke_run_repeats_exactly_and_an_unseeded_one_does_not(tiny_workspace, monkeypatch, tmp_path):
    assert nnUNetTrainerCPU_smoke.seed == 0
    first = _train(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "a")
    torch.manual_seed(123)  # whatever ran before: the trainer seeds itself
    again = _train(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "b")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    unseeded = type("nnUNetTrainerCPU_smokeUnseeded", (nnUNetTrainerCPU_smoke,), {"seed": None})
    other = _train(unseeded, tiny_workspace, monkeypatch, tmp_path / "c")
    assert any(not torch.equal(first[k], other[k]) for k in first)
