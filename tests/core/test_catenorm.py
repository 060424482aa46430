"""CateNorm layer and class-wise alignment (nnunet_ext.core.catenorm) on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ext.core.catenorm import (
    CateNorm,
    align_case,
    aligned_statistics,
    classwise_statistics,
    resize_mask,
)

SHAPES = {2: (2, 4, 8, 8), 3: (2, 4, 8, 8, 8)}


def _mask(dims: int, size: int = 16, classes: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(2, classes, *[size] * dims, generator=g), dim=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_without_mask_equals_instance_norm(dims):
    torch.manual_seed(0)
    layer = CateNorm(4, num_classes=3, spatial_dims=dims)
    plain = (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(4, eps=1e-5, affine=True)
    with torch.no_grad():
        for p in (plain.weight, plain.bias):
            p.normal_()
        layer.weight.copy_(plain.weight)
        layer.bias.copy_(plain.bias)
    x = torch.randn(SHAPES[dims])
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_without_mask_equals_batch_norm(training):
    torch.manual_seed(0)
    layer = CateNorm(4, num_classes=3, spatial_dims=2, statistics="batch")
    plain = nn.BatchNorm2d(4)
    layer.train(training), plain.train(training)
    for _ in range(3):
        x = torch.randn(SHAPES[2]) * 3 + 1
        torch.testing.assert_close(layer(x), plain(x))
    torch.testing.assert_close(layer.running_mean, plain.running_mean)
    torch.testing.assert_close(layer.running_var, plain.running_var)
    # the plain layer's state dict loads into ours (the CateNorm branch keeps its own entries)
    missing, unexpected = layer.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("cond_") for k in missing)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("mask_size", [4, 8, 16])
def test_conditioned_shapes_and_spatial_modulation(dims, mask_size):
    torch.manual_seed(0)
    layer = CateNorm(4, num_classes=3, spatial_dims=dims)
    x = torch.randn(SHAPES[dims])
    y = layer(x, _mask(dims, mask_size))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, layer(x))  # the conditioned branch differs from the plain affine


def test_first_conditioning_conv_has_half_the_channels():
    layer = CateNorm(32, num_classes=5, spatial_dims=2)
    assert layer.cond_shared.out_channels == 16 and layer.cond_shared.in_channels == 5
    assert layer.cond_gamma.kernel_size == (3, 3) and layer.cond_gamma.out_channels == 32


@pytest.mark.parametrize("dims", [2, 3])
def test_init_from_plain_makes_both_branches_equal_for_any_mask(dims):
    torch.manual_seed(0)
    layer = CateNorm(4, num_classes=3, spatial_dims=dims)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    layer.init_from_plain()
    x = torch.randn(SHAPES[dims])
    for seed in range(3):
        torch.testing.assert_close(layer(x, _mask(dims, 8, seed=seed)), layer(x))


def test_conditioned_on_sets_and_restores_the_mask():
    torch.manual_seed(0)
    layer = CateNorm(4, num_classes=3, spatial_dims=2)
    x, m = torch.randn(SHAPES[2]), _mask(2, 8)
    seq = nn.Sequential(layer, nn.ReLU())
    with layer.conditioned_on(m):
        inside = seq(x)
    torch.testing.assert_close(inside, torch.relu(layer(x, m)))
    assert layer.condition is None
    torch.testing.assert_close(seq(x), torch.relu(layer(x)))


def test_gradcheck_through_input_mask_and_parameters():
    torch.manual_seed(0)
    layer = CateNorm(2, num_classes=2, spatial_dims=2).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    m = torch.softmax(torch.randn(1, 2, 8, 8, dtype=torch.float64), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, m))
    assert torch.autograd.gradcheck(lambda a: layer(a), (x,))
    layer(x, m).square().sum().backward()
    assert layer.weight.grad is None  # the conditioned pass does not touch the ordinary affine
    assert all(p.grad is not None for p in layer.conditioning_parameters())


def test_resize_mask_area_keeps_class_fractions():
    m = _mask(2, 16)
    small = resize_mask(m, (4, 4))
    torch.testing.assert_close(small.sum(1), torch.ones(2, 4, 4))
    torch.testing.assert_close(small.mean((2, 3)), m.mean((2, 3)))
    assert resize_mask(m, (16, 16)) is m
    assert resize_mask(m, (5, 5), "nearest").shape == (2, 3, 5, 5)


def test_ill_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        CateNorm(4, num_classes=0, spatial_dims=2)
    with pytest.raises(ValueError, match="spatial_dims"):
        CateNorm(4, num_classes=2, spatial_dims=4)
    with pytest.raises(ValueError, match="statistics"):
        CateNorm(4, num_classes=2, spatial_dims=2, statistics="group")
    with pytest.raises(ValueError, match="kernel_size"):
        CateNorm(4, num_classes=2, spatial_dims=2, kernel_size=2)
    layer = CateNorm(4, num_classes=3, spatial_dims=2)
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(SHAPES[2]), torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="4-D input"):
        layer(torch.randn(SHAPES[3]))
    with pytest.raises(ValueError, match="mode"):
        resize_mask(_mask(2), (4, 4), "bilinear")


# ---------------------------------------------------------------- class-wise alignment (appendix A)

def _case(rng, means, stds, shape=(6, 8, 8)):
    label = rng.integers(0, len(means), size=shape)
    image = np.zeros(shape, np.float32)
    for c, (m, s) in enumerate(zip(means, stds)):
        image[label == c] = rng.normal(m, s, size=(label == c).sum())
    return image, label


def test_classwise_statistics_and_absent_class():
    image = np.array([[1.0, 3.0], [10.0, 10.0]])
    label = np.array([[0, 0], [1, 1]])
    stats = classwise_statistics(image, label, [0, 1, 2])
    np.testing.assert_allclose(stats[:2], [[2.0, 1.0], [10.0, 0.0]])
    assert np.isnan(stats[2]).all()


def test_aligned_statistics_follow_equations_8_to_11():
    rng = np.random.default_rng(0)
    source, target = rng.normal(5, 2, size=(4, 3, 2)), rng.normal(0, 1, size=(6, 3, 2))
    source[..., 1], target[..., 1] = np.abs(source[..., 1]), np.abs(target[..., 1])
    new = aligned_statistics(source, target)
    for k in (0, 1):  # z-score across the source cases, rescaled to the target's spread and mean
        z = (source[..., k] - source[..., k].mean(0)) / source[..., k].std(0)
        expected = z * target[..., k].std(0) + target[..., k].mean(0)
        np.testing.assert_allclose(new[..., k], expected if k == 0 else np.clip(expected, 0, None))
    np.testing.assert_allclose(new[..., 0].mean(0), target[..., 0].mean(0))
    np.testing.assert_allclose(aligned_statistics(target, target), target)  # the target is a fixed point
    one = aligned_statistics(source[:1], target)  # no spread in the source: the target's mean
    np.testing.assert_allclose(one[0, :, 0], target[..., 0].mean(0))
    with pytest.raises(ValueError, match="M, K, 2"):
        aligned_statistics(source[..., 0], target)


def test_align_case_moves_every_class_to_its_new_statistics():
    rng = np.random.default_rng(1)
    image, label = _case(rng, means=[0.0, 100.0, 300.0], stds=[1.0, 10.0, 30.0])
    stats = classwise_statistics(image, label, [0, 1, 2])
    new = np.array([[5.0, 2.0], [50.0, 5.0], [80.0, 0.0]])
    out = align_case(image, label, [0, 1, 2], stats, new)
    np.testing.assert_allclose(classwise_statistics(out, label, [0, 1, 2]), new, atol=1e-3)
    assert out.dtype == np.float32 and image.max() > 200  # input untouched

