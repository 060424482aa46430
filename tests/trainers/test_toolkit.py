"""The trainer toolkit on its own: unwrap, batches, the per-epoch log, and the one save/load of checkpoints."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from nnunet_ext.trainers.toolkit import (
    NNUNET_CHECKPOINT_KEYS,
    RNG_CHECKPOINT_KEY,
    EpochLog,
    NNExtTrainerMixin,
    batch_to_device,
    unwrap,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unwrap_sees_through_every_wrapper():
    net = nn.Linear(2, 2)
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net
    compiled = torch.compile(net)  # nothing compiles until the first call
    assert unwrap(compiled) is net
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(compiled)
        assert unwrap(ddp) is net
    finally:
        dist.destroy_process_group()


def test_a_module_with_a_module_attribute_is_not_mistaken_for_a_wrapper():
    net = nn.Sequential()
    net.module = nn.Linear(1, 1)
    assert unwrap(net) is net


def test_batch_to_device_keeps_deep_supervision_lists():
    batch = {"data": torch.ones(2, 1, 4, 4), "target": [torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2)]}
    data, target = batch_to_device(batch, torch.device("cpu"))
    assert torch.equal(data, batch["data"]) and isinstance(target, list) and len(target) == 2
    data, target = batch_to_device({"data": batch["data"], "target": batch["target"][0]}, torch.device("cpu"))
    assert isinstance(target, torch.Tensor) and target.shape == (2, 1, 4, 4)


# ---------------------------------------------------------------------------------------------- EpochLog
def _trainer(folder: Path, epoch: int, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(output_folder=str(folder), current_epoch=epoch, local_rank=rank)


def test_column_layout_is_the_files_methods_write(tmp_path):
    log = EpochLog.for_trainer(_trainer(tmp_path, 0), "catenorm.json", {"warmup_epochs": 2, "stages": [0, 1]},
                               columns=("stage", "train_loss_plain", "train_loss_catenorm"))
    log.append(0, {"stage": "warmup", "train_loss_plain": 0.9, "train_loss_catenorm": None})
    log.append(1, {"stage": "catenorm", "train_loss_plain": 0.7, "train_loss_catenorm": 0.8})
    written = json.loads((tmp_path / "catenorm.json").read_text())
    assert list(written) == ["warmup_epochs", "stages", "epochs", "stage", "train_loss_plain", "train_loss_catenorm"]
    assert written == {"warmup_epochs": 2, "stages": [0, 1], "epochs": [0, 1], "stage": ["warmup", "catenorm"],
                       "train_loss_plain": [0.9, 0.7], "train_loss_catenorm": [None, 0.8]}
    assert log.epochs == [0, 1]


def test_grouped_columns_and_records(tmp_path):
    speed = EpochLog.for_trainer(_trainer(tmp_path, 0), "layer_speed.json", {"optimizer": "SGD"},
                                 columns=("a.weight", "b.weight"), group="updates")
    speed.append(0, {"a.weight": 0.1, "b.weight": 0.0})
    assert json.loads((tmp_path / "layer_speed.json").read_text()) == {
        "optimizer": "SGD", "epochs": [0], "updates": {"a.weight": [0.1], "b.weight": [0.0]}}
    records = EpochLog.for_trainer(_trainer(tmp_path, 0), "style.json", {"settings": {"n": 3}}, layout="records")
    records.append(4, {"batches": 2, "mean_loss_per_step": [1.0, 0.5]})
    assert json.loads((tmp_path / "style.json").read_text()) == {
        "settings": {"n": 3}, "epochs": [{"epoch": 4, "batches": 2, "mean_loss_per_step": [1.0, 0.5]}]}


@pytest.mark.parametrize("layout", ["columns", "grouped", "records"])
def test_a_resumed_log_keeps_only_the_epochs_the_checkpoint_covers(layout, tmp_path):
    kwargs = {"columns": dict(columns=("loss",)), "grouped": dict(columns=("loss",), group="updates"),
              "records": dict(layout="records")}[layout]
    first = EpochLog.for_trainer(_trainer(tmp_path, 0), "m.json", {"run": 1}, **kwargs)
    for epoch in range(4):
        first.append(epoch, {"loss": float(epoch)})
    resumed = EpochLog.for_trainer(_trainer(tmp_path, 2), "m.json", {"run": 2}, **kwargs)  # checkpoint: epoch 2
    assert resumed.epochs == [0, 1] and resumed.data["run"] == 2
    resumed.append(2, {"loss": 20.0})
    again = EpochLog.for_trainer(_trainer(tmp_path, 99), "m.json", {"run": 3}, **kwargs)
    assert again.epochs == [0, 1, 2]
    values = {"columns": lambda d: d["loss"], "grouped": lambda d: d["updates"]["loss"],
              "records": lambda d: [r["loss"] for r in d["epochs"]]}[layout]
    assert values(again.data) == [0.0, 1.0, 20.0]


@pytest.mark.parametrize("content", ["{not json", json.dumps({"epochs": [0], "other": [1]}),
                                     json.dumps({"epochs": [0], "updates": {"x": [1]}}), json.dumps([1, 2])])
def test_a_file_of_another_layout_or_columns_starts_anew(content, tmp_path):
    (tmp_path / "m.json").write_text(content)
    log = EpochLog.for_trainer(_trainer(tmp_path, 5), "m.json", columns=("loss",), group="updates")
    assert log.epochs == [] and log.data == {"epochs": [], "updates": {"loss": []}}


def test_other_ranks_keep_values_but_do_not_write(tmp_path):
    log = EpochLog.for_trainer(_trainer(tmp_path, 0, rank=1), "m.json", columns=("loss",))
    log.append(0, {"loss": 1.0})
    assert log.data["loss"] == [1.0] and not (tmp_path / "m.json").exists()


def test_bad_arguments_raise(tmp_path):
    log = EpochLog(tmp_path / "m.json", columns=("loss",))
    with pytest.raises(ValueError, match="columns are"):
        log.append(0, {"los": 1.0})
    with pytest.raises(ValueError, match="clash"):
        EpochLog(tmp_path / "m.json", {"epochs": 1})
    with pytest.raises(ValueError, match="layout"):
        EpochLog(tmp_path / "m.json", layout="rows")
    with pytest.raises(ValueError, match="columns and group"):
        EpochLog(tmp_path / "m.json", layout="records", columns=("loss",))


# ---------------------------------------------------------------------------------------------- checkpoints
class _Logger:
    def __init__(self):
        self.values = {"mean_fg_dice": [np.float64(0.25)]}

    def get_checkpoint(self):
        return self.values

    def load_checkpoint(self, values):
        self.values = values


class _StockStandIn:
    """The part of nnUNetTrainer that NNExtTrainerMixin relies on, without data or plans."""

    def __init__(self, folder: Path):
        self.network = nn.Linear(3, 2)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1, momentum=0.9)
        self.grad_scaler = None
        self.logger = _Logger()
        self._best_ema = np.float64(0.5)
        self.current_epoch = 4
        self.my_init_kwargs = {"fold": 0, "device": torch.device("cpu")}
        self.inference_allowed_mirroring_axes = (0, 1)
        self.local_rank, self.is_ddp, self.was_initialized = 0, False, True
        self.disable_checkpointing = False
        self.device = torch.device("cpu")
        self.output_folder = str(folder)
        self.messages: list[str] = []

    def print_to_log_file(self, *args):
        self.messages.append(" ".join(map(str, args)))

    def on_train_start(self):
        self.trained_from = torch.rand(1)  # nnU-Net builds its loaders here, which draws random batches


class _Trainer(NNExtTrainerMixin, _StockStandIn):
    def extra_checkpoint_state(self):
        return {**super().extra_checkpoint_state(), "method": {"count": torch.tensor(3)}}

    def load_extra_checkpoint_state(self, checkpoint):
        super().load_extra_checkpoint_state(checkpoint)
        self.restored_method = checkpoint["method"]


def test_a_checkpoint_is_nnunets_plus_the_method_and_rng_state(tmp_path):
    trainer = _Trainer(tmp_path)
    trainer.save_checkpoint(str(tmp_path / "ckpt.pth"))
    ckpt = torch.load(tmp_path / "ckpt.pth", weights_only=False)
    assert set(ckpt) == set(NNUNET_CHECKPOINT_KEYS) | {"method", RNG_CHECKPOINT_KEY}
    assert ckpt["current_epoch"] == 5 and ckpt["trainer_name"] == "_Trainer" and ckpt["_best_ema"] == 0.5
    assert ckpt["method"]["count"].item() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_load_restores_nnunets_state_the_method_and_then_the_random_sequence(tmp_path):
    source = _Trainer(tmp_path)
    with torch.no_grad():
        source.network.weight.fill_(0.5)
    source.optimizer.step()  # an optimizer state to restore
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    source.save_checkpoint(str(tmp_path / "ckpt.pth"))
    expected = (random.random(), np.random.rand(), torch.rand(1))

    trainer = _Trainer(tmp_path)
    trainer.load_checkpoint(str(tmp_path / "ckpt.pth"))
    assert trainer.current_epoch == 5 and trainer.restored_method["count"].item() == 3
    assert torch.equal(trainer.network.weight, source.network.weight)
    assert trainer.optimizer.state_dict()["param_groups"] == source.optimizer.state_dict()["param_groups"]
    assert trainer.logger.values == source.logger.values
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    trainer.on_train_start()  # the state comes back after the loaders drew their batches
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_load_takes_a_dict_and_strips_a_wrappers_prefix(tmp_path):
    source = _Trainer(tmp_path)
    checkpoint = source.nnunet_checkpoint()
    checkpoint["network_weights"] = {f"module.{k}": v + 1 for k, v in checkpoint["network_weights"].items()}
    trainer = _Trainer(tmp_path)
    trainer.load_checkpoint({**checkpoint, "method": {}})
    torch.testing.assert_close(trainer.network.bias, source.network.bias + 1)
    with pytest.raises(TypeError, match="file path or dict"):
        trainer.load_checkpoint(3)
    with pytest.raises(ValueError, match="-pretrained_weights"):
        trainer.load_checkpoint({"network_weights": checkpoint["network_weights"]})


def test_a_failing_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _Trainer(tmp_path)
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    before = path.read_bytes()

    def killed_while_writing(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    trainer.current_epoch = 9
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_no_checkpoint_on_other_ranks_or_when_disabled(tmp_path):
    trainer = _Trainer(tmp_path)
    trainer.local_rank = 1
    trainer.save_checkpoint(str(tmp_path / "a.pth"))
    trainer.local_rank, trainer.disable_checkpointing = 0, True
    trainer.save_checkpoint(str(tmp_path / "b.pth"))
    assert not list(tmp_path.iterdir()) and trainer.messages == ["No checkpoint written, checkpointing is disabled"]


def test_method_state_may_not_replace_nnunets_entries(tmp_path):
    clashing = type("_Clashing", (_Trainer,), {"extra_checkpoint_state": lambda self: {"current_epoch": 0}})
    with pytest.raises(ValueError, match="current_epoch"):
        clashing(tmp_path).save_checkpoint(str(tmp_path / "x.pth"))


def test_training_start_removes_temporary_checkpoints_of_a_killed_run_on_rank_0_only(tmp_path):
    leftovers = [tmp_path / ".checkpoint_latest.pth.a1b2c3d4.tmp", tmp_path / ".checkpoint_best.pth.x9y8z7w6.tmp"]
    kept = [tmp_path / "checkpoint_latest.pth", tmp_path / ".dataset.json.abcdefgh.tmp", tmp_path / "notes.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    trainer = _Trainer(tmp_path)
    trainer.local_rank = 1
    trainer.on_train_start()
    assert all(p.exists() for p in leftovers)
    trainer.local_rank = 0
    trainer.on_train_start()
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)
    assert "removed 2 temporary checkpoint file(s)" in trainer.messages[-1]
