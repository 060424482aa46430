"""ODEx trainers in-process on a 2-stage tiny stream: expansion, histories, resume, stock predictor, continue."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_ext.core.odex import decide
from nnunet_ext.networks.odex import ODExPool
from nnunet_ext.trainers.odex import (
    CONTINUE_FROM_ENV,
    nnUNetTrainerDiceEx_smoke,
    nnUNetTrainerODEx,
    nnUNetTrainerODEx_noHistory,
    nnUNetTrainerODEx_smoke,
    nnUNetTrainerODEx_xiNegInf,
    nnUNetTrainerODEx_xiNegInf_smoke,
)
from tests.conftest import make_trainer
from tests.trainers.stream_workspace import stream_workspace

pytestmark = pytest.mark.e2e


class _Killed(RuntimeError):
    pass


def test_settings_and_static_build():
    assert nnUNetTrainerODEx.odex_xi is None and nnUNetTrainerODEx.epochs_per_stage == 200
    assert nnUNetTrainerODEx_xiNegInf.odex_xi == -math.inf
    assert nnUNetTrainerODEx_noHistory.odex_use_history is False
    assert nnUNetTrainerODEx_smoke.epochs_per_stage == 2 and nnUNetTrainerODEx_smoke.odex_feature_batches == 4


def test_xi_minus_inf_grows_the_pool_and_survives_kill_resume_and_the_stock_predictor(
        tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    first = make_trainer(nnUNetTrainerODEx_xiNegInf_smoke, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    first.save_every = 1
    original = type(first).on_epoch_start

    def killed_at_epoch_3():
        if first.current_epoch == 3:
            raise _Killed
        original(first)

    monkeypatch.setattr(first, "on_epoch_start", killed_at_epoch_3)
    with pytest.raises(_Killed):
        first.run_training()
    assert len(first.pool) == 2 and first.pool.active == 1
    assert [d["action"] for d in first.odex_decisions] == ["train", "expand"]

    resumed = make_trainer(nnUNetTrainerODEx_xiNegInf_smoke, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    resumed.load_checkpoint(f"{first.output_folder}/checkpoint_latest.pth")  # what --c loads
    assert len(resumed.pool) == 2 and resumed.pool.active == 1 and resumed.current_stage == 1
    resumed.run_training()
    pool = resumed.pool
    assert len(pool) == 2 and [d["action"] for d in resumed.odex_decisions] == ["train", "expand"]
    # expert 1 inherited stage 0's Gaussian and added stage 1's; expert 0 kept stage 0 only
    assert [len(h) for h in pool.histories] == [1, 2]
    assert all(torch.isfinite(h.calibrations).all() for h in pool.histories)
    with open(f"{resumed.output_folder}/odex_decisions.json") as f:
        assert json.load(f)["pool_size"] == 2

    # the stock predictor rebuilds one expert from plans and loads the checkpoint strictly
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(resumed.output_folder_base, (0,), "checkpoint_final.pth")
    net = predictor.network
    assert isinstance(net, ODExPool) and len(net) == 2 and [len(h) for h in net.histories] == [1, 2]
    data = resumed.dataset_class(resumed.preprocessed_dataset_folder, ["mni152_slab06"]).load_case(
        "mni152_slab06")[0]
    logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data[:]).float())
    assert logits.shape[0] == resumed.label_manager.num_segmentation_heads and torch.isfinite(logits).all()
    assert sum(net.selection_counts.values()) > 0


class _ManyFeatureBatches(nnUNetTrainerODEx_smoke):
    odex_feature_batches = 30  # 60 patches per Gaussian: the mean score of a fresh draw is stable


def test_paper_rule_keeps_in_distribution_data_and_expands_on_a_shift(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    np.random.seed(0)  # nnU-Net's single-process dataloader samples with numpy's global generator
    torch.manual_seed(0)
    trainer = make_trainer(_ManyFeatureBatches, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    plain = type(trainer)._feature_batches

    def shifted_at_stage_1(self):  # stage 1 arrives from a scanner with a very different intensity profile
        for x, y in plain(self):
            yield (x * 4 + 3 if self._data_stage == 1 else x), y

    monkeypatch.setattr(type(trainer), "_feature_batches", shifted_at_stage_1)
    trainer.run_training()
    decisions = trainer.odex_decisions
    assert decisions[1]["action"] == "expand" and decisions[1]["scores"][0] >= decisions[1]["xi"] > 0
    # the score is the mean of the per-Gaussian distances written beside it (one Gaussian at stage 1)
    assert decisions[1]["history_distances"] == pytest.approx([decisions[1]["scores"][0]])
    assert len(trainer.pool) == 2
    # stage 0's own data measured again with expert 0 (untouched since stage 0): below xi, no expansion
    trainer._data_stage, trainer._all_stages_split = 0, False
    again = decide(trainer._mean_scores(), trainer.pool.thresholds())
    assert again.best == 0 and not again.expand, again


def test_no_history_keeps_one_gaussian_and_diceex_records_dice(tiny_workspace, monkeypatch, tmp_path):
    class NoHistorySmoke(nnUNetTrainerODEx_smoke):
        odex_use_history = False

    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(NoHistorySmoke, ws, monkeypatch, tmp_path / "nohist", epochs=4, iterations=2)
    trainer.run_training()
    assert all(len(h) == 1 for h in trainer.pool.histories)

    dice = make_trainer(nnUNetTrainerDiceEx_smoke, ws, monkeypatch, tmp_path / "dice", epochs=4, iterations=2)
    dice.run_training()
    stage1 = dice.odex_decisions[1]
    assert 0 <= stage1["dice"] <= 1 and 0 <= stage1["dice_reference"] <= 1
    expected = (stage1["dice_reference"] - stage1["dice"]) / stage1["dice_reference"] > 0.1
    assert (stage1["action"] == "expand") == expected and stage1["xi"] is None


def test_continue_a_pool_on_new_data(tiny_workspace, monkeypatch, tmp_path):
    one_stage = {"format_version": 1, "stages": [{"stage": 0, "train": ["mni152_slab00", "mni152_slab01"]}]}
    ws = stream_workspace(tiny_workspace, tmp_path / "old", one_stage)
    old = make_trainer(nnUNetTrainerODEx_xiNegInf_smoke, ws, monkeypatch, tmp_path / "old", epochs=2, iterations=2)
    old.run_training()
    final = f"{old.output_folder}/checkpoint_final.pth"
    new_data = {"format_version": 1, "stages": [{"stage": 0, "train": ["mni152_slab06", "mni152_slab07"]}]}
    ws_new = stream_workspace(tiny_workspace, tmp_path / "new", new_data)
    monkeypatch.setenv(CONTINUE_FROM_ENV, final)
    new = make_trainer(nnUNetTrainerODEx_xiNegInf_smoke, ws_new, monkeypatch, tmp_path / "new", epochs=2,
                       iterations=2)
    new.run_training()
    actions = [d["action"] for d in new.odex_decisions]
    assert actions == ["continue_from", "expand"] and len(new.pool) == 2
    assert [len(h) for h in new.pool.histories] == [1, 2]

    monkeypatch.setenv(CONTINUE_FROM_ENV, str(tmp_path / "missing.pth"))
    broken = make_trainer(nnUNetTrainerODEx_xiNegInf_smoke, ws_new, monkeypatch, tmp_path / "broken", epochs=2,
                          iterations=2)
    with pytest.raises(FileNotFoundError, match=CONTINUE_FROM_ENV):
        broken.run_training()
