"""GIN and GIN-IPA: random shallow-network intensity augmentation and pseudo-correlation blending.

Paper: C. Ouyang, C. Chen, S. Li, Z. Li, C. Qin, W. Bai, D. Rueckert, "Causality-inspired Single-source Domain
Generalization for Medical Image Segmentation", IEEE TMI 2022 (arXiv:2111.12525). Reimplemented here; the
authors' code (github.com/cheng-01037/Causality-Medical-Image-Domain-Generalization) was read for its settings
only, none of it is copied.

**GIN** (global intensity non-linear augmentation). A shallow convolutional network ``g`` with freshly drawn
random weights maps a sample ``x`` (``C`` channels) to ``C`` channels::

    h_0 = x,   h_l = LeakyReLU(W_l * h_{l-1} + b_l)  (l < L),   g(x) = W_L * h_{L-1} + b_L

with ``L = 4`` layers, 2 intermediate channels, every kernel ``k x k`` (``k x k x k`` in 3D) with ``k`` drawn
from ``{1, 3}`` per layer (shared by the batch), weights and biases ``~ N(0, 1)`` drawn per sample, LeakyReLU
slope 0.01, zero padding (same size): the settings of the authors' code. The channels are transformed
jointly (the first layer sees all ``C`` input channels, the last returns ``C``), as the authors' code does
with its 3-channel input. The output is mixed with the input by ``alpha ~ U(0, 1)`` per sample and
re-normalised::

    m = alpha * g(x) + (1 - alpha) * x
    "frobenius":   out = m * ||x||_F / ||m||_F                       (the paper; per sample over all channels)
    "standardize": out = (m - mean(m)) / std(m) * std(x) + mean(x)  (per sample and channel; our default)

``"standardize"`` keeps each sample's per-channel mean and standard deviation, so nnU-Net's z-scored inputs
stay z-scored. The Frobenius match is a positive scale per sample, which standardisation removes again, so
the default equals "the paper's Frobenius match, then per-channel z-scoring back to the input's statistics".
With ``alpha = 0`` both return ``x`` (up to rounding): zero strength is the identity.

**IPA** (interventional pseudo-correlation augmentation). Two GIN views ``g_1(x)``, ``g_2(x)`` of the same
sample are blended with a smooth random map ``b`` in ``[0, 1]``::

    view_a = b * g_1(x) + (1 - b) * g_2(x),    view_b = (1 - b) * g_1(x) + b * g_2(x)

so neighbouring structures get independently resampled appearances. ``b`` is a uniform cubic B-spline over
a coarse grid of ``N(0, 1)`` control points (``grid_cells`` cells per axis, i.e. a control-point spacing of
1/4 of the patch side by default), evaluated at every voxel and min-max rescaled per sample to ``[0, 1]``.
With ``"standardize"`` the two views are re-standardised to the input's statistics too.

**Consistency.** The segmentation network's predictions on the two views are pulled together by a KL term
(:func:`view_consistency`): with softmax outputs ``p_a``, ``p_b`` and their mean ``p = (p_a + p_b) / 2``::

    L_cons = 1/2 * sum_{v in {a, b}} mean_{n, k, voxels} [ p_k * (log p_k - log p_{v,k}) ]

i.e. ``KL(p || p_v)`` per voxel averaged over the ``K`` classes as well (``torch.nn.KLDivLoss`` with its
element-wise ``"mean"`` reduction, which the authors' code uses with weight 10), gradients through ``p`` too.

Randomness is drawn only in :func:`sample_gin_parameters` / :func:`sample_ipa_parameters` (from one
``torch.Generator``); :func:`apply_gin` / :func:`apply_ipa` are deterministic. :func:`random_gin` and
:func:`random_ipa` do both under ``torch.no_grad()``: no gradient flows through the augmentation.

Example:
    >>> import torch
    >>> x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> y = random_gin(x, generator=torch.Generator().manual_seed(1))
    >>> y.shape == x.shape, bool(torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5))
    (True, True)
    >>> bool(torch.equal(y, random_gin(x, generator=torch.Generator().manual_seed(1))))
    True
    >>> identity = GINConfig(alpha_range=(0.0, 0.0))
    >>> bool(torch.allclose(random_gin(x, identity, torch.Generator().manual_seed(1)), x, atol=1e-5))
    True
    >>> view_a, view_b = random_ipa(x, generator=torch.Generator().manual_seed(2))
    >>> view_a.shape == view_b.shape == x.shape
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from nnunet_ext.core.style_curriculum import style_fusion

__all__ = [
    "GINConfig",
    "GINParameters",
    "IPAParameters",
    "apply_gin",
    "apply_ipa",
    "bspline_upsample",
    "ipa_blend",
    "pseudo_correlation_map",
    "random_gin",
    "random_ipa",
    "sample_control_points",
    "sample_gin_parameters",
    "sample_ipa_parameters",
    "view_consistency",
]

Normalization = Literal["standardize", "frobenius"]
_EPS = 1e-5


@dataclass(frozen=True)
class GINConfig:
    """Settings of one GIN network (defaults: the authors' code, with our ``"standardize"`` normalization).

    Args:
        n_layers: convolutions ``L`` (>= 1); LeakyReLU after all but the last.
        interm_channels: channels between the layers.
        kernel_sizes: odd kernel sizes, one drawn per layer and call.
        negative_slope: LeakyReLU slope (torch's default 0.01, as the authors' code).
        alpha_range: ``(min, max)`` of the mixing coefficient ``alpha ~ U(min, max)``, within ``[0, 1]``;
            ``(0, 0)`` is the identity.
        normalization: ``"standardize"`` (default: per sample and channel back to the input's mean and std) or
            ``"frobenius"`` (the paper: the input's Frobenius norm per sample).

    Raises:
        ValueError: a setting out of range (the message names it, the value received and what is allowed).
    """

    n_layers: int = 4
    interm_channels: int = 2
    kernel_sizes: tuple[int, ...] = (1, 3)
    negative_slope: float = 0.01
    alpha_range: tuple[float, float] = (0.0, 1.0)
    normalization: Normalization = "standardize"

    def __post_init__(self):
        for name in ("n_layers", "interm_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GINConfig.{name} must be an int >= 1, got {value!r}")
        ks = tuple(self.kernel_sizes)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"GINConfig.kernel_sizes must be a non-empty tuple of odd ints >= 1 (e.g. (1, 3)), "
                             f"got {self.kernel_sizes!r}")
        object.__setattr__(self, "kernel_sizes", ks)
        if not (math.isfinite(self.negative_slope) and self.negative_slope >= 0):
            raise ValueError(f"GINConfig.negative_slope must be a finite number >= 0, got {self.negative_slope!r}")
        lo, hi = (float(v) for v in self.alpha_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"GINConfig.alpha_range must be (min, max) with 0 <= min <= max <= 1, "
                             f"got {self.alpha_range!r}")
        object.__setattr__(self, "alpha_range", (lo, hi))
        if self.normalization not in ("standardize", "frobenius"):
            raise ValueError(f"GINConfig.normalization must be 'standardize' or 'frobenius', "
                             f"got {self.normalization!r}")


@dataclass(frozen=True)
class GINParameters:
    """The random draw of one GIN call for a batch.

    Attributes:
        weights: per layer ``(B * out_channels, in_channels, *[k] * spatial_dims)`` (sample-major).
        biases: per layer ``(B * out_channels,)``.
        alpha: ``(B,)`` mixing coefficients.
    """

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    alpha: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.alpha.shape[0])


@dataclass(frozen=True)
class IPAParameters:
    """The random draw of one IPA call: two GIN networks and the blending map's control points.

    Attributes:
        gin_1: first GIN view.
        gin_2: second GIN view.
        control_points: ``(B, 1, *[grid_cells + 3])`` B-spline coefficients of the blending map.
    """

    gin_1: GINParameters
    gin_2: GINParameters
    control_points: torch.Tensor


def _check_image(x: torch.Tensor, name: str = "x") -> int:
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, C, H, W) or (B, C, D, H, W) tensor, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.ndim - 2


def _check_shape(batch_size: int, channels: int, spatial_dims: int) -> None:
    for name, value in (("batch_size", batch_size), ("channels", channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _normal(shape: Sequence[int], generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator,
                       device=generator.device if generator is not None else None).to(device, dtype)


def sample_gin_parameters(batch_size: int, channels: int, spatial_dims: int, config: GINConfig = GINConfig(),
                          generator: torch.Generator | None = None, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> GINParameters:
    """Draw the weights, biases, kernel sizes and ``alpha`` of one GIN call (the only random step).

    Args:
        batch_size: samples ``B`` (each gets its own network and ``alpha``).
        channels: input channels ``C`` (= output channels).
        spatial_dims: 2 or 3.
        config: network settings.
        generator: source of all random numbers (drawn on its device, then moved); None: torch's global one.
        device: device of the returned tensors (None: the generator's, or CPU).
        dtype: their dtype.

    Returns:
        The parameters for :func:`apply_gin`.

    Raises:
        ValueError: a non-positive size or ``spatial_dims`` not 2 or 3.
    """
    _check_shape(batch_size, channels, spatial_dims)
    gen_device = generator.device if generator is not None else None
    choice = torch.randint(len(config.kernel_sizes), (config.n_layers,), generator=generator, device=gen_device)
    weights, biases = [], []
    in_ch = channels
    for layer in range(config.n_layers):
        out_ch = channels if layer == config.n_layers - 1 else config.interm_channels
        k = config.kernel_sizes[int(choice[layer])]
        weights.append(_normal((batch_size * out_ch, in_ch, *[k] * spatial_dims), generator, device, dtype))
        biases.append(_normal((batch_size * out_ch,), generator, device, dtype))
        in_ch = out_ch
    lo, hi = config.alpha_range
    u = torch.rand((batch_size,), generator=generator, device=gen_device).to(device, dtype)
    return GINParameters(tuple(weights), tuple(biases), lo + (hi - lo) * u)


def _per_sample_axes(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _standardize_like(y: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``y`` shifted and scaled so each sample and channel has ``reference``'s mean and (biased) std."""
    axes = tuple(range(2, y.ndim))
    mean_y, std_y = y.mean(axes, keepdim=True), y.std(axes, keepdim=True, correction=0)
    mean_r, std_r = reference.mean(axes, keepdim=True), reference.std(axes, keepdim=True, correction=0)
    return (y - mean_y) / std_y.clamp_min(_EPS) * std_r + mean_r


def _frobenius_like(y: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``y`` scaled so each sample has ``reference``'s Frobenius norm (over all channels and voxels)."""
    axes = _per_sample_axes(y)
    norm_y = torch.linalg.vector_norm(y, dim=axes, keepdim=True)
    norm_r = torch.linalg.vector_norm(reference, dim=axes, keepdim=True)
    return y * (norm_r / norm_y.clamp_min(_EPS))


def _renormalize(y: torch.Tensor, reference: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    return _standardize_like(y, reference) if normalization == "standardize" else _frobenius_like(y, reference)


def _check_params(x: torch.Tensor, params: GINParameters, spatial_dims: int) -> None:
    if params.batch_size != x.shape[0]:
        raise ValueError(f"params were drawn for a batch of {params.batch_size}, x has {x.shape[0]} samples; draw "
                         f"them with sample_gin_parameters(batch_size={x.shape[0]}, ...)")
    w0, w_last = params.weights[0], params.weights[-1]
    if w0.ndim - 2 != spatial_dims or w0.shape[1] != x.shape[1] or w_last.shape[0] != x.shape[0] * x.shape[1]:
        raise ValueError(f"params were drawn for {w0.shape[1]} channels and {w0.ndim - 2} spatial axes, x is "
                         f"{tuple(x.shape)}; draw them with channels={x.shape[1]}, spatial_dims={spatial_dims}")


def apply_gin(x: torch.Tensor, params: GINParameters, config: GINConfig = GINConfig()) -> torch.Tensor:
    """Deterministic GIN: the random network of ``params``, mixing by ``alpha`` and re-normalisation.

    Args:
        x: input batch.
        params: from :func:`sample_gin_parameters` for this batch size, channel count and dimensionality.
        config: uses ``negative_slope`` and ``normalization`` (the sizes are in ``params``).

    Shape:
        ``x``: ``(B, C, H, W)`` or ``(B, C, D, H, W)``; output: the same.

    Returns:
        The augmented batch (dtype and device of ``x``).

    Raises:
        ValueError: ``x`` not a floating-point 4D/5D tensor, or ``params`` drawn for another shape.
    """
    spatial_dims = _check_image(x)
    _check_params(x, params, spatial_dims)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    b, c = x.shape[:2]
    h = x.reshape(1, b * c, *x.shape[2:])
    last = len(params.weights) - 1
    for layer, (w, bias) in enumerate(zip(params.weights, params.biases)):
        w, bias = w.to(x.device, x.dtype), bias.to(x.device, x.dtype)
        h = conv(h, w, bias, padding=w.shape[-1] // 2, groups=b)
        if layer < last:
            h = F.leaky_relu(h, config.negative_slope)
    alpha = params.alpha.to(x.device, x.dtype).view(b, *[1] * (x.ndim - 1))
    mixed = alpha * h.reshape(x.shape) + (1.0 - alpha) * x
    return _renormalize(mixed, x, config.normalization)


@torch.no_grad()
def random_gin(x: torch.Tensor, config: GINConfig = GINConfig(),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw and apply one GIN per sample of ``x`` (no gradient). See :func:`apply_gin` for shapes."""
    spatial_dims = _check_image(x)
    params = sample_gin_parameters(x.shape[0], x.shape[1], spatial_dims, config, generator, x.device, x.dtype)
    return apply_gin(x, params, config)


def _cells(grid_cells: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    cells = (grid_cells,) * spatial_dims if isinstance(grid_cells, int) else tuple(grid_cells)
    if len(cells) != spatial_dims or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cells):
        raise ValueError(f"grid_cells must be an int >= 1 or {spatial_dims} such ints (one per spatial axis), "
                         f"got {grid_cells!r}")
    return cells


def sample_control_points(batch_size: int, spatial_dims: int, grid_cells: int | Sequence[int] = 4,
                          generator: torch.Generator | None = None, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``N(0, 1)`` B-spline coefficients of the blending maps: ``grid_cells + 3`` per axis (a cubic B-spline
    over ``grid_cells`` cells needs one more control point before and two after the cells).

    Returns:
        ``(B, 1, *[grid_cells_i + 3])``.

    Raises:
        ValueError: non-positive ``batch_size`` or ``grid_cells``, ``spatial_dims`` not 2 or 3.
    """
    _check_shape(batch_size, 1, spatial_dims)
    cells = _cells(grid_cells, spatial_dims)
    return _normal((batch_size, 1, *[k + 3 for k in cells]), generator, device, dtype)


def _cubic_bspline(u: torch.Tensor) -> torch.Tensor:
    """Centred uniform cubic B-spline ``B3(u)``, support ``(-2, 2)``."""
    a = u.abs()
    inner = (4.0 - 6.0 * a ** 2 + 3.0 * a ** 3) / 6.0
    outer = (2.0 - a).clamp_min(0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


def _bspline_matrix(n_out: int, cells: int, device, dtype) -> torch.Tensor:
    """``(n_out, cells + 3)``: voxel ``i`` sits at ``t = i * cells / (n_out - 1)`` on the knot axis; control
    point ``j`` is centred at ``j - 1``."""
    t = torch.linspace(0.0, float(cells), n_out, dtype=torch.float64) if n_out > 1 \
        else torch.zeros(1, dtype=torch.float64)
    centres = torch.arange(cells + 3, dtype=torch.float64) - 1.0
    return _cubic_bspline(t[:, None] - centres[None, :]).to(device, dtype)


def bspline_upsample(control_points: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Evaluate the uniform cubic B-spline with coefficients ``control_points`` at every voxel (separably).

    The spline is C2-smooth and reproduces linear functions: coefficients ``c_j = a * (j - 1) + d`` along an
    axis give ``a * t + d`` exactly, with ``t`` running linearly from 0 to ``cells`` across the axis.

    Args:
        control_points: ``(B, 1, *[cells_i + 3])``.
        spatial_shape: output size per spatial axis.

    Returns:
        ``(B, 1, *spatial_shape)``, unnormalised.

    Raises:
        ValueError: mismatched dimensionality, fewer than 4 control points on an axis, or a size < 1.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if control_points.ndim not in (4, 5) or control_points.shape[1] != 1 or len(shape) != control_points.ndim - 2:
        raise ValueError(f"control_points must be (B, 1, *grid) with one grid axis per entry of spatial_shape "
                         f"{shape}, got {tuple(control_points.shape)}")
    if any(n < 4 for n in control_points.shape[2:]) or any(s < 1 for s in shape):
        raise ValueError(f"each grid axis needs >= 4 control points and each output size must be >= 1, got grid "
                         f"{tuple(control_points.shape[2:])} and spatial_shape {shape}")
    out = control_points[:, 0]
    for axis, n_out in enumerate(shape):
        m = _bspline_matrix(n_out, control_points.shape[2 + axis] - 3, out.device, out.dtype)
        out = torch.movedim(torch.tensordot(out, m, dims=([1 + axis], [1])), -1, 1 + axis)
    return out.unsqueeze(1)


def pseudo_correlation_map(control_points: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """IPA's blending map ``b``: :func:`bspline_upsample`, min-max rescaled per sample to ``[0, 1]``.

    A constant spline (all coefficients equal, up to rounding) gives 0 everywhere.

    Returns:
        ``(B, 1, *spatial_shape)`` with values in ``[0, 1]``.
    """
    spline = bspline_upsample(control_points, spatial_shape)
    axes = _per_sample_axes(spline)
    lo, hi = spline.amin(axes, keepdim=True), spline.amax(axes, keepdim=True)
    span = hi - lo
    flat = span <= 1e-6 * (1.0 + torch.maximum(lo.abs(), hi.abs()))  # constant up to rounding
    return ((spline - lo) / torch.where(flat, torch.inf, span)).clamp(0.0, 1.0)


def ipa_blend(view_1: torch.Tensor, view_2: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``view_1 * b + view_2 * (1 - b)`` (``b``: ``(B, 1, *spatial)``, shared by the channels).

    Raises:
        ValueError: shapes that do not match.
    """
    if view_1.shape != view_2.shape or b.ndim != view_1.ndim or b.shape[0] != view_1.shape[0] \
            or b.shape[1] != 1 or b.shape[2:] != view_1.shape[2:]:
        raise ValueError(f"view_1 and view_2 must have one shape (B, C, *spatial) and b must be (B, 1, *spatial), "
                         f"got {tuple(view_1.shape)}, {tuple(view_2.shape)} and b {tuple(b.shape)}")
    return style_fusion(view_2, view_1, b)


def sample_ipa_parameters(batch_size: int, channels: int, spatial_dims: int, config: GINConfig = GINConfig(),
                          grid_cells: int | Sequence[int] = 4, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> IPAParameters:
    """Draw two GIN networks and the blending map's control points (arguments as
    :func:`sample_gin_parameters` and :func:`sample_control_points`)."""
    gin_1 = sample_gin_parameters(batch_size, channels, spatial_dims, config, generator, device, dtype)
    gin_2 = sample_gin_parameters(batch_size, channels, spatial_dims, config, generator, device, dtype)
    return IPAParameters(gin_1, gin_2, sample_control_points(batch_size, spatial_dims, grid_cells, generator,
                                                             device, dtype))


def apply_ipa(x: torch.Tensor, params: IPAParameters,
              config: GINConfig = GINConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic GIN-IPA: the two complementary blends of two GIN views.

    ``view_a = b * g_1(x) + (1 - b) * g_2(x)``, ``view_b = (1 - b) * g_1(x) + b * g_2(x)``, each re-standardised
    to ``x``'s per-sample, per-channel statistics with ``normalization="standardize"`` (unchanged with
    ``"frobenius"``, as the authors' code).

    Shape:
        ``x``: ``(B, C, H, W)`` or ``(B, C, D, H, W)``; each view: the same.

    Returns:
        ``(view_a, view_b)``.

    Raises:
        ValueError: as :func:`apply_gin`, or control points drawn for another batch size or dimensionality.
    """
    spatial_dims = _check_image(x)
    cp = params.control_points
    if cp.ndim - 2 != spatial_dims or cp.shape[0] != x.shape[0]:
        raise ValueError(f"control points {tuple(cp.shape)} do not fit x {tuple(x.shape)}; draw them with "
                         f"sample_ipa_parameters(batch_size={x.shape[0]}, spatial_dims={spatial_dims}, ...)")
    g_1, g_2 = apply_gin(x, params.gin_1, config), apply_gin(x, params.gin_2, config)
    b = pseudo_correlation_map(cp.to(x.device, x.dtype), x.shape[2:])
    view_a, view_b = ipa_blend(g_1, g_2, b), ipa_blend(g_2, g_1, b)
    if config.normalization == "standardize":
        view_a, view_b = _standardize_like(view_a, x), _standardize_like(view_b, x)
    return view_a, view_b


@torch.no_grad()
def random_ipa(x: torch.Tensor, config: GINConfig = GINConfig(), grid_cells: int | Sequence[int] = 4,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw and apply GIN-IPA for every sample of ``x`` (no gradient). See :func:`apply_ipa`."""
    spatial_dims = _check_image(x)
    params = sample_ipa_parameters(x.shape[0], x.shape[1], spatial_dims, config, grid_cells, generator,
                                   x.device, x.dtype)
    return apply_ipa(x, params, config)


def view_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL consistency between the class predictions on two views (formula in the module docstring).

    Computed in float32 (also under autocast). Zero when the two softmax outputs are equal.

    Args:
        logits_a: network output (logits) on view a.
        logits_b: network output on view b.

    Shape:
        ``(B, K, *spatial)`` each; output: scalar.

    Raises:
        ValueError: the two outputs differ in shape or have fewer than 2 axes.
    """
    if logits_a.shape != logits_b.shape or logits_a.ndim < 2:
        raise ValueError(f"logits_a and logits_b must have one shape (B, K, *spatial), got {tuple(logits_a.shape)} "
                         f"and {tuple(logits_b.shape)}")
    log_p = torch.stack([F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)])
    mean = log_p.exp().mean(0)
    kl = torch.xlogy(mean, mean) - mean * log_p  # (2, B, K, *spatial)
    return kl.mean()
