"""Fourier domain adaptation: swap the low-frequency amplitude spectrum of a target with a donor's.

Paper: I. Zakazov, V. Shaposhnikov, I. Bespalov, D. V. Dylov, "Feather-Light Fourier Domain Adaptation in
Magnetic Resonance Imaging", DART 2022 (code: github.com/kechua/Feather-Light-Fourier-Domain-Adaptation,
no licence; not used). Builds on Y. Yang, S. Soatto, "FDA: Fourier Domain Adaptation for Semantic
Segmentation", CVPR 2020.

For a target image ``t`` and a style donor ``s`` (same spatial shape)::

    t_new = F^-1( [ M_beta * |F(s)| + (1 - M_beta) * |F(t)| ,  angle(F(t)) ] )

``F`` is the discrete Fourier transform over the spatial axes only (never batch or channel), ``|.|`` the
amplitude, ``angle`` the phase, and ``M_beta`` a *circular* low-frequency window (the paper's choice over
FDA's square one, because amplitude spectra are radially symmetric): the frequencies whose distance from
the zero frequency, in frequency-index units, is at most ``r = beta * min(spatial shape)`` (the
authors' code uses ``radius = beta * min(H, W)``). ``beta = 0`` is the identity; any ``beta > 0`` swaps at
least the zero frequency (the mean). ``beta`` must lie in ``[0, 0.5]``: at 0.5 the window reaches the
Nyquist frequency of the shortest axis.

Implementation notes: real FFTs (``rfftn``) over ``spatial_dims`` trailing axes, so the result is real by
construction and half the spectrum is stored; the window is built from integer frequency indices
(``fftfreq * n``), so no ``fftshift`` is needed. Works on any real intensities, including nnU-Net's
z-scored inputs (the amplitude of the zero frequency then carries the mean, usually near zero).

Several donors can be combined two ways: average their amplitude spectra into one style
(:func:`mix_amplitudes`), or style one copy of the target per donor and average the network's predictions
(multi-source transfer; see :mod:`nnunet_ext.networks.fourier_mst`).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> t, s = torch.randn(1, 1, 32, 32, generator=g), torch.randn(1, 1, 32, 32, generator=g) * 3 + 1
    >>> out = fourier_amplitude_swap(t, amplitude_spectrum(s, 2), beta=0.05, spatial_dims=2)
    >>> out.shape, bool(torch.allclose(fourier_amplitude_swap(t, amplitude_spectrum(t, 2), 0.05, 2), t, atol=1e-5))
    (torch.Size([1, 1, 32, 32]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "amplitude_spectrum",
    "check_window",
    "fda",
    "fourier_amplitude_swap",
    "low_frequency_mask",
    "mix_amplitudes",
]


def _dims(spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3 (the trailing axes to transform), got {spatial_dims!r}")
    return tuple(range(-spatial_dims, 0))


def check_window(spatial_shape: Sequence[int], beta: float) -> float:
    """Validate ``beta`` for images of ``spatial_shape``; return the window radius in frequency indices.

    Raises:
        ValueError: ``beta`` outside ``[0, 0.5]`` or not finite; an axis shorter than 2 voxels (an image that
            small has no low-frequency band to swap).
    """
    if not isinstance(beta, (int, float)) or not 0.0 <= float(beta) <= 0.5:
        raise ValueError(
            f"beta must be a number in [0, 0.5] (window radius = beta * min(spatial shape)), got {beta!r}; "
            f"the paper's values are around 0.01-0.1"
        )
    if min(spatial_shape) < 2:
        raise ValueError(
            f"spatial shape {tuple(spatial_shape)} is too small for a Fourier style swap: every spatial axis "
            f"needs at least 2 voxels (pad or resample the image first)"
        )
    return float(beta) * min(spatial_shape)


def low_frequency_mask(spatial_shape: Sequence[int], beta: float,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """Circular low-frequency window ``M_beta`` in ``rfftn`` layout.

    Args:
        spatial_shape: shape of the spatial axes of the image, e.g. ``(H, W)`` or ``(D, H, W)``.
        beta: window size; radius ``r = beta * min(spatial_shape)`` frequency indices.
        device: device of the returned mask.

    Shape:
        Returns ``(*spatial_shape[:-1], spatial_shape[-1] // 2 + 1)`` booleans, True inside the window.
        All False when ``beta == 0``.

    Raises:
        ValueError: see :func:`check_window`.
    """
    radius = check_window(spatial_shape, beta)
    freqs = [torch.fft.fftfreq(n, d=1.0 / n, device=device) for n in spatial_shape[:-1]]
    freqs.append(torch.fft.rfftfreq(spatial_shape[-1], d=1.0 / spatial_shape[-1], device=device))
    grids = torch.meshgrid(*freqs, indexing="ij")
    dist2 = sum(g.double() ** 2 for g in grids)
    if radius == 0.0:
        return torch.zeros_like(dist2, dtype=torch.bool)
    return dist2 <= radius * radius


def _computable(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a dtype the FFT supports everywhere: float32 for integers and half precision."""
    return x.float() if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16) else x


