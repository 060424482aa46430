"""The ODEx pool: features up to the first norm, routing per patch, growth from a state dict, logging."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ext.core.odex import (
    Calibration,
    GaussianStats,
    mahalanobis,
    norm_input_features,
)
from nnunet_ext.networks.odex import FeatureStem, ODExPool, feature_stem, first_norm_layer


def unet(dims: int, seed: int = 0, arch: type = PlainConvUNet) -> PlainConvUNet | ResidualEncoderUNet:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    return arch(1, 2, (4, 8), conv, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True, norm_op=norm,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                deep_supervision=False)


def resenc_unet(dims: int, seed: int = 0) -> ResidualEncoderUNet:
    return unet(dims, seed, ResidualEncoderUNet)


def first_norm_input(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Independent of the pool: capture the first norm layer's input with a forward hook on the whole net."""
    seen = []
    handle = first_norm_layer(network).register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.no_grad():
        network(x)
    handle.remove()
    return seen[0]


def calibrate(pool: ODExPool, index: int, x: torch.Tensor) -> None:
    """Give expert ``index`` one Gaussian of the features of ``x`` and its in-distribution calibration."""
    z = pool.features(x, index)
    stats = GaussianStats(pool.feature_dim)
    stats.update(z)
    mean, chol = stats.gaussian()
    cal = Calibration()
    cal.update(mahalanobis(z, mean, chol))
    pool.histories[index].append(mean, chol, cal.as_tensor())


def two_domain_pool(dims: int) -> tuple[ODExPool, torch.Tensor, torch.Tensor]:
    shape = (12, 1) + (8,) * dims
    torch.manual_seed(1)
    a = torch.randn(shape)
    b = torch.randn(shape) * 4 + 6
    pool = ODExPool(unet(dims))
    calibrate(pool, 0, a)
    new = pool.add_expert(0)
    with torch.no_grad():
        for p in pool.experts[new].parameters():
            p.add_(0.1 * torch.randn_like(p))  # the copy trains on its own
    pool.histories[new] = type(pool.histories[0])(pool.feature_dim)
    calibrate(pool, new, b)
    return pool.eval(), a, b


@pytest.mark.parametrize("dims", [2, 3])
def test_features_stop_at_the_first_norm(dims):
    pool = ODExPool(unet(dims))
    assert pool.feature_dim == 8
    x = torch.randn((2, 1) + (8,) * dims)
    stem_conv = pool.experts[0].encoder.stages[0][0].convs[0].conv
    torch.testing.assert_close(pool.features(x, 0), norm_input_features(stem_conv(x)))
    assert first_norm_layer(pool.experts[0])._forward_pre_hooks == {}  # the hook is removed again


@pytest.mark.parametrize("dims", [2, 3])
def test_each_patch_goes_to_the_closest_expert_and_only_it_runs(dims):
    pool, a, b = two_domain_pool(dims)
    mixed = torch.cat([a[:2], b[:1]])
    choices, normalised = pool.select(mixed)
    assert choices == [0, 0, 1] and normalised.shape == (3, 2)
    # without a reference each expert measures with its own features; the scores are the parts' means
    torch.testing.assert_close(torch.stack([d.mean(1) for d in pool.distances(mixed)], dim=1), pool.scores(mixed))
    with torch.no_grad():
        out = pool(mixed)
        torch.testing.assert_close(out[:2], pool.experts[0](a[:2]))
        torch.testing.assert_close(out[2:], pool.experts[1](b[:1]))
    assert pool.selection_counts == {0: 2, 1: 1}


def test_training_mode_and_route_off_use_the_active_expert():
    pool, a, _ = two_domain_pool(2)
    pool.active = 1
    pool.route = False
    with torch.no_grad():
        torch.testing.assert_close(pool(a[:2]), pool.experts[1](a[:2]))
    with pytest.raises(ValueError, match="expert index"):
        pool.active = 5


