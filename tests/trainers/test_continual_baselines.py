"""EWC and LwF stream trainers in-process on a 2-stage tiny stream (CPU, real nnU-Net training)."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_ext.core.continual_regularizers import deep_supervision_distillation_loss
from nnunet_ext.trainers.continual_baselines import (
    nnUNetTrainerEWC,
    nnUNetTrainerEWC_50epochs,
    nnUNetTrainerEWC_smoke,
    nnUNetTrainerLwF,
    nnUNetTrainerLwF_50epochs,
    nnUNetTrainerLwF_smoke,
)
from nnunet_ext.trainers.stream import STREAM_CHECKPOINT_KEY
from tests.conftest import make_trainer
from tests.trainers.stream_workspace import stream_workspace

pytestmark = pytest.mark.e2e

TRAINERS = [nnUNetTrainerEWC, nnUNetTrainerEWC_50epochs, nnUNetTrainerEWC_smoke, nnUNetTrainerLwF,
            nnUNetTrainerLwF_50epochs, nnUNetTrainerLwF_smoke]


def _ckpt(trainer, name: str) -> dict:
    return torch.load(Path(trainer.output_folder) / name, map_location="cpu", weights_only=False)


def _log(trainer) -> dict:
    return json.loads((Path(trainer.output_folder) / trainer.regularization_log_filename).read_text())


def _fixed_batches(trainer, n: int, seed: int = 0) -> list[dict]:
    """Deterministic batches shaped like nnU-Net's training batches (deep-supervision target list)."""
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales()
    out = []
    for _ in range(n):
        data = torch.randn(2, 1, *patch, generator=g)
        target = [torch.randint(0, 3, (2, 1, *[round(p * s) for p, s in zip(patch, sc)]), generator=g).float()
                  for sc in scales]
        out.append({"data": data, "target": target})
    return out


@pytest.mark.parametrize("cls", TRAINERS, ids=lambda c: c.__name__)
def test_names_resolve_through_nnunets_lookup(cls):
    with contextlib.redirect_stdout(io.StringIO()):
        assert recursive_find_trainer_class_by_name(cls.__name__) is cls
    assert list(inspect.signature(cls.__init__).parameters) == list(
        inspect.signature(nnUNetTrainer.__init__).parameters)


def test_settings():
    assert (nnUNetTrainerEWC.ewc_lambda, nnUNetTrainerEWC.ewc_mode, nnUNetTrainerEWC.ewc_fisher_batches) == \
        (0.4, "sum", 50)
    assert (nnUNetTrainerLwF.lwf_temperature, nnUNetTrainerLwF.lwf_alpha) == (2.0, 1.0)
    assert nnUNetTrainerEWC.epochs_per_stage == nnUNetTrainerLwF.epochs_per_stage == 200
    assert nnUNetTrainerEWC_50epochs.epochs_per_stage == nnUNetTrainerLwF_50epochs.epochs_per_stage == 50


@pytest.mark.parametrize("attr,value,match", [("ewc_lambda", -1.0, "ewc_lambda"),
                                              ("ewc_fisher_batches", 0, "ewc_fisher_batches"),
                                              ("ewc_mode", "mean", "mode"), ("ewc_gamma", 2.0, "gamma"),
                                              ("lwf_temperature", 0.0, "lwf_temperature"),
                                              ("lwf_alpha", -0.5, "lwf_alpha")])
def test_bad_settings_raise_at_construction(attr, value, match, tiny_workspace, monkeypatch, tmp_path):
    base = nnUNetTrainerEWC_smoke if attr.startswith("ewc") else nnUNetTrainerLwF_smoke
    bad = type("nnUNetTrainerBad", (base,), {attr: value})
    ws = stream_workspace(tiny_workspace, tmp_path)
    with pytest.raises(ValueError, match=match):
        make_trainer(bad, ws, monkeypatch, tmp_path)


