"""Style curriculum learning with a local gradient sign (LSCL; Liu et al., MICCAI 2021).

Paper: Z. Liu, V. Manh, X. Yang, X. Huang, K. Lekadir, V. Campello, N. Ravikumar, A. F. Frangi, D. Ni,
"Style Curriculum Learning for Robust Medical Image Segmentation", MICCAI 2021. No public code; this is a
reimplementation from the paper.

A content image ``x_c`` (with label ``y_c``) and a stylised copy ``z = S(x_c, x_s)`` (``x_s``: a style image)
are fused by a stylisation weight map ``Gamma`` (Algorithm 1, step 4)::

    z_i = Gamma_i * z + (1 - Gamma_i) * x_c,        Gamma_0 = 0   (so z_0 = x_c)

After each loss ``Phi = J(f(z_i), y_c)`` the map grows along the loss gradient with the *local gradient sign*
(Eq. 2; AP average pooling with kernel = stride = ``pool_size``, US nearest upsampling back)::

    Gamma_{i+1} = Gamma_i + US(ReLU(eps * sign(AP(grad_{z_i} Phi, pool_size))))

so ``Gamma`` only grows, in ``eps`` steps, and only in the pooled cells whose gradient is positive, i.e.
where more stylisation raises the loss: the samples get harder along the curriculum (the paper's Fig. 3a).
The SCL ablation (no LGS) uses the raw per-voxel sign instead: ``Gamma_{i+1} = Gamma_i + eps * sign(grad)``.
Both are clipped to ``[0, 1]`` (with the paper's ``n = 3``, ``eps = 0.25`` LGS never reaches the bound).

``Gamma`` has one value per voxel, shared by the channels (the paper's ``Gamma in R^{h x w}``): the gradient is
averaged over channels before its sign is taken. 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)`` inputs work
alike; ``pool_size`` is one int for every spatial axis or one per axis (e.g. ``(1, 4, 4)`` for in-plane cells
of a 3D patch). Axes not divisible by the pool size get a smaller last cell (its sign is that of its mean).

Style sources (the paper's WaveCT-AIN needs weights that are not available) implement one interface,
:class:`StyleSource`: ``source(content, style, generator) -> stylised`` with ``(B, C, *spatial)`` tensors:

- :class:`FourierAmplitudeMix`: the low-frequency amplitude spectrum of the content is mixed with the style
  image's (:mod:`nnunet_ext.core.fourier`), the content's phase (anatomy) is kept.
- :class:`HistogramMatch`: the content's intensity histogram is matched to the style image's
  (``skimage.exposure.match_histograms``), per sample and channel.
- :class:`RandomIntensityBias`: random gamma, multiplicative polynomial bias field and contrast; ignores the
  style image (a source of unpaired random styles).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, z = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    >>> gamma = torch.zeros(2, 1, 8, 8)
    >>> bool(torch.equal(style_fusion(x, z, gamma), x))
    True
    >>> grad = torch.ones(2, 1, 8, 8)
    >>> curriculum_step(gamma, grad, eps=0.25, pool_size=4, spatial_dims=2).unique().tolist()
    [0.25]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_ext.core.fourier import (
    amplitude_spectrum,
    fourier_amplitude_swap,
    low_frequency_mask,
    mix_amplitudes,
)

__all__ = [
    "FourierAmplitudeMix",
    "HistogramMatch",
    "RandomIntensityBias",
    "StyleSource",
    "curriculum_step",
    "gradient_sign",
    "initial_gamma",
    "local_gradient_sign",
    "style_fusion",
]

Update = Literal["lgs", "sign"]


def _spatial_dims(x: torch.Tensor, spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (B, C, H, W) or 3 (B, C, D, H, W), got {spatial_dims!r}")
    if x.ndim != spatial_dims + 2:
        raise ValueError(f"expected a (B, C, *spatial) tensor with {spatial_dims} spatial axes, got shape "
                         f"{tuple(x.shape)}")
    return spatial_dims


def _pool(pool_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    size = (pool_size,) * spatial_dims if isinstance(pool_size, int) else tuple(int(p) for p in pool_size)
    if len(size) != spatial_dims or any(p < 1 for p in size):
        raise ValueError(f"pool_size must be a positive int or {spatial_dims} positive ints (one per spatial axis), "
                         f"got {pool_size!r}")
    return size


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0.0 < float(eps) <= 1.0:
        raise ValueError(f"eps (the curriculum learning step) must be in (0, 1], got {eps!r}; the paper uses 0.25")
    return float(eps)


def initial_gamma(x: torch.Tensor) -> torch.Tensor:
    """``Gamma_0 = O``: zeros of shape ``(B, 1, *spatial)`` (one weight per voxel, shared by the channels)."""
    return torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=x.device)


def style_fusion(content: torch.Tensor, stylised: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, step 4: ``z_i = Gamma * z + (1 - Gamma) * x_c``.

    Args:
        content: ``x_c``, ``(B, C, *spatial)``.
        stylised: ``z = S(x_c, x_s)``, same shape.
        gamma: ``(B, 1, *spatial)`` (or broadcastable) weights in ``[0, 1]``.

    Returns:
        The fused sample, shape and dtype of ``content``.

    Raises:
        ValueError: shapes that do not match.
    """
    if content.shape != stylised.shape:
        raise ValueError(f"content {tuple(content.shape)} and stylised {tuple(stylised.shape)} must have one shape")
    if gamma.ndim != content.ndim or gamma.shape[2:] != content.shape[2:]:
        raise ValueError(f"gamma must be (B, 1, *spatial) for content {tuple(content.shape)}, got {tuple(gamma.shape)}")
    gamma = gamma.to(content.dtype)
    return gamma * stylised + (1.0 - gamma) * content