def test_strict_load_into_a_fresh_pool_grows_experts_and_histories():
    pool, a, b = two_domain_pool(2)
    pool.add_expert(1)
    pool.active = 2
    fresh = ODExPool(unet(2, seed=5))
    fresh.load_state_dict(pool.state_dict())  # strict, like nnU-Net's predictor
    assert len(fresh) == 3 and [len(h) for h in fresh.histories] == [1, 1, 1] and fresh.active == 2
    fresh.eval()
    x = torch.cat([a[:1], b[:1]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pool(x))


def test_deep_supervision_switch_reaches_every_expert():
    pool = ODExPool(unet(2))
    pool.add_expert(0)
    pool.decoder.deep_supervision = True
    assert all(e.decoder.deep_supervision for e in pool.experts) and pool.decoder.deep_supervision
    with torch.no_grad():
        out = pool.train()(torch.randn(1, 1, 8, 8))
    assert isinstance(out, (list, tuple))


def test_selection_log_and_far_ood_warning(caplog):
    pool, a, _ = two_domain_pool(2)
    with torch.no_grad(), caplog.at_level(logging.WARNING), pool.recording() as recorder:
        pool(a[:1])
        pool(torch.randn(1, 1, 8, 8) * 50 - 200)  # nothing like either domain
    records = json.loads(json.dumps(recorder.as_dict()))  # what `nnext odex explain` writes per case
    assert records["expert"][0] == 0 and records["far_ood"][0] is False
    assert records["far_ood"][1] is True and "far out-of-distribution" in caplog.text


def test_far_ood_warning_once_per_input_not_per_patch(caplog):
    pool, _, _ = two_domain_pool(2)
    far = torch.randn(1, 1, 8, 8) * 50 - 200
    state = pool.state_dict()
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        for _ in range(3):  # three sliding-window patches of one case
            pool(far)
        assert caplog.text.count("far out-of-distribution") == 1 and pool.far_ood_count == 3
        pool.load_state_dict(state)  # what nnU-Net's predictor does before the next case
        pool(far)
    assert caplog.text.count("far out-of-distribution") == 2 and pool.far_ood_count == 4


def test_a_network_without_norm_is_refused():
    with pytest.raises(ValueError, match="no normalisation layer"):
        ODExPool(nn.Conv2d(1, 2, 3))


def test_a_repeated_load_is_skipped_only_while_nothing_changed(monkeypatch):
    pool, a, b = two_domain_pool(2)
    state = pool.state_dict()
    fresh = ODExPool(unet(2, seed=5)).eval()
    calls = []
    original = nn.Module.load_state_dict
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda *args, **kw: (calls.append(1), original(*args, **kw))[1])
    fresh.load_state_dict(state)
    fresh.load_state_dict(state)  # what nnU-Net's predictor does before every case
    assert len(calls) == 1 and len(fresh) == 2
    with torch.no_grad():
        fresh.experts[1].decoder.seg_layers[0].weight.add_(1.0)  # the pool was edited: load again
    fresh.load_state_dict(state)
    assert len(calls) == 2
    assert torch.equal(fresh.experts[1].decoder.seg_layers[0].weight, state["experts.1.decoder.seg_layers.0.weight"])
    with torch.no_grad():
        state["experts.0.decoder.seg_layers.0.bias"].add_(1.0)  # the state dict was edited: load again
    fresh.load_state_dict(state)
    assert len(calls) == 3 and torch.equal(fresh.experts[0].decoder.seg_layers[0].bias,
                                           state["experts.0.decoder.seg_layers.0.bias"])
    fresh.load_state_dict(dict(state))  # another mapping with the same tensors: load again
    fresh.train().load_state_dict(state)  # training mode never skips
    assert len(calls) == 5
    in_predictor = ODExPool(unet(2, seed=6)).eval()
    with torch.inference_mode():  # nnU-Net's predictor loads the weights inside inference mode, case after case
        in_predictor.load_state_dict(state)
        in_predictor.load_state_dict(state)
        assert len(in_predictor) == 2 and len(calls) == 6
        assert in_predictor.select(b)[0] == pool.select(b)[0]


def test_with_a_reference_a_trained_child_wins_on_its_own_data():
    pool, a, b = two_domain_pool(2)  # expert 0 knows a, expert 1 (a copy) knows b
    fresh = ODExPool(unet(2))
    fresh.set_reference(0)
    calibrate(fresh, 0, a)
    child = fresh.add_expert(0)
    with torch.no_grad():  # the child trains on b: its first convolution changes a lot
        first_conv = next(m for m in fresh.experts[child].modules() if isinstance(m, nn.Conv2d))
        first_conv.weight.mul_(-3.0)
    calibrate(fresh, child, b)
    assert torch.equal(fresh.features(b, 0), fresh.features(b, child))  # one feature space
    fresh.eval()
    assert fresh.select(a)[0] == [0] * len(a) and fresh.select(b)[0] == [child] * len(b)
    # the parts behind the scores: the child's history is its parent's Gaussian (a) plus its own (b)
    parts = fresh.distances(b)
    assert [tuple(d.shape) for d in parts] == [(len(b), 1), (len(b), 2)]
    torch.testing.assert_close(torch.stack([d.mean(1) for d in parts], dim=1), fresh.scores(b))
    restored = ODExPool(unet(2, seed=3))
    restored.load_state_dict(fresh.state_dict())  # the reference travels in the state dict
    assert len(restored.reference) == 1 and torch.equal(restored.features(b, 1), fresh.features(b, 1))


