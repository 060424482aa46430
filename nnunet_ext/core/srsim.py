"""SR-SIM image similarity with reusable per-image features, for picking style donors.

Paper: L. Zhang, H. Li, "SR-SIM: A fast and high performance IQA index based on spectral residual",
ICIP 2012; saliency from X. Hou, L. Zhang, "Saliency Detection: A Spectral Residual Approach", CVPR 2007.
Used by Zakazov et al. (DART 2022) to choose the source slices whose style is transferred to a target.

For two grey images ``x``, ``y`` in ``[0, 255]``::

    VS   = spectral-residual visual saliency map (computed at 1/4 resolution, blurred, scaled to [0, 1])
    G    = gradient magnitude (Scharr)
    S_VS = (2 VS_x VS_y + C1) / (VS_x^2 + VS_y^2 + C1),  S_G = (2 G_x G_y + C2) / (G_x^2 + G_y^2 + C2)
    SR-SIM = sum(S_VS * S_G^alpha * max(VS_x, VS_y)) / sum(max(VS_x, VS_y)),   C1=0.40, C2=225, alpha=0.5

Everything but the last two lines depends on one image only, so :func:`srsim_features` computes ``(VS, G)``
once per image and :func:`srsim_matrix` compares T targets with D donors at the cost of T + D feature
computations plus T x D cheap element-wise maps (a donor bank's features are computed once).

The building blocks (MATLAB-compatible ``imresize``, Gaussian and Scharr kernels, gradient and similarity
maps) are :mod:`piq`'s; ``tests/core/test_srsim.py`` checks :func:`srsim` against ``piq.srsim``.
Deviations from ``piq.srsim``:

1. The saliency map is scaled to ``[0, 1]`` by each image's own minimum and maximum, as in the authors'
   MATLAB code; ``piq`` (0.8) uses the minimum and maximum over the whole batch, so its score for a pair
   depends on the other pairs in the batch. For a batch of one the two agree.
2. Inputs of any real range: each image is mapped to ``[0, 255]`` by its own robust range (0.5th and 99.5th
   percentiles, clipped; a constant image maps to 0), which suits nnU-Net's z-scored intensities and makes
   the score insensitive to a global gain or offset. Pass ``intensity="absolute"`` for images already in
   ``[0, 1]``.
3. Images whose shorter side is below 40 pixels (where ``piq`` raises, because its 10-pixel Gaussian no
   longer fits at 1/4 resolution) are first resized bilinearly to a shorter side of 40.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(3, 1, 48, 48, generator=g)
    >>> m = srsim_matrix(srsim_features(x), srsim_features(x))
    >>> m.shape, bool(torch.allclose(m.diagonal(), torch.ones(3)))
    (torch.Size([3, 3]), True)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["MIN_SIDE", "SRSIMFeatures", "srsim", "srsim_features", "srsim_matrix"]

#: shorter image side below which images are resized up (piq's kernels need 40 pixels at scale 1/4)
MIN_SIDE = 40
_C1, _C2, _ALPHA = 0.40, 225.0, 0.50
_SCALE, _AVG_KERNEL, _SIGMA, _GAUSS_SIZE = 0.25, 3, 3.8, 10


class SRSIMFeatures(NamedTuple):
    """Per-image SR-SIM features: saliency ``(N, H, W)`` in [0, 1] and gradient magnitude ``(N, H, W)``."""

    saliency: torch.Tensor
    gradient: torch.Tensor


def _piq():
    try:
        from piq import functional as piq_functional
    except ImportError as e:  # pragma: no cover - piq is a dependency
        raise RuntimeError("SR-SIM needs the 'piq' package: pip install piq") from e
    return piq_functional


def _to_255(x: torch.Tensor, intensity: Literal["robust", "absolute"]) -> torch.Tensor:
    if intensity == "absolute":
        return x * 255.0
    if intensity != "robust":
        raise ValueError(f"intensity must be 'robust' or 'absolute', got {intensity!r}")
    flat = x.flatten(1)
    lo = torch.quantile(flat, 0.005, dim=1, keepdim=True)
    hi = torch.quantile(flat, 0.995, dim=1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(flat))
    return (scaled.clamp(0.0, 1.0) * 255.0).view_as(x)


def _saliency(x: torch.Tensor, pf) -> torch.Tensor:
    """Spectral-residual saliency of ``(N, 1, H, W)`` images in [0, 255], each scaled to [0, 1]."""
    eps = torch.finfo(x.dtype).eps
    small = pf.imresize(x, scale=_SCALE)
    spectrum = torch.fft.fft2(small)
    log_amplitude = torch.log(spectrum.abs() + eps)
    lo_pad, hi_pad = (_AVG_KERNEL - 1) // 2, _AVG_KERNEL // 2
    smoothed = F.avg_pool2d(F.pad(log_amplitude, [lo_pad, hi_pad, lo_pad, hi_pad], mode="replicate"),
                            kernel_size=_AVG_KERNEL, stride=1)
    residual = log_amplitude - smoothed
    saliency = torch.fft.ifft2(torch.polar(torch.exp(residual), torch.angle(spectrum))).abs() ** 2
    # an even Gaussian is padded with a leading row and column of zeros, as MATLAB's fspecial/imfilter do
    kernel = F.pad(pf.gaussian_filter(_GAUSS_SIZE, _SIGMA, device=x.device, dtype=x.dtype), [1, 0, 1, 0])
    size = kernel.shape[-1]
    saliency = F.conv2d(saliency, kernel.view(1, 1, size, size), padding=(size - 1) // 2)
    lo = saliency.amin(dim=(1, 2, 3), keepdim=True)
    hi = saliency.amax(dim=(1, 2, 3), keepdim=True)
    saliency = (saliency - lo) / (hi - lo + eps)
    return pf.imresize(saliency, sizes=x.shape[-2:])


def srsim_features(images: torch.Tensor, intensity: Literal["robust", "absolute"] = "robust") -> SRSIMFeatures:
    """SR-SIM features of grey images.

    Args:
        images: ``(N, 1, H, W)`` or ``(N, H, W)`` real images (several channels: average them first).
        intensity: ``"robust"`` (default) maps each image to [0, 255] by its 0.5/99.5 percentiles;
            ``"absolute"`` expects images in [0, 1].

    Returns:
        :class:`SRSIMFeatures` with maps ``(N, H', W')``; ``H', W'`` equal ``H, W`` unless the shorter side
        was below :data:`MIN_SIDE` (then resized up to it).

    Raises:
        ValueError: wrong number of dimensions, several channels, empty batch, non-finite values.
    """
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W) or (N, H, W), got {tuple(images.shape)}; "
                         f"average the channels of multi-channel images first")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; SR-SIM needs at least one image")
    x = images.float() if images.dtype != torch.float64 else images
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or infinite values; SR-SIM needs finite intensities")
    x = _to_255(x, intensity)
    short = min(x.shape[-2:])
    if short < MIN_SIDE:
        factor = MIN_SIDE / short
        size = (max(MIN_SIDE, round(x.shape[-2] * factor)), max(MIN_SIDE, round(x.shape[-1] * factor)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    pf = _piq()
    ksize = max(1, round(min(x.shape[-2:]) / 256))
    if ksize > 1:  # MATLAB's pre-averaging of large images
        x = F.avg_pool2d(F.pad(x, [(ksize - 1) // 2, ksize // 2, (ksize - 1) // 2, ksize // 2]), ksize)
    scharr = pf.scharr_filter(device=x.device, dtype=x.dtype)
    gradient = pf.gradient_map(x, torch.stack([scharr, scharr.transpose(-1, -2)]))
    return SRSIMFeatures(_saliency(x, pf)[:, 0], gradient[:, 0])


def srsim_matrix(targets: SRSIMFeatures, donors: SRSIMFeatures, chunk: int = 64) -> torch.Tensor:
    """SR-SIM of every target against every donor.

    Args:
        targets: features of T images.
        donors: features of D images with the same map size.
        chunk: donors compared at once (bounds memory to ``chunk * H * W`` per target).

    Returns:
        ``(T, D)`` similarities (1 for identical images, usually in [0, 1]).

    Raises:
        ValueError: feature maps of different sizes.
    """
    if targets.saliency.shape[-2:] != donors.saliency.shape[-2:]:
        raise ValueError(f"targets have feature maps {tuple(targets.saliency.shape[-2:])}, donors "
                         f"{tuple(donors.saliency.shape[-2:])}: compare images of the same size")
    eps = torch.finfo(targets.saliency.dtype).eps
    rows = []
    for vs_t, g_t in zip(targets.saliency, targets.gradient):
        cols = []
        for start in range(0, donors.saliency.shape[0], chunk):
            vs_d = donors.saliency[start:start + chunk]
            g_d = donors.gradient[start:start + chunk]
            s_vs = (2 * vs_t * vs_d + _C1) / (vs_t ** 2 + vs_d ** 2 + _C1)
            s_g = (2 * g_t * g_d + _C2) / (g_t ** 2 + g_d ** 2 + _C2)
            vs_max = torch.maximum(vs_t.expand_as(vs_d), vs_d)
            cols.append((s_vs * s_g ** _ALPHA * vs_max).sum(dim=(-2, -1)) / (vs_max.sum(dim=(-2, -1)) + eps))
        rows.append(torch.cat(cols))
    return torch.stack(rows)


def srsim(x: torch.Tensor, y: torch.Tensor, intensity: Literal["robust", "absolute"] = "robust") -> torch.Tensor:
    """Pairwise SR-SIM of ``x[i]`` and ``y[i]``; shapes ``(N, 1, H, W)``; returns ``(N,)``."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    fx, fy = srsim_features(x, intensity), srsim_features(y, intensity)
    return torch.stack([
        srsim_matrix(SRSIMFeatures(fx.saliency[i:i + 1], fx.gradient[i:i + 1]),
                     SRSIMFeatures(fy.saliency[i:i + 1], fy.gradient[i:i + 1]))[0, 0]
        for i in range(x.shape[0])
    ])