def _channel_mean(grad: torch.Tensor) -> torch.Tensor:
    """Gradient averaged over channels, non-finite values (an AMP overflow) set to 0 (no growth there)."""
    grad = torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return grad.mean(dim=1, keepdim=True)


def local_gradient_sign(grad: torch.Tensor, eps: float = 0.25, pool_size: int | Sequence[int] = 4,
                        spatial_dims: int = 2) -> torch.Tensor:
    """Eq. (2): ``LGS = US(ReLU(eps * sign(AP(grad, pool_size))))``.

    Args:
        grad: ``grad_{z_i} Phi``, ``(B, C, *spatial)`` (any positive scale, e.g. an AMP-scaled gradient, gives
            the same result).
        eps: learning step in ``(0, 1]`` (paper: 0.25).
        pool_size: average-pooling cell (kernel = stride), one int or one per spatial axis (paper: 4 x 4).
        spatial_dims: 2 or 3.

    Shape:
        Returns ``(B, 1, *spatial)`` with values in ``{0, eps}``, constant on each pooling cell.

    Raises:
        ValueError: bad ``eps``, ``pool_size``, ``spatial_dims`` or tensor rank.
    """
    spatial_dims = _spatial_dims(grad, spatial_dims)
    eps = _check_eps(eps)
    size = _pool(pool_size, spatial_dims)
    g = _channel_mean(grad)
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    pooled = pool(g, kernel_size=size, stride=size, ceil_mode=True)
    step = F.relu(eps * torch.sign(pooled))
    for axis, k in enumerate(size, start=2):  # US: nearest upsampling = repeat each cell, crop the ceil overhang
        step = step.repeat_interleave(k, dim=axis).narrow(axis, 0, grad.shape[axis])
    return step


def gradient_sign(grad: torch.Tensor, eps: float = 0.25, spatial_dims: int = 2) -> torch.Tensor:
    """The SCL ablation's step: ``eps * sign(grad)`` per voxel (no pooling, no ReLU), ``(B, 1, *spatial)``."""
    _spatial_dims(grad, spatial_dims)
    return _check_eps(eps) * torch.sign(_channel_mean(grad))


