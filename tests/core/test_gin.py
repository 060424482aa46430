"""GIN / GIN-IPA core: shapes 2D and 3D, statistics, identity at zero strength, seeding, a per-sample reference,
the B-spline blending map, IPA blending, no gradients, bad arguments."""

import doctest

import pytest
import torch
import torch.nn.functional as F

import nnunet_ext.core.gin as gin
from nnunet_ext.core.gin import (
    GINConfig,
    apply_gin,
    apply_ipa,
    bspline_upsample,
    ipa_blend,
    pseudo_correlation_map,
    random_gin,
    random_ipa,
    sample_control_points,
    sample_gin_parameters,
    sample_ipa_parameters,
)

SHAPES = [(2, 1, 16, 16), (2, 1, 8, 8, 8), (3, 2, 12, 10)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zscored(*shape, seed=0):
    x = torch.randn(*shape, generator=_gen(seed)) * 3 + 1
    axes = tuple(range(2, x.ndim))
    return (x - x.mean(axes, keepdim=True)) / x.std(axes, keepdim=True, correction=0)


def _moments(y):
    axes = tuple(range(2, y.ndim))
    return y.mean(axes), y.std(axes, correction=0)


def test_module_example_runs():
    assert doctest.testmod(gin, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_zscored_output(shape):
    x = _zscored(*shape)
    y = random_gin(x, generator=_gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x, atol=1e-2)  # it did something
    mean, std = _moments(y)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)
    view_a, view_b = random_ipa(x, generator=_gen(2))
    for v in (view_a, view_b):
        assert v.shape == x.shape
        mean, std = _moments(v)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_frobenius_mode_keeps_each_samples_norm(shape):
    x = torch.randn(*shape, generator=_gen(0)) * 2 + 0.5
    y = random_gin(x, GINConfig(normalization="frobenius"), _gen(1))
    axes = tuple(range(1, x.ndim))
    torch.testing.assert_close(torch.linalg.vector_norm(y, dim=axes), torch.linalg.vector_norm(x, dim=axes))
    assert not torch.allclose(y, x, atol=1e-2)


@pytest.mark.parametrize("normalization", ["standardize", "frobenius"])
@pytest.mark.parametrize("shape", SHAPES)
def test_zero_strength_is_the_identity(shape, normalization):
    x = torch.randn(*shape, generator=_gen(0)) * 2 + 0.5
    config = GINConfig(alpha_range=(0.0, 0.0), normalization=normalization)
    torch.testing.assert_close(random_gin(x, config, _gen(3)), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_grouped_convolution_equals_a_per_sample_reference(shape):
    """Each sample gets its own network: the batched (grouped) apply equals a loop over samples."""
    x = torch.randn(*shape, generator=_gen(0))
    sd = x.ndim - 2
    conv = F.conv2d if sd == 2 else F.conv3d
    config = GINConfig(kernel_sizes=(3,))
    p = sample_gin_parameters(x.shape[0], x.shape[1], sd, config, _gen(5))
    ref = []
    for s in range(x.shape[0]):
        h = x[s:s + 1]
        for i, (w, b) in enumerate(zip(p.weights, p.biases)):
            out_ch = w.shape[0] // x.shape[0]
            h = conv(h, w[s * out_ch:(s + 1) * out_ch], b[s * out_ch:(s + 1) * out_ch], padding=1)
            if i < len(p.weights) - 1:
                h = F.leaky_relu(h, 0.01)
        a = p.alpha[s]
        ref.append(a * h + (1 - a) * x[s:s + 1])
    torch.testing.assert_close(apply_gin(x, p, config), gin._standardize_like(torch.cat(ref), x))
    same = x[:1].expand_as(x).contiguous()  # identical samples still get different networks
    y = apply_gin(same, p, config)
    assert not torch.allclose(y[0], y[1], atol=1e-3)


def test_paper_settings_and_kernel_choice():
    c = GINConfig()
    assert (c.n_layers, c.interm_channels, c.kernel_sizes, c.negative_slope, c.alpha_range) == \
        (4, 2, (1, 3), 0.01, (0.0, 1.0))
    p = sample_gin_parameters(3, 2, 3, c, _gen(0))
    assert [tuple(w.shape[:2]) for w in p.weights] == [(6, 2), (6, 2), (6, 2), (6, 2)]
    assert all(w.shape[2:] in ((1, 1, 1), (3, 3, 3)) for w in p.weights)
    sizes = {w.shape[-1] for seed in range(20) for w in sample_gin_parameters(1, 1, 2, c, _gen(seed)).weights}
    assert sizes == {1, 3}
    alphas = torch.cat([sample_gin_parameters(64, 1, 2, c, _gen(seed)).alpha for seed in range(4)])
    assert 0.0 <= alphas.min() < 0.1 and 0.9 < alphas.max() <= 1.0


def test_pointwise_gin_commutes_with_a_pixel_permutation():
    """With 1x1 kernels only, the output at a pixel depends on that pixel alone."""
    x = torch.randn(2, 2, 8, 8, generator=_gen(0))
    config = GINConfig(kernel_sizes=(1,))
    p = sample_gin_parameters(2, 2, 2, config, _gen(1))
    perm = torch.randperm(64, generator=_gen(2))
    shuffled = x.flatten(2)[..., perm].view_as(x)
    torch.testing.assert_close(apply_gin(shuffled, p, config), apply_gin(x, p, config).flatten(2)[..., perm].view_as(x))
    p3 = sample_gin_parameters(2, 2, 2, GINConfig(kernel_sizes=(3,)), _gen(1))
    y3 = apply_gin(shuffled, p3, config)
    assert not torch.allclose(y3, apply_gin(x, p3, config).flatten(2)[..., perm].view_as(x), atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_seeding(shape):
    x = torch.randn(*shape, generator=_gen(0))
    assert torch.equal(random_gin(x, generator=_gen(7)), random_gin(x, generator=_gen(7)))
    assert not torch.allclose(random_gin(x, generator=_gen(7)), random_gin(x, generator=_gen(8)), atol=1e-3)
    a1, b1 = random_ipa(x, generator=_gen(7))
    a2, b2 = random_ipa(x, generator=_gen(7))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = random_ipa(x, generator=_gen(8))
    assert not torch.allclose(a1, a3, atol=1e-3)


def test_no_gradient_through_the_augmentation():
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    assert not random_gin(x, generator=_gen(0)).requires_grad
    assert not any(v.requires_grad for v in random_ipa(x, generator=_gen(0)))


@pytest.mark.parametrize("cells,shape", [(4, (33, 17)), ((2, 3, 4), (9, 12, 20))])
def test_bspline_reproduces_linear_functions(cells, shape):
    """Coefficients linear in the knot index give a linear map (cubic B-splines reproduce degree 1)."""
    sd = len(shape)
    cp = sample_control_points(1, sd, cells, _gen(0))
    grid = cp.shape[2:]
    for axis in range(sd):
        idx = torch.arange(grid[axis], dtype=torch.float32) - 1.0  # knot centre of control point j: j - 1
        view = [1] * sd
        view[axis] = -1
        coefficients = (2.0 * idx + 0.5).view(1, 1, *view).expand(1, 1, *grid)
        k = grid[axis] - 3
        t = torch.linspace(0.0, k, shape[axis]).view(*view)
        torch.testing.assert_close(bspline_upsample(coefficients, shape)[0, 0], (2.0 * t + 0.5).expand(shape))
        ramp = pseudo_correlation_map(coefficients, shape)[0, 0]
        torch.testing.assert_close(ramp, (t / k).expand(shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(32, 32), (16, 20, 24)])
def test_blending_map_is_smooth_and_in_unit_range(shape):
    """In [0, 1] with min 0 and max 1 per sample; C2-smooth: a cubic spline's second derivative is the linear
    interpolation of the coefficients' second differences, so a voxel step h (in knots) bounds the map's second
    difference by h^2 * max|second difference of c| / (range of the spline); white noise breaks that bound."""
    sd = len(shape)
    cp = sample_control_points(4, sd, 4, _gen(1))
    b = pseudo_correlation_map(cp, shape)
    assert b.shape == (4, 1, *shape)
    flat = b.flatten(1)
    assert (flat.amin(1) == 0).all() and torch.allclose(flat.amax(1), torch.ones(4))
    spline = bspline_upsample(cp, shape).flatten(1)
    span = (spline.amax(1) - spline.amin(1)).view(4, *[1] * (sd + 1))
    noise = torch.rand(b.shape, generator=_gen(2))
    for axis in range(2, 2 + sd):
        h = 4 / (shape[axis - 2] - 1)
        bound = h ** 2 * torch.diff(cp, n=2, dim=axis).abs().amax(dim=tuple(range(1, sd + 2)), keepdim=True) / span
        assert (torch.diff(b, n=2, dim=axis).abs() <= bound + 1e-5).all()
        assert (torch.diff(noise, n=2, dim=axis).abs() > bound).any()


def test_constant_control_points_give_a_zero_map():
    assert not pseudo_correlation_map(torch.full((1, 1, 7, 7), 3.0), (10, 10)).any()


@pytest.mark.parametrize("shape", SHAPES)
def test_ipa_blend_limits_and_views(shape):
    x = torch.randn(*shape, generator=_gen(0))
    g1, g2 = torch.randn(*shape, generator=_gen(1)), torch.randn(*shape, generator=_gen(2))
    ones = torch.ones(shape[0], 1, *shape[2:])
    assert torch.equal(ipa_blend(g1, g2, ones), g1)  # b == 1: view 1
    assert torch.equal(ipa_blend(g1, g2, torch.zeros_like(ones)), g2)
    sd = x.ndim - 2
    config = GINConfig()
    p = sample_ipa_parameters(shape[0], shape[1], sd, config, 4, _gen(3))
    view_a, view_b = apply_ipa(x, p, config)
    v1, v2 = apply_gin(x, p.gin_1, config), apply_gin(x, p.gin_2, config)
    b = pseudo_correlation_map(p.control_points, shape[2:])
    torch.testing.assert_close(view_a, gin._standardize_like(b * v1 + (1 - b) * v2, x))
    torch.testing.assert_close(view_b, gin._standardize_like((1 - b) * v1 + b * v2, x))
    paper = GINConfig(normalization="frobenius")
    pa, pb = apply_ipa(x, p, paper)
    w1, w2 = apply_gin(x, p.gin_1, paper), apply_gin(x, p.gin_2, paper)
    torch.testing.assert_close(pa + pb, w1 + w2)  # complementary blends, no re-normalisation (the paper)


@pytest.mark.parametrize("kwargs,name", [
    ({"n_layers": 0}, "n_layers"), ({"interm_channels": 1.5}, "interm_channels"),
    ({"kernel_sizes": (2,)}, "kernel_sizes"), ({"kernel_sizes": ()}, "kernel_sizes"), ({"negative_slope": -0.1}, "negative_slope"),
    ({"alpha_range": (0.6, 0.2)}, "alpha_range"), ({"alpha_range": (0.0, 1.5)}, "alpha_range"),
    ({"normalization": "l2"}, "normalization")])
def test_bad_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GINConfig(**kwargs)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x must be"):
        random_gin(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        random_gin(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    p = sample_gin_parameters(2, 1, 2, generator=_gen(0))
    with pytest.raises(ValueError, match="batch_size=3"):
        apply_gin(torch.zeros(3, 1, 8, 8), p)
    with pytest.raises(ValueError, match="channels=2"):
        apply_gin(torch.zeros(2, 2, 8, 8), p)
    with pytest.raises(ValueError, match="spatial_dims"):
        sample_gin_parameters(2, 1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        sample_gin_parameters(0, 1, 2)
    with pytest.raises(ValueError, match="grid_cells"):
        sample_control_points(1, 2, 0)
    with pytest.raises(ValueError, match="grid_cells"):
        sample_control_points(1, 3, (4, 4))
    with pytest.raises(ValueError, match="control_points"):
        bspline_upsample(torch.zeros(1, 1, 7, 7), (8, 8, 8))
    with pytest.raises(ValueError, match="control points"):
        bspline_upsample(torch.zeros(1, 1, 3, 7), (8, 8))
    with pytest.raises(ValueError, match="b must be"):
        ipa_blend(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))
    ipa = sample_ipa_parameters(2, 1, 2, generator=_gen(0))
    with pytest.raises(ValueError, match="control points"):
        apply_ipa(torch.zeros(2, 1, 8, 8, 8), ipa)


def test_view_consistency_equals_the_kl_definition():
    a, b = torch.randn(2, 3, 5, 6, generator=_gen(0)), torch.randn(2, 3, 5, 6, generator=_gen(1))
    pa, pb = a.softmax(1), b.softmax(1)
    mean = (pa + pb) / 2
    ref = 0.5 * sum(F.kl_div(p.log(), mean, reduction="sum") / mean.numel() for p in (pa, pb))
    torch.testing.assert_close(gin.view_consistency(a, b), ref)
    assert gin.view_consistency(a, a + 5.0) < 1e-7  # equal softmax: no penalty
    assert gin.view_consistency(a, b) > 0
    a.requires_grad_(True)
    gin.view_consistency(a, b).backward()
    assert a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="logits_a and logits_b"):
        gin.view_consistency(a, b[:1])


def test_constant_patch_is_returned_unchanged():
    x = torch.full((2, 1, 8, 8), -0.7)
    torch.testing.assert_close(random_gin(x, generator=_gen(0)), x)
    for v in random_ipa(x, generator=_gen(0)):
        torch.testing.assert_close(v, x)
