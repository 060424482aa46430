"""CateNorm: categorical normalization, and the paper's class-wise intensity alignment (appendix A).

Paper: J. Xiao, L. Yu, Z. Zhou, Y. Bai, L. Xing, A. Yuille, Y. Zhou, "CateNorm: Categorical Normalization
for Robust Medical Image Segmentation", DART 2022 (LNCS 13542). Original code: github.com/lambert-x/CateNorm
(not used here; reimplemented from the paper).

A CateNorm layer is an ordinary normalization layer with a second, class-mask-conditioned affine branch.
Both branches share the parameter-free normalization ``x_hat = (x - mu) / sigma``; they differ in the affine
transform (paper Eqs. 1-2)::

    ordinary branch  (no mask):   y = gamma_c * x_hat + beta_c                       (per channel)
    CateNorm branch  (mask m):    y = gamma(m)_{c,i,j} * x_hat + beta(m)_{c,i,j}     (per channel and voxel)

    gamma(m), beta(m) = conv_gamma(h), conv_beta(h),   h = ReLU(conv_shared(resize(m)))

``m`` is a soft class mask (``num_classes`` channels, e.g. a softmax) resized to the feature map's spatial
size; ``conv_shared`` has ``num_features // 2`` output channels (paper: "the first layer is set to output
features of C/2 channels", after SPADE); all three convolutions are ``kernel_size`` wide (3).

``statistics`` picks ``mu, sigma``: ``"instance"`` (per sample and channel, nnU-Net's InstanceNorm) or
``"batch"`` (per channel over the batch with running estimates, the paper's BatchNorm). The ordinary branch
holds its affine in ``weight`` / ``bias`` (and, for ``"batch"``, ``running_mean`` / ``running_var`` /
``num_batches_tracked``) under the same names as ``torch.nn.InstanceNormNd`` / ``BatchNormNd``, so the layer
drops into an nnU-Net network and loads that network's weights; the CateNorm branch lives under
``cond_shared`` / ``cond_gamma`` / ``cond_beta``. Without a mask the layer *is* the plain layer
(``tests/core/test_catenorm.py`` checks equality with ``torch.nn.InstanceNorm2d/3d`` and ``BatchNorm``).

Deviations (also listed in ``documentation/methods/catenorm.md``):

1. :meth:`CateNorm.init_from_plain` (called by the trainer when stage two starts) zeroes the weights of
   ``cond_gamma`` / ``cond_beta`` and copies the ordinary affine into their biases, so the CateNorm pass
   starts as the warmed-up network's function; the paper initialises the branch randomly.
2. Masks are resized with area averaging (soft class fractions per feature voxel); the paper does not say
   how (SPADE uses nearest). ``mask_mode="nearest"`` is available.

Class-wise alignment (appendix A, Eqs. 6-12): :func:`classwise_statistics` per case,
:func:`aligned_statistics` per source domain against a target domain, :func:`align_case` per image.

BibTeX::

    @inproceedings{xiao2022catenorm,
      title={CateNorm: Categorical Normalization for Robust Medical Image Segmentation},
      author={Xiao, Junfei and Yu, Lequan and Zhou, Zongwei and Bai, Yutong and Xing, Lei and Yuille, Alan
              and Zhou, Yuyin},
      booktitle={Domain Adaptation and Representation Transfer (DART)}, pages={129--146}, year={2022}}

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> layer = CateNorm(8, num_classes=3, spatial_dims=2)
    >>> x = torch.randn(2, 8, 16, 16)
    >>> plain = torch.nn.InstanceNorm2d(8, affine=True)
    >>> torch.allclose(layer(x), plain(x), atol=1e-6)
    True
    >>> mask = torch.softmax(torch.randn(2, 3, 64, 64), dim=1)
    >>> layer(x, mask).shape
    torch.Size([2, 8, 16, 16])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Statistics = Literal["instance", "batch"]
MaskMode = Literal["area", "nearest"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_FCONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def resize_mask(mask: torch.Tensor, size: Sequence[int], mode: MaskMode = "area") -> torch.Tensor:
    """Resize a soft class mask ``(N, K, *spatial)`` to the spatial ``size`` of a feature map.

    Args:
        mask: class probabilities (or one-hot), any float dtype.
        size: target spatial size (as many entries as ``mask`` has spatial axes).
        mode: ``"area"`` averages (class fractions per target voxel); ``"nearest"`` picks.

    Returns:
        ``mask`` unchanged if the size already matches, else the resized mask.

    Raises:
        ValueError: ``size`` has the wrong length or ``mode`` is unknown.
    """
    size = tuple(int(s) for s in size)
    if len(size) != mask.ndim - 2:
        raise ValueError(f"resize_mask: size must have {mask.ndim - 2} entries for a mask of shape "
                         f"{tuple(mask.shape)}, got {size}")
    if mode not in ("area", "nearest"):
        raise ValueError(f"resize_mask: mode must be 'area' or 'nearest', got {mode!r}")
    if tuple(mask.shape[2:]) == size:
        return mask
    return F.interpolate(mask, size=size, mode=mode)


class CateNorm(nn.Module):
    """Normalization with an ordinary per-channel affine and a class-mask-conditioned spatial affine.

    Args:
        num_features: channels ``C`` of the input.
        eps: added to the variance.
        affine: learn the ordinary branch's ``weight`` / ``bias`` (as ``torch.nn.InstanceNormNd``).
        num_classes: channels ``K`` of the conditioning mask.
        spatial_dims: 1, 2 or 3.
        hidden_channels: output channels of the first conditioning conv (default ``max(1, C // 2)``, paper).
        kernel_size: width of the conditioning convs (paper: 3).
        statistics: ``"instance"`` or ``"batch"`` (see module docstring).
        momentum: running-average momentum for ``statistics="batch"``.
        mask_mode: how masks are resized to the feature map (:func:`resize_mask`).

    Shape:
        ``x``: ``(N, C, *spatial)``; ``mask``: ``(N, K, *mask_spatial)``; output like ``x``.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, *, num_classes: int,
                 spatial_dims: int, hidden_channels: int | None = None, kernel_size: int = 3,
                 statistics: Statistics = "instance", momentum: float = 0.1, mask_mode: MaskMode = "area"):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"CateNorm: num_features must be >= 1, got {num_features!r}")
        if num_classes < 1:
            raise ValueError(f"CateNorm: num_classes must be >= 1, got {num_classes!r}")
        if spatial_dims not in _CONV:
            raise ValueError(f"CateNorm: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        if statistics not in ("instance", "batch"):
            raise ValueError(f"CateNorm: statistics must be 'instance' or 'batch', got {statistics!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CateNorm: kernel_size must be odd and >= 1, got {kernel_size!r}")
        if mask_mode not in ("area", "nearest"):
            raise ValueError(f"CateNorm: mask_mode must be 'area' or 'nearest', got {mask_mode!r}")
        hidden = max(1, num_features // 2) if hidden_channels is None else int(hidden_channels)
        if hidden < 1:
            raise ValueError(f"CateNorm: hidden_channels must be >= 1, got {hidden_channels!r}")
        self.num_features, self.eps, self.affine = num_features, eps, affine
        self.num_classes, self.spatial_dims, self.statistics = num_classes, spatial_dims, statistics
        self.momentum, self.mask_mode = momentum, mask_mode
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if statistics == "batch":
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        conv = _CONV[spatial_dims]
        pad = kernel_size // 2
        self.cond_shared = conv(num_classes, hidden, kernel_size, padding=pad)
        self.cond_gamma = conv(hidden, num_features, kernel_size, padding=pad)
        self.cond_beta = conv(hidden, num_features, kernel_size, padding=pad)
        self.condition: torch.Tensor | None = None  # set by :meth:`conditioned_on`; never saved

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, affine={self.affine}, num_classes={self.num_classes}, "
                f"statistics={self.statistics!r}, mask_mode={self.mask_mode!r}")

    def _normalize(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"CateNorm: expected a {self.spatial_dims + 2}-D input (N, C, *spatial), got shape "
                             f"{tuple(x.shape)}")
        if self.statistics == "instance":
            return F.instance_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias, self.training, self.momentum,
                            self.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ordinary branch without a mask; CateNorm branch with ``mask`` (or the one set by :meth:`conditioned_on`)."""
        mask = self.condition if mask is None else mask
        if mask is None:
            return self._normalize(x, self.weight, self.bias)
        if mask.shape[0] != x.shape[0] or mask.shape[1] != self.num_classes or mask.ndim != x.ndim:
            raise ValueError(f"CateNorm: mask must have shape (N={x.shape[0]}, K={self.num_classes}, "
                             f"*{self.spatial_dims} spatial), got {tuple(mask.shape)}")
        x_hat = self._normalize(x, None, None)
        m = resize_mask(mask.to(x.dtype), x.shape[2:], self.mask_mode)
        hidden = F.relu(self.cond_shared(m))
        # gamma and beta in one convolution (the same maths as two; one kernel call less per layer and pass)
        weight = torch.cat([self.cond_gamma.weight, self.cond_beta.weight])
        bias = torch.cat([self.cond_gamma.bias, self.cond_beta.bias])
        gamma, beta = _FCONV[self.spatial_dims](hidden, weight, bias, padding=self.cond_gamma.padding).chunk(2, dim=1)
        return torch.addcmul(beta, x_hat, gamma)

    @contextmanager
    def conditioned_on(self, mask: torch.Tensor) -> Iterator[CateNorm]:
        """Within the block, ``forward(x)`` uses the CateNorm branch with ``mask`` (for use inside nn.Sequential)."""
        previous, self.condition = self.condition, mask
        try:
            yield self
        finally:
            self.condition = previous

    @torch.no_grad()
    def init_from_plain(self) -> None:
        """Make the CateNorm branch equal the ordinary branch for every mask (see deviation 1)."""
        for conv, source, default in ((self.cond_gamma, self.weight, 1.0), (self.cond_beta, self.bias, 0.0)):
            conv.weight.zero_()
            if source is None:
                conv.bias.fill_(default)
            else:
                conv.bias.copy_(source)

    def conditioning_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the CateNorm branch (the paper's theta_NC)."""
        for conv in (self.cond_shared, self.cond_gamma, self.cond_beta):
            yield from conv.parameters()


# ----------------------------------------------------------------------------------------------------------
# Class-wise intensity alignment (paper appendix A)
# ----------------------------------------------------------------------------------------------------------

def classwise_statistics(image: np.ndarray, label: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mean and standard deviation of ``image`` inside each class region (paper Eqs. 6-7).

    Args:
        image: intensities, any shape.
        label: integer label map of the same shape.
        classes: label values to measure.

    Returns:
        ``(len(classes), 2)`` float64 array of ``(mean, std)``; NaN for a class absent from ``label``.

    Raises:
        ValueError: shapes differ.
    """
    if image.shape != label.shape:
        raise ValueError(f"classwise_statistics: image shape {image.shape} != label shape {label.shape}")
    out = np.full((len(classes), 2), np.nan)
    for i, c in enumerate(classes):
        values = image[label == c].astype(np.float64)
        if values.size:
            out[i] = values.mean(), values.std()
    return out


def _standardize_across_cases(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Eqs. 10-11 for one statistic: map each case's value from its domain's spread onto the target's.

    ``values``: ``(M_i, K)``; ``target``: ``(M_T, K)``; NaN entries (absent classes) are ignored. Where the
    source domain has no spread (one case, or identical values), the case gets the target's mean.
    """
    src_mean, src_std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    tgt_mean, tgt_std = np.nanmean(target, axis=0), np.nanstd(target, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(src_std > 0, (values - src_mean) / np.where(src_std > 0, src_std, 1.0), 0.0)
    return z * tgt_std + tgt_mean


def aligned_statistics(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """New per-case class statistics of one source domain, aligned to the target domain (Eqs. 8-11).

    Args:
        source: ``(M_i, K, 2)`` per-case ``(mean, std)`` of the source domain (:func:`classwise_statistics`).
        target: ``(M_T, K, 2)`` the same for the target domain.

    Returns:
        ``(M_i, K, 2)`` aligned ``(mean, std)``; standard deviations are clipped at 0.

    Raises:
        ValueError: the arrays do not have shape ``(M, K, 2)`` with the same ``K``.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if source.ndim != 3 or target.ndim != 3 or source.shape[1:] != target.shape[1:] or source.shape[2] != 2:
        raise ValueError(f"aligned_statistics: expected (M, K, 2) arrays with the same K, got {source.shape} "
                         f"and {target.shape}")
    out = np.empty_like(source)
    out[..., 0] = _standardize_across_cases(source[..., 0], target[..., 0])
    out[..., 1] = np.clip(_standardize_across_cases(source[..., 1], target[..., 1]), 0.0, None)
    return out


def align_case(image: np.ndarray, label: np.ndarray, classes: Sequence[int], stats: np.ndarray,
               new_stats: np.ndarray) -> np.ndarray:
    """Move each class region of ``image`` from ``stats`` to ``new_stats`` (Eq. 12), as float32.

    ``x_new = (x - mu) / sigma * sigma_new + mu_new`` inside class ``c``; a region with ``sigma == 0`` is only
    shifted to ``mu_new``; voxels of labels not in ``classes`` and absent classes are left unchanged.
    """
    out = image.astype(np.float32, copy=True)
    for i, c in enumerate(classes):
        (mu, sigma), (new_mu, new_sigma) = stats[i], new_stats[i]
        if not np.isfinite(mu) or not np.isfinite(new_mu):
            continue
        region = label == c
        scale = new_sigma / sigma if sigma > 0 and np.isfinite(new_sigma) else 0.0
        out[region] = ((image[region] - mu) * scale + new_mu).astype(np.float32)
    return out