def curriculum_step(gamma: torch.Tensor, grad: torch.Tensor, eps: float = 0.25,
                    pool_size: int | Sequence[int] = 4, spatial_dims: int = 2,
                    update: Update = "lgs") -> torch.Tensor:
    """Algorithm 1, step 6: ``Gamma_{i+1} = clip(Gamma_i + step(grad), 0, 1)``.

    Args:
        gamma: ``Gamma_i``, ``(B, 1, *spatial)``.
        grad: ``grad_{z_i} Phi``, ``(B, C, *spatial)``.
        eps, pool_size, spatial_dims: see :func:`local_gradient_sign`.
        update: ``"lgs"`` (LSCL, Eq. 2) or ``"sign"`` (SCL ablation, raw sign; may also lower Gamma).

    Returns:
        ``Gamma_{i+1}`` (float32, detached), in ``[0, 1]``.

    Raises:
        ValueError: bad ``update`` or shapes (and see :func:`local_gradient_sign`).
    """
    if gamma.shape != (grad.shape[0], 1, *grad.shape[2:]):
        raise ValueError(f"gamma must be (B, 1, *spatial) = {(grad.shape[0], 1, *grad.shape[2:])}, got "
                         f"{tuple(gamma.shape)}")
    if update == "lgs":
        step = local_gradient_sign(grad, eps, pool_size, spatial_dims)
    elif update == "sign":
        step = gradient_sign(grad, eps, spatial_dims)
    else:
        raise ValueError(f"update must be 'lgs' (LSCL) or 'sign' (SCL ablation), got {update!r}")
    return (gamma.detach().float() + step).clamp_(0.0, 1.0)


