"""A resumed seeded run equals the uninterrupted one: method JSON log and final weights (in-process, tiny data).

The first run is stopped by an exception at the start of an epoch, after its last checkpoint and after a
later epoch that the checkpoint does not cover (so the log must drop that epoch). A new trainer loads
``checkpoint_latest.pth`` as ``nnUNetv2_train --c`` does and trains to the end. nnU-Net's single-threaded
augmenter (``nnUNet_n_proc_DA=0``, set by ``make_trainer``) makes the seeded runs repeatable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.budget import nnUNetTrainerCPU_smoke, resolve_budget_trainer
from nnunet_ext.trainers.catenorm import nnUNetTrainerCateNorm_smoke
from nnunet_ext.trainers.continual_baselines import nnUNetTrainerEWC_smoke
from nnunet_ext.trainers.gin import nnUNetTrainerGIN_smoke
from nnunet_ext.trainers.style_consistency import nnUNetTrainerStyleConsistency_smoke
from nnunet_ext.trainers.style_curriculum import nnUNetTrainerStyleCurriculum_smoke
from nnunet_ext.trainers.toolkit import RNG_CHECKPOINT_KEY
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely
from tests.conftest import make_trainer
from tests.trainers.stream_workspace import stream_workspace

pytestmark = pytest.mark.e2e

EPOCHS = 4
CASES = {  # trainer, its JSON log, epochs between periodic checkpoints (None: the stream's stage-end ones only)
    "catenorm_columns": (nnUNetTrainerCateNorm_smoke, "catenorm.json", 2),
    "style_curriculum_records": (nnUNetTrainerStyleCurriculum_smoke, "style_curriculum.json", 2),
    "layer_speed_grouped": ("nnUNetTrainerSGD_layerspeed_smokeBudget_seed0", "layer_speed.json", 2),
    "ewc_stage_boundary": (nnUNetTrainerEWC_smoke, "ewc.json", None),
    "gin_own_generator": (nnUNetTrainerGIN_smoke, "gin.json", 2),  # its torch.Generator, beside the global ones
    # a training-only module (the regeneration decoder) with its optimizer group, and the style generator
    "style_consistency_decoder": (nnUNetTrainerStyleConsistency_smoke, "style_consistency.json", 2),
}


class _Killed(RuntimeError):
    pass


def _trainer(cls, ws, monkeypatch, root: Path):
    return make_trainer(cls, ws, monkeypatch, root, epochs=EPOCHS, iterations=2)


def _logged_epochs(folder: str, log_name: str) -> list[int]:
    entries = json.loads((Path(folder) / log_name).read_text())["epochs"]
    return [e["epoch"] if isinstance(e, dict) else e for e in entries]


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def _interrupted_run(cls, ws, monkeypatch, root: Path, save_every: int, stopped_at: int) -> Path:
    """Train ``cls`` until an exception at the start of epoch ``stopped_at``; return the fold folder."""
    trainer = _trainer(cls, ws, monkeypatch, root)
    trainer.save_every = save_every
    original = type(trainer).on_epoch_start

    def killed():
        if trainer.current_epoch == stopped_at:
            raise _Killed
        original(trainer)

    monkeypatch.setattr(trainer, "on_epoch_start", killed)
    with pytest.raises(_Killed):
        trainer.run_training()
    return Path(trainer.output_folder)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_run_continues_the_uninterrupted_one(case, tiny_workspace, monkeypatch, tmp_path):
    cls, log_name, save_every = CASES[case]
    cls = resolve_budget_trainer(cls) if isinstance(cls, str) else cls
    ws = stream_workspace(tiny_workspace, tmp_path) if save_every is None else tiny_workspace

    whole = _trainer(cls, ws, monkeypatch, tmp_path / "whole")
    whole.run_training()
    expected_log = json.loads((Path(whole.output_folder) / log_name).read_text())
    expected_weights = _weights(whole)
    assert _logged_epochs(whole.output_folder, log_name)[-1] == EPOCHS - 1  # (LSCL logs its curriculum epochs only)

    # checkpoint_latest after epoch 1 (periodic, or the stream's at the end of stage 0), then epoch 2
    folder = _interrupted_run(cls, ws, monkeypatch, tmp_path / "resumed", save_every or 1000, stopped_at=3)
    latest = folder / "checkpoint_latest.pth"
    assert load_checkpoint_safely(latest)["current_epoch"] == 2
    assert _logged_epochs(folder, log_name)[-1] == 2  # an epoch the checkpoint does not cover

    torch.manual_seed(123), np.random.seed(123)  # whatever ran before: the checkpoint's state wins
    resumed = _trainer(cls, ws, monkeypatch, tmp_path / "resumed")
    resumed.load_checkpoint(str(latest))  # what nnUNetv2_train --c loads
    resumed.run_training()
    assert json.loads((Path(resumed.output_folder) / log_name).read_text()) == expected_log
    weights = _weights(resumed)
    assert weights.keys() == expected_weights.keys()
    assert [k for k in weights if not torch.equal(weights[k], expected_weights[k])] == []


def test_without_the_rng_state_the_resumed_run_differs(tiny_workspace, monkeypatch, tmp_path):
    """The resume test above can fail: dropping the generator state from the checkpoint changes the run."""
    whole = _trainer(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "whole")
    whole.run_training()
    folder = _interrupted_run(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "resumed", 2,
                              stopped_at=2)
    checkpoint = load_checkpoint_safely(folder / "checkpoint_latest.pth")
    del checkpoint[RNG_CHECKPOINT_KEY]
    resumed = _trainer(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "resumed")
    resumed.load_checkpoint(checkpoint)
    resumed.run_training()
    expected, weights = _weights(whole), _weights(resumed)
    assert any(not torch.equal(weights[k], expected[k]) for k in weights)


def test_nnunets_own_checkpoint_of_a_trained_model_loads_safely_and_ours_adds_only_the_rng_state(
        tiny_workspace, monkeypatch, tmp_path):
    trainer = _trainer(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path)
    trainer.num_epochs = 1
    trainer.run_training()
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "stock.pth"))  # nnU-Net's plain torch.save
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    stock = load_checkpoint_safely(tmp_path / "stock.pth", map_location="cpu")
    ours = load_checkpoint_safely(tmp_path / "ours.pth", map_location="cpu")
    assert isinstance(stock["_best_ema"], np.floating)  # the numpy scalars weights_only=True alone refuses
    assert set(ours) == set(stock) | {RNG_CHECKPOINT_KEY}
    for key in stock:
        if key == "network_weights":
            assert all(torch.equal(ours[key][k], stock[key][k]) for k in stock[key])
        elif key != "optimizer_state":
            assert ours[key] == stock[key], key
