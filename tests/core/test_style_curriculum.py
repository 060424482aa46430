"""Style curriculum core: fusion, LGS (Eq. 2), SCL step, Gamma bounds, style sources; 2D and 3D, bad input."""

import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.core.fourier import fda
from nnunet_ext.core.style_curriculum import (
    FourierAmplitudeMix,
    HistogramMatch,
    RandomIntensityBias,
    curriculum_step,
    gradient_sign,
    initial_gamma,
    local_gradient_sign,
    style_fusion,
)

SHAPES = [((2, 1, 8, 8), 2), ((2, 1, 8, 8, 8), 3), ((2, 3, 8, 8), 2)]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape,sd", SHAPES)
def test_fusion_limits_and_convexity(shape, sd):
    x, z = _randn(*shape), _randn(*shape, seed=1)
    g0 = initial_gamma(x)
    assert g0.shape == (shape[0], 1, *shape[2:]) and not g0.any()
    assert torch.equal(style_fusion(x, z, g0), x)  # Gamma_0 = O: z_0 is the content image
    torch.testing.assert_close(style_fusion(x, z, torch.ones_like(g0)), z)
    half = style_fusion(x, z, torch.full_like(g0, 0.5))
    torch.testing.assert_close(half, 0.5 * (x + z))


def _reference_lgs_2d(grad, eps, k):
    """Eq. (2) literally, with torch's pooling/upsampling modules (sizes divisible by k)."""
    pooled = F.avg_pool2d(grad.mean(1, keepdim=True), k)
    return F.interpolate(F.relu(eps * torch.sign(pooled)), scale_factor=k, mode="nearest")


def test_lgs_equals_eq2_reference_2d():
    grad = _randn(3, 2, 16, 12)
    torch.testing.assert_close(local_gradient_sign(grad, 0.25, 4, 2), _reference_lgs_2d(grad, 0.25, 4))


@pytest.mark.parametrize("shape,sd", SHAPES)
def test_lgs_values_cells_and_sign(shape, sd):
    grad = _randn(*shape)
    step = local_gradient_sign(grad, eps=0.25, pool_size=4, spatial_dims=sd)
    assert step.shape == (shape[0], 1, *shape[2:])
    assert set(step.unique().tolist()) <= {0.0, 0.25}
    pool = F.avg_pool2d if sd == 2 else F.avg_pool3d
    pooled = pool(grad.mean(1, keepdim=True), 4)
    cells = pool(step, 4)  # constant on each 4^d cell: its mean is its value
    torch.testing.assert_close(cells, torch.where(pooled > 0, 0.25, 0.0))
    assert ((step == 0) | (step == cells.amax())).all()


def test_lgs_uneven_sizes_and_anisotropic_pool_3d():
    grad = torch.ones(1, 1, 5, 10, 7)
    grad[..., 8:, :] = -1.0  # the last (partial) in-plane cell row has a negative mean
    step = local_gradient_sign(grad, 0.5, (1, 4, 4), 3)
    assert step.shape == grad.shape
    assert (step[..., :8, :] == 0.5).all() and (step[..., 8:, :] == 0).all()


def test_gradient_scale_does_not_matter_and_nonfinite_gives_no_growth():
    grad = _randn(2, 1, 8, 8)
    torch.testing.assert_close(local_gradient_sign(grad * 65536.0), local_gradient_sign(grad))
    bad = torch.full((1, 1, 8, 8), float("nan"))
    assert not local_gradient_sign(bad).any() and not gradient_sign(bad).any()