class StyleSource(Protocol):
    """``S(x_c, x_s)``: stylise ``content`` with ``style`` (both ``(B, C, *spatial)``); same shape returned."""

    def __call__(self, content: torch.Tensor, style: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not low <= a <= b <= high:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {value!r}")
    return a, b


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(tuple(shape), generator=generator).to(device)


def _check_pair(content: torch.Tensor, style: torch.Tensor) -> int:
    if content.shape != style.shape or content.ndim not in (4, 5):
        raise ValueError(f"content and style must be (B, C, *spatial) tensors of one shape with 2 or 3 spatial "
                         f"axes, got {tuple(content.shape)} and {tuple(style.shape)}")
    return content.ndim - 2


class FourierAmplitudeMix:
    """Fourier amplitude mixing: low-frequency amplitudes ``(1 - lam) |F(x_c)| + lam |F(x_s)|``, phase of ``x_c``.

    Reuses :func:`~nnunet_ext.core.fourier.mix_amplitudes` and
    :func:`~nnunet_ext.core.fourier.fourier_amplitude_swap` (circular window of radius
    ``beta * min(spatial shape)``, slice-wise for 3D inputs when ``spatial_dims = 2``). ``lam`` is drawn per
    sample from ``strength``; ``lam = 1`` is an FDA swap, ``lam = 0`` the identity.

    Args:
        beta: window size in ``[0, 0.5]``.
        strength: range of ``lam``.
        spatial_dims: axes transformed; ``None``: all spatial axes of the input.
    """

    def __init__(self, beta: float = 0.1, strength: tuple[float, float] = (0.5, 1.0), spatial_dims: int | None = None):
        if not 0.0 <= float(beta) <= 0.5:
            raise ValueError(f"beta must be in [0, 0.5], got {beta!r}")
        self.beta = float(beta)
        self.strength = _check_range("strength", strength, 0.0, 1.0)
        self.spatial_dims = spatial_dims

    def __call__(self, content: torch.Tensor, style: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        _check_pair(content, style)
        dims = self.spatial_dims or content.ndim - 2
        mask = low_frequency_mask(tuple(content.shape[-dims:]), self.beta, device=content.device)
        lam = _uniform((content.shape[0],), *self.strength, generator, content.device)
        out = torch.empty_like(content)
        for b in range(content.shape[0]):
            amplitudes = torch.stack([amplitude_spectrum(style[b], dims), amplitude_spectrum(content[b], dims)])
            weights = torch.stack([lam[b], 1.0 - lam[b]]).to(amplitudes.dtype)
            out[b] = fourier_amplitude_swap(content[b], mix_amplitudes(amplitudes, 0, weights), self.beta, dims, mask)
        return out


class HistogramMatch:
    """Histogram matching of each content sample and channel to the style image (scikit-image).

    Args:
        strength: range of the per-sample blend ``lam`` between the content (0) and the matched image (1).
    """

    def __init__(self, strength: tuple[float, float] = (1.0, 1.0)):
        self.strength = _check_range("strength", strength, 0.0, 1.0)

    def __call__(self, content: torch.Tensor, style: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        from skimage.exposure import match_histograms

        _check_pair(content, style)
        lam = _uniform((content.shape[0],), *self.strength, generator, content.device)
        c = content.detach().float().cpu().numpy()
        s = style.detach().float().cpu().numpy()
        matched = np.stack([np.stack([match_histograms(c[b, k], s[b, k]) for k in range(c.shape[1])])
                            for b in range(c.shape[0])])
        matched_t = torch.from_numpy(matched.astype(np.float32)).to(content.device, content.dtype)
        w = lam.view(-1, *([1] * (content.ndim - 1))).to(content.dtype)
        return w * matched_t + (1.0 - w) * content


class RandomIntensityBias:
    """Random scanner-like restyling of the content (the style image is ignored).

    Per sample: intensities mapped to ``[0, 1]`` by the sample's min/max, a gamma ``g`` applied
    (``u ** g``), multiplied by a smooth bias field ``exp(sum_k c_k P_k)`` (products of Legendre-like
    monomials up to ``bias_order`` over normalised coordinates, ``c_k ~ U(-bias, bias)``), mapped back to the
    sample's range and its contrast scaled around its mean by ``contrast``.

    Args:
        gamma: range of ``log(g)`` is ``log(gamma)``, i.e. ``g`` log-uniform in ``gamma``.
        bias: coefficient bound of the bias field (0: no bias field).
        bias_order: highest total polynomial order of the bias field.
        contrast: range of the contrast factor.
    """

    def __init__(self, gamma: tuple[float, float] = (0.5, 2.0), bias: float = 0.3, bias_order: int = 2,
                 contrast: tuple[float, float] = (0.75, 1.25)):
        self.gamma = _check_range("gamma", gamma, 1e-3, 1e3)
        if bias < 0 or bias_order < 0:
            raise ValueError(f"bias and bias_order must be >= 0, got {bias!r} and {bias_order!r}")
        self.bias, self.bias_order = float(bias), int(bias_order)
        self.contrast = _check_range("contrast", contrast, 0.0, 100.0)

    def _bias_field(self, shape: Sequence[int], generator: torch.Generator | None,
                    device: torch.device) -> torch.Tensor:
        grids = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n, device=device) for n in shape], indexing="ij")
        powers = [p for p in np.ndindex(*([self.bias_order + 1] * len(shape))) if 0 < sum(p) <= self.bias_order]
        coefficients = _uniform((len(powers),), -self.bias, self.bias, generator, device)
        log_field = torch.zeros(tuple(shape), device=device)
        for c, p in zip(coefficients, powers):
            term = torch.ones_like(log_field)
            for g, e in zip(grids, p):
                term = term * g ** e
            log_field = log_field + c * term
        return torch.exp(log_field)

    def __call__(self, content: torch.Tensor, style: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if content.ndim not in (4, 5):
            raise ValueError(f"content must be (B, C, *spatial) with 2 or 3 spatial axes, got {tuple(content.shape)}")
        out = torch.empty_like(content)
        lo_g, hi_g = np.log(self.gamma[0]), np.log(self.gamma[1])
        for b in range(content.shape[0]):
            x = content[b].float()
            axes = tuple(range(1, x.ndim))
            lo, hi = x.amin(dim=axes, keepdim=True), x.amax(dim=axes, keepdim=True)
            span = (hi - lo).clamp_min(1e-8)
            g = torch.exp(_uniform((), lo_g, hi_g, generator, x.device))
            u = ((x - lo) / span).clamp(0.0, 1.0) ** g
            if self.bias > 0 and self.bias_order > 0:
                u = u * self._bias_field(x.shape[1:], generator, x.device)
            y = lo + u * span
            mean = y.mean(dim=axes, keepdim=True)
            y = mean + (y - mean) * _uniform((), *self.contrast, generator, x.device)
            out[b] = y.to(content.dtype)
        return out
