"""The ODEx pool: features up to the first norm, routing per patch, growth from a state dict, logging."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.core.odex import (
    Calibration,
    GaussianStats,
    mahalanobis,
    norm_input_features,
)
from nnunet_ext.networks.odex import SELECTION_LOG_ENV, ODExPool, first_norm_layer


def unet(dims: int, seed: int = 0) -> PlainConvUNet:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    return PlainConvUNet(1, 2, (4, 8), conv, 3, (1, 2), (1, 1), 2, (1,), conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True}, deep_supervision=False)


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


def test_selection_log_and_far_ood_warning(monkeypatch, tmp_path, caplog):
    pool, a, _ = two_domain_pool(2)
    log = tmp_path / "selection.jsonl"
    monkeypatch.setenv(SELECTION_LOG_ENV, str(log))
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        pool(a[:1])
        pool(torch.randn(1, 1, 8, 8) * 50 - 200)  # nothing like either domain
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["expert"] == [0] and records[0]["far_ood"] == [False]
    assert records[1]["far_ood"] == [True] and "far out-of-distribution" in caplog.text


def test_a_network_without_norm_is_refused():
    with pytest.raises(ValueError, match="no normalisation layer"):
        ODExPool(nn.Conv2d(1, 2, 3))