@pytest.mark.parametrize("update", ["lgs", "sign"])
@pytest.mark.parametrize("shape,sd", SHAPES)
def test_gamma_stays_in_unit_interval_and_lgs_grows_only_where_pooled_grad_positive(update, shape, sd):
    gamma = initial_gamma(torch.zeros(shape))
    for i in range(8):  # more steps than n * eps = 1 would need
        grad = _randn(*shape, seed=i)
        new = curriculum_step(gamma, grad, 0.25, 4, sd, update)
        assert new.min() >= 0 and new.max() <= 1
        if update == "lgs":
            pool = F.avg_pool2d if sd == 2 else F.avg_pool3d
            positive = pool(grad.mean(1, keepdim=True), 4) > 0
            grew = pool((new > gamma).float(), 4) > 0
            assert torch.equal(grew & ~positive, torch.zeros_like(grew))  # growth only where pooled grad > 0
            assert (new >= gamma).all()  # LGS never lowers Gamma
        gamma = new
    assert gamma.max() == 1.0  # eight 0.25 steps saturate somewhere, clipped at 1


def test_paper_setting_never_clips():
    gamma = initial_gamma(torch.zeros(1, 1, 8, 8))
    for _ in range(3):  # n = 3, eps = 0.25: at most 0.75
        gamma = curriculum_step(gamma, torch.ones(1, 1, 8, 8))
    assert torch.allclose(gamma, torch.full_like(gamma, 0.75))


def test_scl_uses_raw_per_voxel_sign():
    grad = torch.tensor([[[[1.0, -1.0], [-2.0, 3.0]]]])
    torch.testing.assert_close(gradient_sign(grad, 0.25), 0.25 * torch.sign(grad))
    gamma = torch.full((1, 1, 2, 2), 0.5)
    torch.testing.assert_close(curriculum_step(gamma, grad, 0.25, update="sign"),
                               torch.tensor([[[[0.75, 0.25], [0.25, 0.75]]]]))


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": 1.5}, "eps"), ({"pool_size": 0}, "pool_size"),
    ({"pool_size": (4, 4, 4)}, "pool_size"), ({"spatial_dims": 1}, "spatial_dims"), ({"update": "fgsm"}, "update"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        curriculum_step(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="gamma"):
        curriculum_step(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        style_fusion(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 7), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="spatial"):
        local_gradient_sign(torch.zeros(1, 1, 8, 8, 8), spatial_dims=2)


# style sources ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", [FourierAmplitudeMix(), HistogramMatch(), RandomIntensityBias()])
@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 2, 8, 8, 8)])
def test_style_sources_share_one_interface(source, shape):
    x, s = _randn(*shape), _randn(*shape, seed=1) * 3 + 2
    out = source(x, s, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    again = source(x, s, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)  # seeded: reproducible
    assert not torch.allclose(out, x)


def test_fourier_mix_reuses_the_fourier_core():
    x, s = _randn(2, 1, 16, 16), _randn(2, 1, 16, 16, seed=1) * 3 + 2
    full = FourierAmplitudeMix(beta=0.1, strength=(1.0, 1.0))(x, s)
    torch.testing.assert_close(full, fda(x, s, 0.1, 2), atol=1e-5, rtol=0)  # lam = 1 is an FDA swap
    torch.testing.assert_close(FourierAmplitudeMix(strength=(0.0, 0.0))(x, s), x, atol=1e-5, rtol=0)


def test_histogram_match_takes_the_style_distribution():
    x, s = _randn(1, 1, 16, 16), _randn(1, 1, 16, 16, seed=1) * 3 + 2
    out = HistogramMatch()(x, s)
    torch.testing.assert_close(out.flatten().sort().values, s.flatten().sort().values)
    assert torch.equal(out.flatten().argsort(), x.flatten().argsort())  # order of the content kept


def test_random_intensity_identity_limits_and_bad_ranges():
    x = _randn(2, 1, 8, 8)
    same = RandomIntensityBias(gamma=(1.0, 1.0), bias=0.0, contrast=(1.0, 1.0))(x, None)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="gamma"):
        RandomIntensityBias(gamma=(2.0, 1.0))
    with pytest.raises(ValueError, match="strength"):
        FourierAmplitudeMix(strength=(0.0, 2.0))
    with pytest.raises(ValueError, match="one shape"):
        HistogramMatch()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4, 4))