def test_ewc_consolidates_after_each_stage_and_resumes(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(nnUNetTrainerEWC_smoke, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    trainer.run_training()
    # the penalty is 0 during stage 0 and active (> 0) during stage 1
    log = _log(trainer)
    assert log["stage"] == [0, 0, 1, 1]
    assert log["train_regularization"][:2] == [0.0, 0.0] and min(log["train_regularization"][2:]) > 0
    assert all(np.isfinite(log["train_loss_segmentation"]))
    # the model after stage 0 is the anchor of the stage-0 state, with a Fisher of 4 batches
    stage0 = _ckpt(trainer, "checkpoint_stage_0.pth")
    ewc0 = stage0[STREAM_CHECKPOINT_KEY]["ewc"]
    assert ewc0["num_stages"] == 1 and set(ewc0["fisher"]) == {n for n, _ in trainer.network.named_parameters()}
    for name, anchor in ewc0["anchor"].items():
        torch.testing.assert_close(anchor, stage0["network_weights"][name].float())
    assert sum(float(f.sum()) for f in ewc0["fisher"].values()) > 0
    assert all(bool((f >= 0).all()) for f in ewc0["fisher"].values())
    assert trainer.ewc.num_stages == 2
    # checkpoint round trip: a new trainer loads the consolidated Fisher and anchors
    resumed = make_trainer(nnUNetTrainerEWC_smoke, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    resumed.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    assert resumed.ewc.num_stages == 2
    for name in trainer.ewc.fisher:
        torch.testing.assert_close(resumed.ewc.fisher[name], trainer.ewc.fisher[name])
        torch.testing.assert_close(resumed.ewc.anchor[name], trainer.ewc.anchor[name])
    # resuming after stage 0 (no stage-1 epoch yet) continues with the stage-0 penalty
    mid = make_trainer(nnUNetTrainerEWC_smoke, ws, monkeypatch, tmp_path / "mid", epochs=4, iterations=2)
    mid.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_stage_0.pth"))
    assert mid.ewc.num_stages == 1 and mid.current_stage == 1
    penalty = mid.regularization_loss(None, None)
    assert penalty.item() == pytest.approx(0.0, abs=1e-12)  # weights == anchors right after stage 0
    # resuming with other consolidation settings is refused
    online = type("nnUNetTrainerEWCOnline", (nnUNetTrainerEWC_smoke,), {"ewc_mode": "online", "ewc_gamma": 0.5})
    other = make_trainer(online, ws, monkeypatch, tmp_path / "other", epochs=4, iterations=2)
    with pytest.raises(ValueError, match="mode/gamma"):
        other.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_stage_0.pth"))


def _distance_from_anchor(trainer) -> float:
    """sum F (theta - theta*)^2 at the end of stage 1, w.r.t. the stage-0 state."""
    state = _ckpt(trainer, "checkpoint_stage_0.pth")[STREAM_CHECKPOINT_KEY]["ewc"]
    final = _ckpt(trainer, "checkpoint_final.pth")["network_weights"]
    return sum(float((f * (final[n].float() - state["anchor"][n]) ** 2).sum()) for n, f in state["fisher"].items())


def test_ewc_penalty_pulls_weights_towards_the_anchor(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    distances = {}
    # lambda 1e3: lr 0.01 * lambda * max Fisher (0.05-0.14 here) stays about 1, a stable pull; at 1e4 the
    # penalty's step overshoots and the weights can end farther from the anchor than without it (seen in CI).
    # Ratio at 1e3 over 9 runs with other seeds: 0.10-0.20 (bound 0.5). The smoke trainer seeds itself, so
    # both runs see the same init and batches: only lambda differs.
    for lam in (0.0, 1e3):
        cls = type("nnUNetTrainerEWCLambda", (nnUNetTrainerEWC_smoke,), {"ewc_lambda": lam})
        trainer = make_trainer(cls, ws, monkeypatch, tmp_path / f"lam{lam}", epochs=4, iterations=3)
        trainer.run_training()
        distances[lam] = _distance_from_anchor(trainer)
    assert distances[1e3] < 0.5 * distances[0.0], distances


def test_fisher_is_unscaled_under_amp(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(nnUNetTrainerEWC_smoke, ws, monkeypatch, tmp_path)
    trainer.initialize()
    batches = _fixed_batches(trainer, 3)
    trainer.dataloader_train = iter(batches)
    trainer.ewc_fisher_batches = 3
    plain = trainer.estimate_fisher()
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    trainer.dataloader_train = iter(batches)
    scaled = trainer.estimate_fisher()
    assert plain.count == scaled.count == 3
    for name, f in plain.fisher().items():
        torch.testing.assert_close(scaled.fisher()[name], f, rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in trainer.network.parameters())  # no gradient left for the optimizer
    # the train step with AMP's scaler and the penalty: one finite step, scale cycle completed
    trainer.ewc.consolidate(plain.fisher(), dict(trainer.network.named_parameters()))
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1)
    trainer.network.train()
    trainer._step_terms = []
    out = trainer.train_step(batches[0])
    assert np.isfinite(out["loss"]) and trainer.grad_scaler.get_scale() == pytest.approx(2.0 ** 9)
    assert trainer._step_terms[0][1] == 0.0  # the first step starts at the anchor: penalty 0, then grows
    trainer.train_step(batches[1])
    assert trainer._step_terms[1][1] > 0


class _RecordingLwF(nnUNetTrainerLwF_smoke):
    def train_step(self, batch):
        if not hasattr(self, "teacher_per_step"):
            self.teacher_per_step: list[tuple[int, bool]] = []
        self.teacher_per_step.append((self.current_stage, self.teacher is not None))
        return super().train_step(batch)


def test_lwf_teacher_exists_only_from_stage_1_and_round_trips(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(_RecordingLwF, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    trainer.run_training()
    assert trainer.teacher_per_step == [(0, False)] * 4 + [(1, True)] * 4
    log = _log(trainer)
    assert log["train_regularization"][:2] == [0.0, 0.0] and min(log["train_regularization"][2:]) > 0
    # the teacher is the frozen model after stage 0; the student moved on
    stage0 = _ckpt(trainer, "checkpoint_stage_0.pth")
    assert stage0[STREAM_CHECKPOINT_KEY]["lwf"]["teacher"] is None
    teacher = trainer.teacher.state_dict()
    assert all(not p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    for name, w in stage0["network_weights"].items():
        torch.testing.assert_close(teacher[name], w)
    final = _ckpt(trainer, "checkpoint_final.pth")
    assert any(not torch.equal(final["network_weights"][n], w) for n, w in stage0["network_weights"].items())
    # checkpoint round trip keeps the teacher; inference weights are a plain nnU-Net (no teacher keys)
    resumed = make_trainer(_RecordingLwF, ws, monkeypatch, tmp_path, epochs=4, iterations=2)
    resumed.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    for name, w in resumed.teacher.state_dict().items():
        torch.testing.assert_close(w, teacher[name])
    # what nnUNetv2_predict does: the static build (no trainer instance) loads the weights strictly
    net = _RecordingLwF.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 3, enable_deep_supervision=False)
    net.load_state_dict(final["network_weights"])
    assert type(net) is type(trainer.network)


def test_lwf_loss_uses_the_teacher_and_nnunets_deep_supervision_weights(tiny_workspace, monkeypatch, tmp_path):
    ws = stream_workspace(tiny_workspace, tmp_path)
    trainer = make_trainer(nnUNetTrainerLwF_smoke, ws, monkeypatch, tmp_path)
    trainer.initialize()
    batch = _fixed_batches(trainer, 1)[0]
    assert trainer.regularization_loss(batch["data"], trainer.network(batch["data"])) is None  # stage 0
    trainer.teacher = trainer._frozen_copy()
    output = trainer.network(batch["data"])
    assert isinstance(output, list) and len(output) > 1
    assert trainer.regularization_loss(batch["data"], output).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    output = trainer.network(batch["data"])
    loss = trainer.regularization_loss(batch["data"], output)
    with torch.no_grad():
        teacher_output = trainer.teacher(batch["data"])
    expected = deep_supervision_distillation_loss(output, teacher_output, 2.0, trainer.loss.weight_factors)
    torch.testing.assert_close(loss, expected)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
