"""GIN / GIN-IPA trainers and their compositions inside real nnU-Net (CPU, tiny real data, in-process)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.core.gin import (
    apply_gin,
    apply_ipa,
    sample_gin_parameters,
    sample_ipa_parameters,
    view_consistency,
)
from nnunet_ext.networks.catenorm import CateNormUNet
from nnunet_ext.trainers.gin import (
    GIN_LOG_FILENAME,
    nnUNetTrainerCateNormGIN,
    nnUNetTrainerGIN,
    nnUNetTrainerGINDA5,
    nnUNetTrainerGINIPA,
    nnUNetTrainerGINIPA_keepBatch,
    nnUNetTrainerStyleCurriculumDA5_smoke,
)
from nnunet_ext.trainers.toolkit import PairedConsistencyLoss
from tests.conftest import count_optimizer_steps, make_batch, make_trainer

pytestmark = pytest.mark.e2e


def _spy_forward(network) -> list[tuple[torch.Tensor, dict]]:
    """Record the input (and keyword arguments) of every forward call of ``network``."""
    calls: list[tuple[torch.Tensor, dict]] = []
    forward = network.forward

    def spy(x, *args, **kwargs):
        calls.append((x.detach().clone(), kwargs))
        return forward(x, *args, **kwargs)

    network.forward = spy
    return calls


def _generator_copy(trainer) -> torch.Generator:
    g = torch.Generator()
    g.set_state(trainer._gin_generator.get_state())
    return g


def _transform_names(t) -> set[str]:
    names = {type(t).__name__}
    for attr in ("transforms", "transform", "list_of_transforms"):
        child = getattr(t, attr, None)
        for c in child if isinstance(child, (list, tuple)) else [child] if child is not None else []:
            names |= _transform_names(c)
    return names


def _training_transform_names(trainer) -> set[str]:
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    return _transform_names(trainer.get_training_transforms(
        trainer.configuration_manager.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes,
        dummy_2d))


def test_gin_step_feeds_gin_views_to_the_network(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerGIN, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.network.train()
    batch = make_batch(trainer)
    g = _generator_copy(trainer)
    expected = apply_gin(batch["data"], sample_gin_parameters(2, 1, 2, trainer.gin_config(), g))
    calls = _spy_forward(trainer.network)
    steps = count_optimizer_steps(trainer)
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and steps[0] == 1 and len(calls) == 1
    seen = calls[0][0]
    torch.testing.assert_close(seen, expected)
    assert not torch.allclose(seen, batch["data"], atol=1e-2)
    torch.testing.assert_close(seen.mean((2, 3)), batch["data"].mean((2, 3)), atol=1e-4, rtol=0)  # z-scored stays


def test_gin_ipa_step_two_views_consistency_and_amp_cycle(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerGINIPA, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    assert isinstance(trainer.loss, PairedConsistencyLoss) and trainer.loss.weight == 10.0
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1)
    trainer.network.train()
    batch = make_batch(trainer)
    g = _generator_copy(trainer)
    view_a, view_b = apply_ipa(batch["data"], sample_ipa_parameters(2, 1, 2, trainer.gin_config(), 4, g))
    calls = _spy_forward(trainer.network)
    seg_losses = []
    seg_forward = trainer.loss.segmentation_loss.forward

    def recording_segmentation_loss(o, t):
        seg_losses.append((o, t, seg_forward(o, t)))
        return seg_losses[-1][2]

    trainer.loss.segmentation_loss.forward = recording_segmentation_loss
    steps = count_optimizer_steps(trainer)
    out = trainer.train_step(batch)
    assert steps[0] == 1 and len(calls) == 1
    torch.testing.assert_close(calls[0][0], torch.cat([view_a, view_b]))  # [views a; views b], 2B samples
    output, target, s = seg_losses[0]
    for t, original in zip(target, batch["target"]):  # both views supervised with the same labels
        assert torch.equal(t, torch.cat([original, original]))
    a, b = output[0].detach().chunk(2)
    c = view_consistency(a, b)
    assert c > 0
    np.testing.assert_allclose(out["loss"], float(s.detach() + 10.0 * c), rtol=1e-5)
    assert trainer.grad_scaler.get_scale() == pytest.approx(2.0 ** 9)  # one scaler cycle (growth x2)
    # outside train_step (validation) the loss is nnU-Net's alone
    plain = trainer.loss(output, target)
    torch.testing.assert_close(plain, s)


def test_gin_ipa_keep_batch_feeds_both_views_of_half_the_cases(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerGINIPA_keepBatch, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.network.train()
    batch = make_batch(trainer, n=4)
    g = _generator_copy(trainer)
    keep = torch.randperm(4, generator=g)[:2].sort().values
    view_a, view_b = apply_ipa(batch["data"][keep], sample_ipa_parameters(2, 1, 2, trainer.gin_config(), 4, g))
    calls = _spy_forward(trainer.network)
    trainer.train_step(batch)
    torch.testing.assert_close(calls[0][0], torch.cat([view_a, view_b]))  # 4 samples: nnU-Net's batch size
    assert trainer.loss.records and len(trainer._gin_epoch["consistency_loss"]) == 1


def test_gin_ipa_training_log_and_stock_network(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerGINIPA, tiny_workspace, monkeypatch, tmp_path, epochs=2, iterations=2)
    trainer.run_training()
    log = json.loads((Path(trainer.output_folder) / GIN_LOG_FILENAME).read_text())
    assert log["settings"]["ipa_consistency_weight"] == 10.0 and log["settings"]["gin"]["n_layers"] == 4
    assert [e["epoch"] for e in log["epochs"]] == [0, 1]
    for e in log["epochs"]:
        assert e["batches"] == 2 and 0 < e["mean_alpha"] < 1 and 0 < e["mean_blend"] < 1
        assert e["mean_consistency_loss"] > 0 and np.isfinite(e["mean_segmentation_loss"])
    logged = trainer.logger.local_logger.my_fantastic_logging["train_losses"]
    for e, total in zip(log["epochs"], logged):  # nnU-Net's train loss = segmentation + 10 * consistency
        assert total == pytest.approx(e["mean_segmentation_loss"] + 10 * e["mean_consistency_loss"], rel=1e-4)
    # test time is stock nnU-Net: the checkpoint loads strictly into the stock network of the plans
    ckpt = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    pm = PlansManager(trainer.plans_manager.plans)
    stock = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1,
                                                     trainer.label_manager.num_segmentation_heads, False)
    stock.load_state_dict(ckpt["network_weights"])
    assert type(stock) is type(trainer.network)


def test_catenorm_gin_applies_both(tiny_workspace, monkeypatch, tmp_path):
    """Both CateNorm passes happen, and both see the same GIN views of the batch."""
    trainer = make_trainer(nnUNetTrainerCateNormGIN, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    net = trainer.network
    assert isinstance(net, CateNormUNet)
    net.train()
    net.activate_catenorm()
    batch = make_batch(trainer)
    g = _generator_copy(trainer)
    expected = apply_gin(batch["data"], sample_gin_parameters(2, 1, 2, trainer.gin_config(), g))
    calls = _spy_forward(net)
    steps = count_optimizer_steps(trainer)
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and steps[0] == 2
    assert [kw.get("branch") for _, kw in calls] == ["plain", "catenorm"] and calls[1][1]["mask"] is not None
    for seen, _ in calls:
        torch.testing.assert_close(seen, expected)
    assert not torch.allclose(calls[0][0], batch["data"], atol=1e-2)


def test_gin_da5_keeps_da5_pipeline_and_adds_gin(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerGINDA5, tiny_workspace, monkeypatch, tmp_path)
    stock_names = _training_transform_names(make_trainer(nnUNetTrainer, tiny_workspace, monkeypatch, tmp_path / "s"))
    names = _training_transform_names(trainer)
    assert {"MedianFilterTransform", "LocalGammaTransform", "BlankRectangleTransform"} <= names
    assert not {"MedianFilterTransform", "LocalGammaTransform"} & stock_names
    assert type(trainer).get_training_transforms is nnUNetTrainerDA5.get_training_transforms
    trainer.initialize()
    trainer.network.train()
    batch = make_batch(trainer)
    expected = apply_gin(batch["data"], sample_gin_parameters(2, 1, 2, trainer.gin_config(), _generator_copy(trainer)))
    calls = _spy_forward(trainer.network)
    trainer.train_step(batch)
    torch.testing.assert_close(calls[0][0], expected)


def test_style_curriculum_da5_runs_the_curriculum_on_da5_batches(tiny_workspace, monkeypatch, tmp_path):
    trainer = make_trainer(nnUNetTrainerStyleCurriculumDA5_smoke, tiny_workspace, monkeypatch, tmp_path,
                           epochs=2, iterations=2)
    assert "LocalGammaTransform" in _training_transform_names(trainer)
    trainer.initialize()
    steps = count_optimizer_steps(trainer)
    trainer.run_training()
    assert steps[0] == 2 * 1 + 2 * (trainer.curriculum_n + 1)  # warm-up epoch: 1 update per batch; then n + 1


def test_bad_settings_and_unsupported_modes(tiny_workspace, monkeypatch, tmp_path):
    bad = make_trainer(nnUNetTrainerGIN, tiny_workspace, monkeypatch, tmp_path / "a")
    bad.gin_n_layers = 0
    with pytest.raises(ValueError, match="n_layers"):
        bad.initialize()
    cascade = make_trainer(nnUNetTrainerGINIPA, tiny_workspace, monkeypatch, tmp_path / "b")
    cascade.is_cascaded = True
    with pytest.raises(NotImplementedError, match="cascade"):
        cascade.initialize()
    regions = make_trainer(nnUNetTrainerGINIPA, tiny_workspace, monkeypatch, tmp_path / "c")
    regions.label_manager = types.SimpleNamespace(has_regions=True)
    with pytest.raises(NotImplementedError, match="region"):
        regions.initialize()
    weight = make_trainer(nnUNetTrainerGINIPA, tiny_workspace, monkeypatch, tmp_path / "d")
    weight.ipa_consistency_weight = -1.0
    with pytest.raises(ValueError, match="ipa_consistency_weight"):
        weight.initialize()
