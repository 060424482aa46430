"""Style consistency trainers in-process on the tiny workspace: views, loss terms, decoder, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.style_consistency import apply_style, consistency_kl, regeneration_mse, sample_style_parameters
from nnunet_ext.trainers import style_consistency as sc_module
from nnunet_ext.trainers.gin import GINMixin
from nnunet_ext.trainers.style_consistency import (
    REGENERATION_DECODER_KEY,
    STYLE_GENERATOR_KEY,
    StyleConsistencyLoss,
    StyleConsistencyMixin,
    nnUNetTrainerStyleConsistency,
    nnUNetTrainerStyleConsistency_augmentOnly,
    nnUNetTrainerStyleConsistency_keepBatch,
    nnUNetTrainerStyleConsistency_noReg,
    nnUNetTrainerStyleConsistencyDA5,
)
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely
from tests.conftest import count_optimizer_steps, make_batch, make_trainer

pytestmark = pytest.mark.e2e


class nnUNetTrainerTestGINStyleConsistency(GINMixin, StyleConsistencyMixin, nnUNetTrainer):
    """GIN views as the clean views of style consistency (composition check)."""


def _spy_forward(network) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []
    forward = network.forward

    def spy(x, *args, **kwargs):
        calls.append(x.detach().clone())
        return forward(x, *args, **kwargs)

    network.forward = spy
    return calls


def _ready(cls, ws, monkeypatch, tmp_path):
    trainer = make_trainer(cls, ws, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.network.train()
    return trainer


def test_step_feeds_clean_and_altered_views_and_adds_both_terms(tiny_workspace, monkeypatch, tmp_path):
    trainer = _ready(nnUNetTrainerStyleConsistency, tiny_workspace, monkeypatch, tmp_path)
    loss = trainer.loss
    assert isinstance(loss, StyleConsistencyLoss) and loss.weight == 10.0 and loss.regeneration_weight == 0.1
    batch = make_batch(trainer)
    g = torch.Generator()
    g.set_state(trainer._sc_rng.generator.get_state())
    expected_altered = apply_style(batch["data"], sample_style_parameters(2, 1, batch["data"].shape[2:],
                                                                          trainer.style_config(), g))
    with torch.no_grad():  # InstanceNorm: each sample's features do not depend on the rest of the batch
        expected_bottleneck = trainer.network.encoder(expected_altered)[-1]
    calls = _spy_forward(trainer.network)
    encoder_calls = []
    trainer.network.encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    decoder_inputs, mse_args = [], []
    decoder_forward = trainer._sc_decoder.forward
    trainer._sc_decoder.forward = lambda z: decoder_inputs.append(z.detach()) or decoder_forward(z)
    monkeypatch.setattr(sc_module, "regeneration_mse", lambda r, c: mse_args.append(c) or regeneration_mse(r, c))
    decoder_before = {k: v.clone() for k, v in trainer._sc_decoder.state_dict().items()}
    steps = count_optimizer_steps(trainer)
    out = trainer.train_step(batch)
    assert steps[0] == 1 and len(calls) == 1 and len(encoder_calls) == 1
    torch.testing.assert_close(calls[0], torch.cat([batch["data"], expected_altered]))
    # the decoder reads the altered half's bottleneck and is scored against the clean images
    torch.testing.assert_close(decoder_inputs[0], expected_bottleneck, atol=1e-4, rtol=1e-4)
    assert torch.equal(mse_args[0], batch["data"])
    (seg, cons), = loss.records
    mse, = loss.regeneration_records
    assert cons > 0 and mse > 0
    np.testing.assert_allclose(out["loss"], float(seg + 10.0 * cons + 0.1 * mse), rtol=1e-5)
    changed = [k for k, v in trainer._sc_decoder.state_dict().items() if not torch.equal(v, decoder_before[k])]
    assert changed, "the regeneration decoder was not trained"
    assert len(trainer.optimizer.param_groups) == 2
    trainer.lr_scheduler.step(1)  # nnU-Net's poly schedule moves the decoder's learning rate too
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] < trainer.initial_lr and lrs[1] == lrs[0]
    # outside train_step (validation) the loss is nnU-Net's alone, and nothing is captured
    output = trainer.network(batch["data"])
    target = batch["target"]
    torch.testing.assert_close(loss(output, target), loss.segmentation_loss(output, target))
    assert trainer._sc_capture.outputs == [] and len(encoder_calls) == 2


def test_the_segmentation_network_is_stock(tiny_workspace, monkeypatch, tmp_path):
    ours = _ready(nnUNetTrainerStyleConsistency, tiny_workspace, monkeypatch, tmp_path / "a")
    stock = _ready(nnUNetTrainer, tiny_workspace, monkeypatch, tmp_path / "b")
    assert type(ours.network) is type(stock.network)
    assert ours.network.state_dict().keys() == stock.network.state_dict().keys()


def test_ablations_and_compositions(tiny_workspace, monkeypatch, tmp_path):
    no_reg = _ready(nnUNetTrainerStyleConsistency_noReg, tiny_workspace, monkeypatch, tmp_path / "a")
    assert no_reg._sc_decoder is None and len(no_reg.optimizer.param_groups) == 1
    out = no_reg.train_step(make_batch(no_reg))
    (seg, cons), = no_reg.loss.records
    np.testing.assert_allclose(out["loss"], float(seg + 10.0 * cons), rtol=1e-5)

    plain = _ready(nnUNetTrainerStyleConsistency_augmentOnly, tiny_workspace, monkeypatch, tmp_path / "b")
    out = plain.train_step(make_batch(plain))
    (seg, cons), = plain.loss.records
    assert cons > 0 and plain.loss.regeneration_records == []  # measured for the log, not part of the loss
    np.testing.assert_allclose(out["loss"], float(seg), rtol=1e-6)

    da5 = _ready(nnUNetTrainerStyleConsistencyDA5, tiny_workspace, monkeypatch, tmp_path / "c")
    assert np.isfinite(da5.train_step(make_batch(da5))["loss"])

    half = _ready(nnUNetTrainerStyleConsistency_keepBatch, tiny_workspace, monkeypatch, tmp_path / "e")
    calls = _spy_forward(half.network)
    half.train_step(make_batch(half, n=4))
    assert calls[0].shape[0] == 4  # both views of 2 of the 4 samples: nnU-Net's network batch

    both = _ready(nnUNetTrainerTestGINStyleConsistency, tiny_workspace, monkeypatch, tmp_path / "d")
    calls = _spy_forward(both.network)
    batch = make_batch(both)
    both.train_step(batch)
    clean = calls[0].chunk(2)[0]
    assert not torch.allclose(clean, batch["data"], atol=1e-2)  # the clean view is GIN's view
    assert both.loss.records and both.loss.regeneration_records


def test_checkpoint_holds_the_decoder_and_generator_and_restores_them(tiny_workspace, monkeypatch, tmp_path):
    trainer = _ready(nnUNetTrainerStyleConsistency, tiny_workspace, monkeypatch, tmp_path / "a")
    trainer.train_step(make_batch(trainer))
    path = tmp_path / "ckpt.pth"
    trainer.save_checkpoint(str(path))
    ckpt = load_checkpoint_safely(path)
    assert REGENERATION_DECODER_KEY in ckpt and STYLE_GENERATOR_KEY in ckpt
    assert not any(k.startswith("stages.") or "head" in k for k in ckpt["network_weights"])  # decoder apart

    fresh = _ready(nnUNetTrainerStyleConsistency, tiny_workspace, monkeypatch, tmp_path / "b")
    fresh.load_checkpoint(str(path))
    for k, v in trainer._sc_decoder.state_dict().items():
        torch.testing.assert_close(fresh._sc_decoder.state_dict()[k], v)
    assert torch.equal(fresh._sc_rng.generator.get_state(), trainer._sc_rng.generator.get_state())

    del ckpt[REGENERATION_DECODER_KEY]
    other = _ready(nnUNetTrainerStyleConsistency, tiny_workspace, monkeypatch, tmp_path / "c")
    with pytest.raises(ValueError, match="no regeneration decoder"):
        other.load_checkpoint(ckpt)


def test_bad_settings_are_refused_naming_the_attribute(tiny_workspace, monkeypatch, tmp_path):
    class BadWeight(nnUNetTrainerStyleConsistency):
        sc_consistency_weight = -1.0

    class BadGamma(nnUNetTrainerStyleConsistency):
        sc_gamma_range = (0.0, 1.0)

    for cls, match in ((BadWeight, "sc_consistency_weight must be >= 0"),
                       (BadGamma, r"BadGamma\.sc_gamma_range must be")):
        trainer = make_trainer(cls, tiny_workspace, monkeypatch, tmp_path / cls.__name__)
        with pytest.raises(ValueError, match=match):
            trainer.initialize()


def test_consistency_in_the_step_is_the_kl_of_the_two_halves(tiny_workspace, monkeypatch, tmp_path):
    trainer = _ready(nnUNetTrainerStyleConsistency_noReg, tiny_workspace, monkeypatch, tmp_path)
    outputs = []
    seg_forward = trainer.loss.segmentation_loss.forward

    def recording(o, t):
        outputs.append(o[0].detach())
        return seg_forward(o, t)

    trainer.loss.segmentation_loss.forward = recording
    trainer.train_step(make_batch(trainer))
    clean, altered = outputs[0].chunk(2)
    torch.testing.assert_close(trainer.loss.records[0][1], consistency_kl(clean, altered))