def amplitude_spectrum(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``|rfftn(x)|`` over the ``spatial_dims`` trailing axes (float32, or float64 for float64 input)."""
    return torch.fft.rfftn(_computable(x), dim=_dims(spatial_dims)).abs()


def fourier_amplitude_swap(target: torch.Tensor, donor_amplitude: torch.Tensor, beta: float,
                           spatial_dims: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the low-frequency amplitudes of ``target`` by ``donor_amplitude``, keeping the target's phase.

    Args:
        target: real images, ``(..., *spatial)``.
        donor_amplitude: amplitude spectra from :func:`amplitude_spectrum` of donors with the same spatial
            shape, broadcastable against the target's spectrum ``(..., *spatial[:-1], spatial[-1] // 2 + 1)``
            (e.g. one donor per target, or one donor for a batch).
        beta: window size, see the module docstring.
        spatial_dims: number of trailing spatial axes transformed (2 for slices, 3 for volumes; 2 on a
            volume styles each slice separately).
        mask: a precomputed :func:`low_frequency_mask` for this shape and ``beta`` (optional, for speed).

    Returns:
        The styled target, real, same shape and floating dtype as ``target`` (float16 is computed in float32).

    Raises:
        ValueError: non-finite target, amplitude shape that does not match the target's spectrum, bad ``beta``.
    """
    dims = _dims(spatial_dims)
    spatial = tuple(target.shape[-spatial_dims:])
    if mask is None:
        mask = low_frequency_mask(spatial, beta, device=target.device)
    else:
        check_window(spatial, beta)
    if not bool(mask.any()):
        return target.clone()
    work = _computable(target)
    if not bool(torch.isfinite(work).all()):
        raise ValueError("target contains NaN or infinite values; a Fourier style swap would spread them "
                         "over the whole image. Fix or mask the input first")
    spectrum = torch.fft.rfftn(work, dim=dims)
    if donor_amplitude.shape[-spatial_dims:] != spectrum.shape[-spatial_dims:]:
        raise ValueError(
            f"donor amplitude spectrum has spatial shape {tuple(donor_amplitude.shape[-spatial_dims:])}, the "
            f"target's is {tuple(spectrum.shape[-spatial_dims:])}: donors must have the target's spatial shape "
            f"{spatial}"
        )
    amplitude = torch.where(mask, donor_amplitude.to(spectrum.real.dtype), spectrum.abs())
    styled = torch.polar(amplitude, torch.angle(spectrum))
    out = torch.fft.irfftn(styled, s=spatial, dim=dims)
    return out.to(target.dtype) if target.is_floating_point() else out


def fda(target: torch.Tensor, donor: torch.Tensor, beta: float, spatial_dims: int) -> torch.Tensor:
    """One-call Fourier domain adaptation of ``target`` to the style of ``donor`` (same spatial shape)."""
    return fourier_amplitude_swap(target, amplitude_spectrum(donor, spatial_dims), beta, spatial_dims)


def mix_amplitudes(amplitudes: torch.Tensor, dim: int = 0,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Average several donors' amplitude spectra into one style (optionally weighted; weights sum to 1).

    Raises:
        ValueError: empty donor axis, or weights of the wrong length, negative or not summing to 1.
    """
    if amplitudes.shape[dim] == 0:
        raise ValueError("mix_amplitudes needs at least one donor amplitude, got an empty donor axis")
    if weights is None:
        return amplitudes.mean(dim=dim)
    if weights.ndim != 1 or weights.numel() != amplitudes.shape[dim] or bool((weights < 0).any()) \
            or abs(float(weights.sum()) - 1.0) > 1e-4:
        raise ValueError(f"weights must be {amplitudes.shape[dim]} non-negative numbers summing to 1, got "
                         f"{weights.tolist()}")
    shape = [1] * amplitudes.ndim
    shape[dim] = -1
    return (amplitudes * weights.to(amplitudes.dtype).view(shape)).sum(dim=dim)