def test_to_the_device_it_is_on_skips_the_module_walk(monkeypatch):
    pool, _, b = two_domain_pool(2)
    walks = []
    original = nn.Module._apply
    monkeypatch.setattr(nn.Module, "_apply", lambda self, *a, **kw: (walks.append(1), original(self, *a, **kw))[1])
    before = pool.select(b)
    # what nnU-Net's predictor does before every case
    assert pool.to(torch.device("cpu")) is pool and pool.to("cpu", non_blocking=True) is pool and not walks
    assert pool.select(b)[0] == before[0]
    pool.to(torch.float64)  # a real change still goes through Module.to
    assert walks and all(t.dtype == torch.float64 for t in pool.parameters())
    assert pool.active_expert.dtype == torch.long


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("build", [unet, resenc_unet], ids=["plain", "resenc"])
def test_the_reference_keeps_only_the_stem_before_the_first_norm(dims, build):
    expert = build(dims)
    pool = ODExPool(expert)
    pool.set_reference(0)
    stem = pool.reference[0]
    assert isinstance(stem, FeatureStem) and [type(m) for m in stem] == [nn.Conv2d if dims == 2 else nn.Conv3d]
    assert all(not p.requires_grad for p in stem.parameters())
    x = torch.randn((3, 1) + (8,) * dims)
    torch.testing.assert_close(pool.features(x, 0), norm_input_features(first_norm_input(expert, x)))
    assert {k for k in pool.state_dict() if k.startswith("reference.")} == {"reference.0.0.weight",
                                                                            "reference.0.0.bias"}
    with torch.no_grad():  # the expert trains on; the reference stays what it was
        next(expert.parameters()).mul_(-2.0)
    torch.testing.assert_close(pool.features(x, 0), norm_input_features(first_norm_input(build(dims), x)))
    restored = ODExPool(build(dims, seed=4))
    restored.load_state_dict(pool.state_dict())
    assert isinstance(restored.reference[0], FeatureStem)
    torch.testing.assert_close(restored.features(x, 0), pool.features(x, 0))


def test_a_pool_saved_with_a_whole_reference_still_loads():
    """Pools written before the stem existed hold a whole U-Net as reference: load it as such."""
    expert = unet(2)
    old = ODExPool(copy.deepcopy(expert))
    old.reference.append(copy.deepcopy(expert).requires_grad_(False))
    x = torch.randn(3, 1, 8, 8)
    state = old.state_dict()
    assert "reference.0.decoder.seg_layers.0.weight" in state
    restored = ODExPool(unet(2, seed=5))
    restored.load_state_dict(state)  # strict
    assert not isinstance(restored.reference[0], FeatureStem)
    torch.testing.assert_close(restored.features(x, 0), norm_input_features(first_norm_input(expert, x)))


class _SkipBeforeNorm(nn.Module):
    """The first norm's input is not a plain chain: conv(x) + lift(x)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True))
        self.lift = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return self.body[1](self.body[0](x) + self.lift(x))


def test_an_architecture_without_a_plain_stem_keeps_a_whole_reference():
    net = _SkipBeforeNorm()
    assert feature_stem(net) is None
    pool = ODExPool(net)
    pool.set_reference(0)
    assert not isinstance(pool.reference[0], FeatureStem)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(pool.features(x, 0), norm_input_features(first_norm_input(net, x)))


@pytest.mark.parametrize("value", [0.0, 3.0, -250.0])
def test_a_blank_patch_is_routed_deterministically_to_an_expert_that_predicts_it(value):
    pool, a, _ = two_domain_pool(2)
    blank = torch.full((1, 1, 8, 8), value)
    with torch.no_grad():
        first, scores = pool.select(blank)
        assert torch.isfinite(scores).all()  # finite features even for a constant feature map
        assert [pool.select(blank)[0] for _ in range(3)] == [first] * 3
        out = pool(torch.cat([blank, a[:1]]))
        torch.testing.assert_close(out[:1], pool.experts[first[0]](blank))  # the chosen expert's own output
        torch.testing.assert_close(out[1:], pool(a[:1]))  # the other patch of the batch is unaffected


def test_routing_without_a_recorder_does_no_io_and_a_recorder_is_detached_after_use(monkeypatch):
    pool, a, b = two_domain_pool(2)
    import builtins
    import os

    def refuse(*_args, **_kwargs):
        raise AssertionError("the forward pass must not read the environment or open files")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os.environ, "get", refuse)
    monkeypatch.setattr(os, "getenv", refuse)
    with torch.no_grad():
        pool(a[:2])
        assert pool.recorder is None
        with pool.recording() as recorder:
            pool(a[:2])
            pool(b[:1])
        assert pool.recorder is None
        pool(b[:1])
    monkeypatch.undo()
    assert recorder.expert == [0, 0, 1] and len(recorder.score) == 3 and len(recorder.score[0]) == 2
    assert recorder.as_dict()["counts"] == {"0": 2, "1": 1} and recorder.as_dict()["patches"] == 3


def test_scores_of_experts_without_history_are_recorded_as_null():
    pool, a, _ = two_domain_pool(2)
    pool.add_expert(0)
    pool.histories[2] = type(pool.histories[0])(pool.feature_dim)  # a new expert, no Gaussian yet
    with torch.no_grad(), pool.recording() as recorder:
        pool.eval()(a[:1])
    assert recorder.score[0][2] is None and json.loads(json.dumps(recorder.as_dict()))["score"][0][2] is None
