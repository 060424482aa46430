"""Stream trainers (sequential fine-tuning and the stage machinery) in-process on a 2-stage tiny stream."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.stream import (
    STREAM_CHECKPOINT_KEY,
    nnUNetTrainerSequential,
    nnUNetTrainerSequential_smoke,
)
from nnunet_ext.trainers.toolkit import RNG_CHECKPOINT_KEY
from tests.conftest import make_trainer
from tests.trainers.stream_workspace import TWO_STAGES, stream_workspace

pytestmark = pytest.mark.e2e


class _Recording(nnUNetTrainerSequential):
    epochs_per_stage = 2

    @property
    def events(self):
        return self.__dict__.setdefault("_events", [])

    def on_stage_start(self, stage_index):
        self.events.append(("start", stage_index, sorted(self.dataloader_train.data_loader.indices)))

    def on_stage_end(self, stage_index):
        self.events.append(("end", stage_index, self.current_epoch))


def test_signature_is_nnunets():
    assert list(inspect.signature(nnUNetTrainerSequential.__init__).parameters) == \
        list(inspect.signature(nnUNetTrainer.__init__).parameters)


def test_stages_switch_cases_and_hooks_run_once(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(_Recording, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    trainer.run_training()
    stages = TWO_STAGES["stages"]
    assert trainer.events == [("start", 0, sorted(stages[0]["train"])), ("end", 0, 2),
                              ("start", 1, sorted(stages[1]["train"])), ("end", 1, 4)]
    out = trainer.output_folder
    for k in (0, 1):
        ckpt = torch.load(f"{out}/checkpoint_stage_{k}.pth", map_location="cpu", weights_only=False)
        assert ckpt["current_epoch"] == 2 * (k + 1)
        assert ckpt[STREAM_CHECKPOINT_KEY]["stages_done"] == k + 1
    # the learning rate restarted at stage 1 (poly schedule per stage)
    lrs = [trainer.logger.get_value("lrs", step=i) for i in range(4)]
    assert lrs[0] == pytest.approx(trainer.initial_lr) and lrs[2] == pytest.approx(trainer.initial_lr)
    assert lrs[1] < lrs[0]
    # final validation covers every stage's val cases (a stage without val uses its training cases)
    trainer._all_stages_split = True
    assert set(trainer.do_split()[1]) == {"mni152_slab04", "mni152_slab06", "mni152_slab07"}


def test_checkpoint_is_nnunets_plus_the_stream_state(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(nnUNetTrainerSequential_smoke, ws, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "stock.pth"))
    ours, stock = (torch.load(tmp_path / f"{n}.pth", map_location="cpu", weights_only=False) for n in ("ours", "stock"))
    assert set(ours) == set(stock) | {STREAM_CHECKPOINT_KEY, RNG_CHECKPOINT_KEY}
    assert ours[STREAM_CHECKPOINT_KEY] == trainer.stream_state_dict()
    for key in stock:
        if key == "network_weights":
            assert ours[key].keys() == stock[key].keys()
            assert all(torch.equal(ours[key][k], stock[key][k]) for k in stock[key])
        elif key != "optimizer_state":
            assert ours[key] == stock[key], key
    assert ours["optimizer_state"]["param_groups"] == stock["optimizer_state"]["param_groups"]
    assert not list(tmp_path.glob(".*.tmp"))


class _Killed(RuntimeError):
    pass


def test_resume_after_kill_mid_stage_repeats_no_finished_stage(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    first = make_trainer(_Recording, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    first.save_every = 1  # nnU-Net's periodic checkpoint_latest after every epoch

    def kill_at_epoch_3():
        if first.current_epoch == 3:
            raise _Killed

    monkeypatch.setattr(first, "on_epoch_start", lambda: (kill_at_epoch_3(), _Recording.on_epoch_start(first)))
    with pytest.raises(_Killed):
        first.run_training()  # killed inside stage 1, after its first epoch
    assert first.events == [("start", 0, sorted(TWO_STAGES["stages"][0]["train"])), ("end", 0, 2),
                            ("start", 1, sorted(TWO_STAGES["stages"][1]["train"]))]
    resumed = make_trainer(_Recording, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    resumed.load_checkpoint(f"{first.output_folder}/checkpoint_latest.pth")  # what nnUNetv2_train --c loads
    assert resumed.current_epoch == 3 and resumed.current_stage == 1
    resumed.run_training()
    assert resumed.events == [("end", 1, 4)]  # stage 1 neither restarted nor stage 0 repeated
    assert sorted(resumed.dataloader_train.data_loader.indices) == sorted(TWO_STAGES["stages"][1]["train"])


@pytest.mark.parametrize("fold", [1, 4])
def test_other_folds_are_refused(fold, tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(nnUNetTrainerSequential_smoke, ws, monkeypatch, tmp_path)  # fold 0 works
    with pytest.raises(ValueError, match="fold must be 0 or 'all'"):
        type(trainer)(dict(trainer.plans_manager.plans, continue_training=False), "2d", fold, trainer.dataset_json, device=torch.device("cpu"))


def test_unknown_cases_give_a_clear_error(tiny_workspace, monkeypatch, tmp_path):
    bad = {"format_version": 1, "stages": [{"stage": 0, "train": ["mni152_slab00", "no_such_case"]}]}
    ws = stream_workspace(tiny_workspace, tmp_path, bad)
    trainer = make_trainer(nnUNetTrainerSequential_smoke, ws, monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="no_such_case"):
        trainer.initialize()


def test_an_empty_stage_gives_a_clear_error(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    empty = {"format_version": 1, "stages": [{"stage": 0, "train": ["mni152_slab00"]}, {"stage": 1, "train": []}]}
    (ws.preprocessed / ws.dataset_dir.name / "stream.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="stage 1 is empty"):
        make_trainer(nnUNetTrainerSequential_smoke, ws, monkeypatch, tmp_path)


def test_missing_stream_names_where_it_looked(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    (ws.preprocessed / ws.dataset_dir.name / "stream.json").unlink()
    with pytest.raises(FileNotFoundError, match="stream.json"):
        make_trainer(nnUNetTrainerSequential_smoke, ws, monkeypatch, tmp_path)
