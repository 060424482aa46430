"""Style consistency and regeneration (Stain-AgLr, ported from H&E classification to MR/CT segmentation).

Paper: G. Raipuria, A. Shrivastava, N. Singhal, "Stain-AgLr: Stain Agnostic Learning for Computational
Histopathology Using Domain Consistency and Stain Regeneration Loss", DART 2022 (MICCAI workshop).
Reimplemented from the paper; no code of the authors is used.

The paper trains on each image ``x`` and a style-altered copy ``x_hat`` (HED-light jitter) in one batch and adds
two losses to the task loss (its Eq. 1-3)::

    L = L_task + lambda_1 * L_reg + lambda_2 * L_cons           (lambda_1 = 0.1, lambda_2 = 10)
    L_cons = KL( M(x) || M(x_hat) )                             predictions on the two views
    L_reg  = mean_pixels || G(F(x_hat)) - x ||^2                  regenerate the clean image from x_hat's features

This module holds the three pure-tensor parts:

* **Style alteration** (:func:`sample_style_parameters` draws, :func:`apply_style` applies). The MR/CT stand-in
  for HED jitter (a documented deviation): per sample and channel, intensities are min-max scaled to [0, 1],
  passed through a random gamma curve ``u ** gamma`` (``log gamma ~ U(log g_lo, log g_hi)``), multiplied by a
  smooth random receive-bias field ``exp(b)`` (``b`` = a coarse grid of ``N(0, bias_std^2)`` values
  interpolated (bi/trilinearly) to the image), plus Gaussian noise of standard deviation ``noise_std * U(0, 1)``
  (relative to the [0, 1] range), and finally re-standardised to the input's per-channel mean and standard
  deviation. The last step matters for nnU-Net's MR normalisation: inputs are z-scored per image, so a change
  of brightness or contrast is undone by preprocessing and only what z-scoring cannot undo (the intensity
  curve, the bias, the noise) is a style change. (nnU-Net's CT normalisation uses the dataset's global
  statistics instead; the re-standardisation then keeps each image's own level, which is what CT's
  calibrated intensities have anyway.) With a ``mask`` (nnU-Net's ``use_mask_for_norm``) only the
  foreground is altered. With ``gamma = 1``, no bias and no noise the output equals the input (up to
  rounding): zero strength is the identity.
* **Consistency** (:func:`consistency_kl`): ``KL(p_clean || p_altered)`` of the softmax predictions per voxel,
  summed over classes and averaged over voxels and samples (the paper's Eq. 2). By default the clean
  prediction is the target (no gradient through it): the paper describes the term as "matching logits of the
  altered image to the original image". With gradients into both views, the term also pulls the clean
  prediction towards the altered one, against the segmentation loss (on the tiny demo data it left white
  matter unlearnt after 160 iterations; see the method page's deviations).
* **Regeneration** (:func:`regeneration_mse`): the squared error between the regenerated and the clean image,
  summed over channels and averaged over voxels (the paper's Eq. 3), here in nnU-Net's z-scored intensity
  units.

Randomness is drawn only in :func:`sample_style_parameters` (one ``torch.Generator``); :func:`apply_style` is
deterministic (batchgeneratorsv2's ``get_parameters`` / ``apply`` split).

Example:
    >>> import torch
    >>> x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> params = sample_style_parameters(2, 1, (16, 16), StyleConfig(), torch.Generator().manual_seed(1))
    >>> y = apply_style(x, params)
    >>> y.shape == x.shape, bool(torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5))
    (True, True)
    >>> identity = StyleConfig(gamma_range=(1.0, 1.0), bias_std=0.0, noise_std=0.0)
    >>> p0 = sample_style_parameters(2, 1, (16, 16), identity, torch.Generator().manual_seed(1))
    >>> bool(torch.allclose(apply_style(x, p0), x, atol=1e-4))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["StyleConfig", "StyleParameters", "apply_style", "consistency_kl", "regeneration_mse",
           "sample_style_parameters"]

_EPS = 1e-6


@dataclass(frozen=True)
class StyleConfig:
    """Strength of the style alteration.

    Attributes:
        gamma_range: ``(low, high)``, ``0 < low <= high``; ``gamma`` is log-uniform in it (default (0.5, 2.0):
            from a strongly brightened to a strongly darkened mid-range).
        bias_std: standard deviation of the log bias field's grid values (default 0.3: the field's
            multiplicative range is typically 0.55-1.8 across the image); 0 switches the bias off.
        bias_grid: grid points per spatial axis of the bias field (>= 2; default 3: a field smoother than the
            anatomy, like a receive coil's).
        noise_std: maximum Gaussian noise standard deviation relative to the [0, 1] intensity range (default
            0.05); each sample draws its own in ``[0, noise_std]``. 0 switches noise off.

    Raises:
        ValueError: a bad range or a negative strength, naming the attribute and the value.
    """

    gamma_range: tuple[float, float] = (0.5, 2.0)
    bias_std: float = 0.3
    bias_grid: int = 3
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.gamma_range)
        if not 0 < low <= high:
            raise ValueError(f"gamma_range must be (low, high) with 0 < low <= high, got {self.gamma_range!r}")
        if not float(self.bias_std) >= 0:
            raise ValueError(f"bias_std must be >= 0, got {self.bias_std!r}")
        if int(self.bias_grid) < 2:
            raise ValueError(f"bias_grid must be >= 2 grid points per axis, got {self.bias_grid!r}")
        if not float(self.noise_std) >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")


@dataclass(frozen=True)
class StyleParameters:
    """One draw of the alteration for a batch.

    Attributes:
        gamma: ``(B, C)`` gamma exponents.
        log_bias: ``(B, C, *grid)`` log bias values on the coarse grid.
        noise: ``(B, C, *spatial)`` noise already scaled to its per-sample standard deviation.
    """

    gamma: torch.Tensor
    log_bias: torch.Tensor
    noise: torch.Tensor


def sample_style_parameters(batch: int, channels: int, spatial: Sequence[int], config: StyleConfig,
                            generator: torch.Generator, device: torch.device | str = "cpu",
                            dtype: torch.dtype = torch.float32) -> StyleParameters:
    """Draw the alteration of ``batch`` samples of ``channels`` channels on a grid of shape ``spatial``.

    Draws on the CPU from ``generator`` (so a seeded generator gives the same draw on every device), then
    moves the tensors to ``device``.

    Args:
        batch: number of samples ``B``.
        channels: channels per sample ``C``; each channel gets its own gamma, bias and noise.
        spatial: spatial shape (2 or 3 axes).
        config: the strengths.
        generator: the only source of randomness.
        device, dtype: of the returned tensors.

    Returns:
        A :class:`StyleParameters`.

    Raises:
        ValueError: ``spatial`` has not 2 or 3 axes.
    """
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) not in (2, 3):
        raise ValueError(f"spatial must have 2 or 3 axes, got {spatial!r}")
    low, high = (math.log(float(v)) for v in config.gamma_range)
    gamma = torch.exp(low + (high - low) * torch.rand(batch, channels, generator=generator))
    grid = (int(config.bias_grid),) * len(spatial)
    log_bias = float(config.bias_std) * torch.randn(batch, channels, *grid, generator=generator)
    sd = float(config.noise_std) * torch.rand(batch, channels, *(1,) * len(spatial), generator=generator)
    noise = sd * torch.randn(batch, channels, *spatial, generator=generator)
    return StyleParameters(gamma.to(device, dtype), log_bias.to(device, dtype), noise.to(device, dtype))


def _masked_stats(v: torch.Tensor, w: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased, as ``torch.std``) standard deviation of ``v`` over the voxels where ``w`` is 1."""
    n = w.sum(dim=dims, keepdim=True)
    mean = (v * w).sum(dim=dims, keepdim=True) / n.clamp_min(1)
    var = ((v - mean) ** 2 * w).sum(dim=dims, keepdim=True) / (n - 1).clamp_min(1)
    return mean, var.sqrt()


def apply_style(x: torch.Tensor, params: StyleParameters, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a drawn alteration (deterministic; see the module docstring for the formula).

    Args:
        x: ``(B, C, *spatial)`` images (any intensity scale; nnU-Net's are z-scored).
        params: from :func:`sample_style_parameters` for this shape.
        mask: optional boolean ``(B, C, *spatial)`` (or broadcastable) foreground: the alteration, its [0, 1]
            scaling and the re-standardisation use these voxels only, and the others are returned unchanged
            (nnU-Net's ``use_mask_for_norm``, where the background is exactly 0). A sample-channel with no
            foreground voxel is returned unchanged.

    Shape:
        ``x`` and the output: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.

    Returns:
        The altered images with each sample's per-channel mean and standard deviation of ``x`` (over the mask).

    Raises:
        ValueError: ``params`` was drawn for another shape, or ``mask`` does not broadcast to ``x``.
    """
    if params.noise.shape != x.shape or params.gamma.shape != x.shape[:2]:
        raise ValueError(f"style parameters drawn for {tuple(params.noise.shape)}, applied to {tuple(x.shape)}")
    dims = tuple(range(2, x.ndim))
    if mask is None:
        m = torch.ones_like(x, dtype=torch.bool)
    else:
        try:
            m = torch.broadcast_to(mask.bool(), x.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the images' "
                             f"{tuple(x.shape)}") from None
    w = m.to(x.dtype)
    low = torch.where(m, x, torch.full_like(x, math.inf)).amin(dim=dims, keepdim=True)
    high = torch.where(m, x, torch.full_like(x, -math.inf)).amax(dim=dims, keepdim=True)
    empty = ~m.any(dim=dims, keepdim=True)
    low, high = torch.where(empty, 0.0, low), torch.where(empty, 1.0, high)
    u = ((x - low) / (high - low).clamp_min(_EPS)).clamp(0, 1)
    u = u.pow(params.gamma.view(*params.gamma.shape, *(1,) * len(dims)))
    mode = "bilinear" if len(dims) == 2 else "trilinear"
    bias = F.interpolate(params.log_bias, size=x.shape[2:], mode=mode, align_corners=True)
    u = u * torch.exp(bias) + params.noise
    mean, std = _masked_stats(x, w, dims)
    u_mean, u_std = _masked_stats(u, w, dims)
    return torch.where(m, (u - u_mean) / u_std.clamp_min(_EPS) * std + mean, x)


def consistency_kl(logits_clean: torch.Tensor, logits_altered: torch.Tensor, clean_is_target: bool = True
                   ) -> torch.Tensor:
    """``KL(softmax(clean) || softmax(altered))`` over the class axis, averaged over samples and voxels.

    Args:
        logits_clean: ``(B, K, *spatial)`` logits on the clean views.
        logits_altered: the same shape, on the altered views.
        clean_is_target: True (default): the clean prediction is the target and gets no gradient from this
            term, so the altered view's prediction is pulled towards it (the paper: "matching logits of the
            altered image to the original image"). False: gradients into both (Eq. 2 read as a plain sum).

    Returns:
        A scalar; 0 when the two predictions agree.

    Raises:
        ValueError: the shapes differ.
    """
    if logits_clean.shape != logits_altered.shape:
        raise ValueError(f"logits of the two views differ in shape: {tuple(logits_clean.shape)} vs "
                         f"{tuple(logits_altered.shape)}")
    if clean_is_target:
        logits_clean = logits_clean.detach()
    log_p = torch.log_softmax(logits_clean.float(), dim=1)
    log_q = torch.log_softmax(logits_altered.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def regeneration_mse(regenerated: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 3: per voxel the squared norm over channels of the error, averaged over voxels and samples.

    With one channel this is the ordinary mean squared error; with ``C`` channels it is ``C`` times
    ``F.mse_loss`` (the norm sums the channels), so the weight means the same per voxel whatever ``C`` is.

    Raises:
        ValueError: the shapes differ.
    """
    if regenerated.shape != clean.shape:
        raise ValueError(f"regenerated image {tuple(regenerated.shape)} and clean image {tuple(clean.shape)} differ "
                         f"in shape")
    return ((regenerated.float() - clean.float()) ** 2).sum(dim=1).mean()
