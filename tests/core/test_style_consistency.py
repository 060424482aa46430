"""Style alteration, KL consistency and regeneration loss of nnunet_ext.core.style_consistency (tiny tensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.core.style_consistency import (
    StyleConfig,
    apply_style,
    consistency_kl,
    regeneration_mse,
    sample_style_parameters,
)

SHAPES = [(2, 1, 8, 8), (2, 2, 8, 8, 8)]
IDENTITY = StyleConfig(gamma_range=(1.0, 1.0), bias_std=0.0, noise_std=0.0)


def _x(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3 + 5


def _params(shape, config=StyleConfig(), seed=1):
    return sample_style_parameters(shape[0], shape[1], shape[2:], config, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_strength_is_the_identity(shape):
    x = _x(shape)
    torch.testing.assert_close(apply_style(x, _params(shape, IDENTITY)), x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_alteration_keeps_each_channels_mean_and_std_and_changes_the_image(shape):
    x = _x(shape)
    y = apply_style(x, _params(shape))
    dims = tuple(range(2, len(shape)))
    torch.testing.assert_close(y.mean(dims), x.mean(dims), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dims), x.std(dims), atol=1e-4, rtol=1e-4)
    assert (y - x).abs().mean() > 0.05 * x.std()


def test_gamma_alone_is_a_monotone_curve_and_bends_the_way_gamma_says():
    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    order = x.flatten().argsort()
    for gamma, darker_middle in ((2.0, True), (0.5, False)):
        y = apply_style(x, _params(x.shape, StyleConfig(gamma_range=(gamma, gamma), bias_std=0.0, noise_std=0.0)))
        assert torch.equal(y.flatten().argsort(), order)  # rank order kept: no contrast inversion
        # u ** 2 is convex: the middle of the range falls below the straight line through the ends
        straight = (x - x.mean()) / x.std() * x.std() + x.mean()
        mid = slice(24, 40)
        assert bool((y.flatten()[mid] < straight.flatten()[mid]).all()) == darker_middle


def test_bias_is_smooth_and_multiplicative_in_the_unit_range():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    config = StyleConfig(gamma_range=(1.0, 1.0), bias_std=0.5, noise_std=0.0)
    p = _params(x.shape, config)
    y = apply_style(x, p)
    u = (x - x.min()) / (x.max() - x.min())
    field = torch.exp(F.interpolate(p.log_bias, size=(16, 16), mode="bilinear", align_corners=True))
    expected = u * field
    expected = (expected - expected.mean()) / expected.std() * x.std() + x.mean()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert p.log_bias.shape == (1, 1, 3, 3)  # the field comes from a 3 x 3 grid: smoother than the image


def test_a_mask_alters_the_foreground_only_and_keeps_its_statistics():
    x = torch.zeros(2, 2, 8, 8)
    x[:, :, 2:6, 2:6] = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = x != 0
    y = apply_style(x, _params(x.shape), mask)
    assert torch.equal(y[~mask], x[~mask])  # the background stays exactly 0
    fg, yfg = x[:, :, 2:6, 2:6], y[:, :, 2:6, 2:6]
    torch.testing.assert_close(yfg.mean((2, 3)), fg.mean((2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(yfg.std((2, 3)), fg.std((2, 3)), atol=1e-4, rtol=1e-4)
    assert (yfg - fg).abs().mean() > 0.05
    none = torch.zeros_like(mask)  # no foreground at all: unchanged
    assert torch.equal(apply_style(x, _params(x.shape), none), x)
    with pytest.raises(ValueError, match="does not broadcast"):
        apply_style(x, _params(x.shape), mask[:, :, :4])


def test_same_seed_same_draw_and_other_seed_other_draw():
    shape = (2, 1, 8, 8)
    x = _x(shape)
    assert torch.equal(apply_style(x, _params(shape, seed=3)), apply_style(x, _params(shape, seed=3)))
    assert not torch.allclose(apply_style(x, _params(shape, seed=3)), apply_style(x, _params(shape, seed=4)))


def test_gamma_is_drawn_inside_its_range():
    p = sample_style_parameters(256, 1, (4, 4), StyleConfig(gamma_range=(0.5, 2.0)), torch.Generator().manual_seed(0))
    assert float(p.gamma.min()) >= 0.5 and float(p.gamma.max()) <= 2.0
    assert float(p.gamma.log().mean().abs()) < 0.1  # log-uniform: symmetric around gamma = 1


def test_parameters_for_another_shape_are_refused():
    with pytest.raises(ValueError, match="drawn for"):
        apply_style(_x((2, 1, 8, 8)), _params((2, 1, 4, 4)))


@pytest.mark.parametrize("kwargs, match", [({"gamma_range": (0.0, 1.0)}, "gamma_range"),
                                           ({"gamma_range": (2.0, 1.0)}, "gamma_range"),
                                           ({"bias_std": -0.1}, "bias_std"), ({"bias_grid": 1}, "bias_grid"),
                                           ({"noise_std": -1.0}, "noise_std")])
def test_ill_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StyleConfig(**kwargs)
    with pytest.raises(ValueError, match="2 or 3 axes"):
        sample_style_parameters(1, 1, (8,), StyleConfig(), torch.Generator())


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 3, 4, 4, 4)])
def test_consistency_is_the_kl_divergence_of_the_softmax_predictions(shape):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    reference = F.kl_div(F.log_softmax(b, 1), F.log_softmax(a, 1), log_target=True, reduction="none").sum(1).mean()
    torch.testing.assert_close(consistency_kl(a, b), reference)
    assert float(consistency_kl(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert consistency_kl(a, b) > 0 and not torch.isclose(consistency_kl(a, b), consistency_kl(b, a))  # directional


def test_consistency_pulls_the_altered_view_towards_the_clean_target():
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, requires_grad=True)
    consistency_kl(a, b).backward()
    assert a.grad is None and b.grad.abs().sum() > 0  # the clean prediction is the target
    consistency_kl(a, b, clean_is_target=False).backward()
    assert a.grad.abs().sum() > 0
    with torch.no_grad():  # a small step against the gradient brings the altered prediction closer
        closer = b - 0.1 * b.grad
    assert consistency_kl(a, closer) < consistency_kl(a, b)
    with pytest.raises(ValueError, match="differ in shape"):
        consistency_kl(a, b[:, :2])


def test_regeneration_is_the_squared_norm_over_channels_averaged_over_voxels():
    x, y = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 2.0)
    assert float(regeneration_mse(y, x)) == pytest.approx(4.0)
    two = torch.cat([y, torch.zeros_like(y)], dim=1)  # an error of 2 in one channel of two: |e|^2 = 4 per voxel
    assert float(regeneration_mse(two, torch.zeros_like(two))) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="differ"):
        regeneration_mse(y, x[:, :, :2])
