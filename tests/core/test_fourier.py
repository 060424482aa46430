"""Fourier amplitude swap: identities, the window, phase preservation, 2D/3D, bad input."""

import pytest
import torch

from nnunet_ext.core.fourier import (
    amplitude_spectrum,
    fda,
    fourier_amplitude_swap,
    low_frequency_mask,
    mix_amplitudes,
)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g) * 2.5 + 1.0


@pytest.mark.parametrize("shape,sd", [((2, 1, 8, 8), 2), ((2, 1, 8, 8, 8), 3), ((2, 1, 8, 8, 8), 2), ((2, 3, 9, 7), 2)])
def test_shapes_and_identity_when_donor_is_target(shape, sd):
    t, _ = _pair(shape)
    out = fda(t, t, 0.3, sd)
    assert out.shape == t.shape and out.dtype == t.dtype
    torch.testing.assert_close(out, t, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape,sd", [((2, 1, 8, 8), 2), ((2, 1, 8, 8, 8), 3)])
def test_beta_zero_is_identity(shape, sd):
    t, s = _pair(shape)
    assert torch.equal(fda(t, s, 0.0, sd), t)
    assert not low_frequency_mask(shape[-sd:], 0.0).any()


def test_window_is_circular_with_radius_beta_min_side():
    mask = low_frequency_mask((16, 20), 0.125)  # radius 2 frequency indices
    assert mask.shape == (16, 11)
    # unshifted layout: index k on axis 0 is frequency k for k < 8, k - 16 above
    inside = {(0, 0), (1, 0), (2, 0), (15, 0), (14, 0), (0, 1), (0, 2), (1, 1), (15, 1)}
    outside = {(2, 1), (1, 2), (3, 0), (0, 3), (13, 0), (2, 2)}
    assert all(mask[i, j] for i, j in inside) and not any(mask[i, j] for i, j in outside)
    assert int(mask.sum()) == 9  # lattice points with k_y^2 + k_x^2 <= 4 and k_x >= 0


def test_low_frequencies_come_from_donor_high_from_target_and_phase_kept():
    t, s = _pair((1, 1, 32, 32))
    beta = 0.1
    out = fda(t, s, beta, 2)
    mask = low_frequency_mask((32, 32), beta)
    a_out, a_t, a_s = (amplitude_spectrum(x, 2)[0, 0] for x in (out, t, s))
    torch.testing.assert_close(a_out[mask], a_s[mask], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a_out[~mask], a_t[~mask], atol=1e-3, rtol=1e-4)
    phase_out, phase_t = torch.fft.rfft2(out).angle()[0, 0], torch.fft.rfft2(t).angle()[0, 0]
    strong = a_t > 1e-3
    diff = torch.remainder(phase_out - phase_t + torch.pi, 2 * torch.pi) - torch.pi
    assert diff[strong].abs().max() < 1e-3


def test_donor_style_moves_global_statistics():
    t, s = _pair((1, 1, 32, 32))
    out = fda(t, s, 0.05, 2)
    assert abs(out.mean() - s.mean()) < abs(t.mean() - s.mean()) * 0.1  # the DC term carries the mean


def test_slicewise_swap_on_volumes_equals_2d_swap_per_slice():
    t, s = _pair((1, 1, 4, 16, 16))
    volume = fda(t, s, 0.1, 2)
    for z in range(4):
        torch.testing.assert_close(volume[:, :, z], fda(t[:, :, z], s[:, :, z], 0.1, 2), atol=1e-5, rtol=0)


def test_broadcast_one_target_many_donors_and_mixing():
    t, _ = _pair((2, 1, 16, 16))
    donors = torch.randn(2, 3, 1, 16, 16)
    amps = amplitude_spectrum(donors, 2)
    styled = fourier_amplitude_swap(t[:, None], amps, 0.1, 2)
    assert styled.shape == (2, 3, 1, 16, 16)
    mixed = mix_amplitudes(amps, dim=1)
    torch.testing.assert_close(mixed, amps.mean(1))
    w = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(mix_amplitudes(amps, 1, w), amps[:, 0])


def test_half_precision_and_zscored_inputs():
    t, s = _pair((1, 1, 16, 16))
    out = fda(t.half(), s.half(), 0.1, 2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), fda(t, s, 0.1, 2), atol=1e-2, rtol=1e-2)


def test_constant_images_are_handled():
    c = torch.full((1, 1, 8, 8), 3.0)
    t, _ = _pair((1, 1, 8, 8))
    torch.testing.assert_close(fda(c, c, 0.2, 2), c, atol=1e-5, rtol=0)
    assert torch.isfinite(fda(t, c, 0.2, 2)).all() and torch.isfinite(fda(c, t, 0.2, 2)).all()


@pytest.mark.parametrize("beta", [-0.1, 0.6, float("nan"), "0.1"])
def test_bad_beta(beta):
    t, s = _pair((1, 1, 8, 8))
    with pytest.raises(ValueError, match="beta"):
        fda(t, s, beta, 2)


def test_bad_inputs():
    t, s = _pair((1, 1, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims"):
        fda(t, s, 0.1, 4)
    with pytest.raises(ValueError, match="too small"):
        fda(torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), 0.1, 2)
    bad = t.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fda(bad, s, 0.1, 2)
    with pytest.raises(ValueError, match="spatial shape"):
        fourier_amplitude_swap(t, amplitude_spectrum(torch.zeros(1, 1, 8, 10), 2), 0.1, 2)
    with pytest.raises(ValueError, match="at least one"):
        mix_amplitudes(torch.zeros(0, 1, 8, 5))
    with pytest.raises(ValueError, match="weights"):
        mix_amplitudes(torch.zeros(2, 1, 8, 5), weights=torch.tensor([0.7, 0.7]))
