"""ODEx: out-of-distribution detection for expansion-based task-agnostic continual learning.

Gonzalez, Ranem, Pinto dos Santos, Othman, Mukhopadhyay: "Task-agnostic continual hippocampus
segmentation for smooth population shifts", DART 2022 (MICCAI workshop). Original code:
https://github.com/MECLabTUDA/Lifelong-nnUNet (not copied; reimplemented from the paper).

The pieces, all pure torch (float64 for the statistics):

- **Features** ``z`` (:func:`norm_input_features`): the paper takes ``z`` from the first batch-norm
  layer ``BN_1``. nnU-Net uses InstanceNorm, whose *output* is zero-mean unit-variance per channel by
  construction and so carries no domain information. We therefore take the layer's **input** (the first
  convolution's output) and summarise each sample by the per-channel mean and log standard deviation over
  all voxels: ``z = [mean_c, log(std_c + eps)]_c``, dimension ``2C`` (``C`` = 32 for nnU-Net's first
  stage, so ``z`` has 64 entries). These are exactly the statistics a batch-norm layer would normalise away.
- **Gaussians** ``N(mu, Sigma)`` of ``z`` over a stage's training data, accumulated as sufficient
  statistics (:class:`GaussianStats`: count, sum, sum of outer products), so that DDP ranks add them with
  one all-reduce. ``Sigma`` is the Oracle Approximating Shrinkage (OAS, Chen et al. 2010) estimate of the
  empirical covariance plus a small ridge: positive definite even with fewer samples than dimensions.
- **Distance**: Mahalanobis distance through a Cholesky factor (:func:`mahalanobis`), summed over a
  model's history of Gaussians (:func:`summed_distance`, the paper's Eq. 4).
- **Normalisation and threshold** (:class:`Calibration`, :func:`history_score`, :func:`decide`): when a
  Gaussian is added to a history we record the minimum, maximum and mean of the in-distribution distances
  (fresh samples of its stage to it). A distance ``d`` is normalised "between the minimum and doubled
  maximum in-distribution values", ``(d - d_min) / (2 d_max - d_min)``, per Gaussian; a model's score is the
  sum over its history divided by the history length, and the threshold is ``xi = 2 mu`` with ``mu`` the
  normalised mean in-distribution distance (averaged over the history). **Deviation:** the paper compares
  raw summed distances. A new model inherits its parent's history plus one Gaussian, so its raw sum is
  always larger than its parent's and it would never be selected; per-Gaussian normalisation and the
  division by the history length put models with different histories on one scale.

>>> torch.manual_seed(0) and None
>>> z = torch.randn(50, 4, dtype=torch.float64)
>>> stats = GaussianStats(4); stats.update(z)
>>> mean, chol = stats.gaussian()
>>> bool(mahalanobis(mean[None], mean, chol)[0] < 1e-6)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

ReduceOp = Literal["sum", "min", "max"]
#: ``reduce(tensor, op)`` combines ``tensor`` across processes (in place or not) and returns the result.
ReduceFn = Callable[[torch.Tensor, ReduceOp], torch.Tensor]


def no_reduce(tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
    """The single-process reduction (identity)."""
    return tensor


def distributed_reduce(tensor: torch.Tensor, op: ReduceOp) -> torch.Tensor:
    """All-reduce over the default ``torch.distributed`` process group (identity when not initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    dist.all_reduce(tensor, op=ops[op])
    return tensor


def norm_input_features(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample features of a normalisation layer's input: per-channel mean and log std.

    Args:
        x: the input of the first normalisation layer.
        eps: added to the standard deviation before the log.

    Shape:
        x: ``(B, C, *spatial)`` with at least one spatial axis. Returns ``(B, 2C)`` float64:
        ``[mean_1..mean_C, logstd_1..logstd_C]``.

    Raises:
        ValueError: ``x`` has fewer than 3 dimensions.
    """
    if x.ndim < 3:
        raise ValueError(f"x must be (B, C, *spatial) with at least one spatial axis, got shape {tuple(x.shape)}")
    # two passes in (at least) float32: exact enough (torch's mean sums pairwise) and ~10x faster on CPU than
    # torch.std/var_mean, which matters because every expert's features are computed for every test patch
    flat = x.detach().flatten(2)
    flat = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
    mean = flat.mean(dim=2, keepdim=True)
    std = (flat - mean).square().mean(dim=2).sqrt()
    return torch.cat([mean.squeeze(2), torch.log(std + eps)], dim=1).to(torch.float64)


def oas_shrinkage(empirical_cov: torch.Tensor, n: float) -> torch.Tensor:
    """OAS estimate from the maximum-likelihood covariance ``S`` of ``n`` samples (as scikit-learn's ``OAS``).

    ``Sigma = (1 - rho) S + rho (tr S / p) I`` with
    ``rho = min(1, (mean(S^2) + (tr S / p)^2) / ((n + 1)(mean(S^2) - (tr S / p)^2 / p)))``.
    """
    p = empirical_cov.shape[-1]
    mu = torch.trace(empirical_cov) / p
    alpha = (empirical_cov ** 2).mean()
    num = alpha + mu ** 2
    den = (n + 1.0) * (alpha - mu ** 2 / p)
    rho = 1.0 if float(den) <= 0 else min(float(num / den), 1.0)
    eye = torch.eye(p, dtype=empirical_cov.dtype, device=empirical_cov.device)
    return (1.0 - rho) * empirical_cov + rho * mu * eye


class GaussianStats:
    """Sufficient statistics of feature vectors, reducible across processes.

    Args:
        dim: feature dimension.
        device: where the accumulators live.

    Attributes:
        count: number of samples (float64 scalar tensor).
        total: sum of samples ``(dim,)``.
        outer: sum of outer products ``(dim, dim)``.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, z: torch.Tensor) -> None:
        """Add samples ``z`` of shape ``(N, dim)``."""
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must be (N, {self.dim}), got shape {tuple(z.shape)}")
        z = z.detach().to(self.total.device, torch.float64)
        self.count += z.shape[0]
        self.total += z.sum(0)
        self.outer += z.T @ z

    def all_reduce(self, reduce: ReduceFn) -> None:
        """Sum the statistics over processes (``reduce(t, "sum")`` on one packed tensor)."""
        packed = torch.cat([self.count.reshape(1), self.total, self.outer.flatten()])
        packed = reduce(packed, "sum")
        self.count = packed[0].clone()
        self.total = packed[1:1 + self.dim].clone()
        self.outer = packed[1 + self.dim:].reshape(self.dim, self.dim).clone()

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def empirical_covariance(self) -> torch.Tensor:
        """Maximum-likelihood covariance ``1/N sum (z - mu)(z - mu)^T`` (the paper's Eq. 3), symmetrised."""
        mu = self.mean
        cov = self.outer / self.count - torch.outer(mu, mu)
        return 0.5 * (cov + cov.T)

    def gaussian(self, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and lower Cholesky factor of the OAS covariance plus a ridge.

        Args:
            ridge: added to the diagonal, relative to the mean variance (absolute 1e-12 when that is 0).

        Returns:
            ``(mean (dim,), cholesky (dim, dim))``.

        Raises:
            ValueError: no sample was added.
        """
        if float(self.count) < 1:
            raise ValueError("no samples: call update() with features before estimating a Gaussian")
        cov = oas_shrinkage(self.empirical_covariance, float(self.count))
        scale = float(torch.diagonal(cov).mean().clamp_min(0.0))
        cov = cov + max(ridge * scale, 1e-12) * torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        return self.mean.clone(), torch.linalg.cholesky(cov)


def mahalanobis(z: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance ``sqrt((z - mu)^T Sigma^-1 (z - mu))`` with ``Sigma = L L^T``.

    Shape:
        z: ``(N, D)``; mean: ``(D,)``; chol: ``(D, D)`` lower triangular. Returns ``(N,)`` float64.
    """
    diff = (z.to(torch.float64) - mean.to(z.device, torch.float64)).T
    solved = torch.linalg.solve_triangular(chol.to(z.device, torch.float64), diff, upper=False)
    return solved.pow(2).sum(0).sqrt()


def summed_distance(z: torch.Tensor, means: torch.Tensor, chols: torch.Tensor) -> torch.Tensor:
    """Sum of Mahalanobis distances of each ``z`` to every Gaussian of a history (paper, Eq. 4).

    Shape:
        z: ``(N, D)``; means: ``(H, D)``; chols: ``(H, D, D)``. Returns ``(N,)``; ``H = 0`` raises.
    """
    if means.shape[0] == 0:
        raise ValueError("the history is empty: a model gets its first Gaussian at the end of its first stage")
    return torch.stack([mahalanobis(z, m, c) for m, c in zip(means, chols)]).sum(0)


@dataclass
class Calibration:
    """In-distribution summed distances of one model: min, max and mean (reducible over processes)."""

    minimum: float = math.inf
    maximum: float = -math.inf
    total: float = 0.0
    count: float = 0.0

    def update(self, distances: torch.Tensor) -> None:
        if distances.numel():
            self.minimum = min(self.minimum, float(distances.min()))
            self.maximum = max(self.maximum, float(distances.max()))
            self.total += float(distances.sum())
            self.count += distances.numel()

    def all_reduce(self, reduce: ReduceFn, device: torch.device | str = "cpu") -> None:
        """Combine over processes: ``total`` and ``count`` summed, ``minimum`` / ``maximum`` their min / max.

        Args:
            reduce: the reduction (:func:`distributed_reduce` under DDP).
            device: where the tensors handed to ``reduce`` live: a device the process group's backend reduces
                (NCCL, nnU-Net's multi-GPU backend, takes CUDA tensors only: pass the trainer's device).
        """
        def reduced(values: list[float], op: ReduceOp) -> torch.Tensor:
            return reduce(torch.tensor(values, dtype=torch.float64, device=device), op).cpu()

        sums = reduced([self.total, self.count], "sum")
        self.total, self.count = float(sums[0]), float(sums[1])
        self.minimum = float(reduced([self.minimum], "min")[0])
        self.maximum = float(reduced([self.maximum], "max")[0])

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def as_tensor(self) -> torch.Tensor:
        """``[min, max, mean]`` (float64), the form stored in a network buffer."""
        return torch.tensor([self.minimum, self.maximum, self.mean], dtype=torch.float64)


def normalise(distance: torch.Tensor | float, calibration: torch.Tensor) -> torch.Tensor:
    """``(d - d_min) / (2 d_max - d_min)`` with ``calibration = [d_min, d_max, d_mean]`` (last axis).

    0 at the smallest in-distribution distance, 1 at twice the largest; the denominator is kept >= 1e-12.
    """
    d_min, d_max = calibration[..., 0], calibration[..., 1]
    return (torch.as_tensor(distance, dtype=torch.float64) - d_min) / (2 * d_max - d_min).clamp_min(1e-12)


def history_distances(z: torch.Tensor, means: torch.Tensor, chols: torch.Tensor,
                      calibrations: torch.Tensor) -> torch.Tensor:
    """Normalised Mahalanobis distance of every sample to every Gaussian of a history (:func:`normalise`).

    Shape:
        z: ``(N, D)``; means: ``(H, D)``; chols: ``(H, D, D)``; calibrations: ``(H, 3)``. Returns ``(N, H)``.
    """
    if means.shape[0] == 0:
        return torch.zeros(z.shape[0], 0, dtype=torch.float64, device=z.device)
    return torch.stack([normalise(mahalanobis(z, m, c), cal.to(z.device))
                        for m, c, cal in zip(means, chols, calibrations)], dim=1)


def history_score(z: torch.Tensor, means: torch.Tensor, chols: torch.Tensor,
                  calibrations: torch.Tensor) -> torch.Tensor:
    """A model's distance to ``z``: its history's summed normalised Mahalanobis distances over the length.

    Each Gaussian ``h`` normalises its own distance with its in-distribution calibration (:func:`normalise`);
    the normalised distances (:func:`history_distances`) are summed over the history (the paper's Eq. 4) and
    divided by the history length so that models with histories of different lengths compare on one scale.

    Shape:
        z: ``(N, D)``; means: ``(H, D)``; chols: ``(H, D, D)``; calibrations: ``(H, 3)``. Returns ``(N,)``;
        ``inf`` when ``H = 0``.
    """
    if means.shape[0] == 0:
        return torch.full((z.shape[0],), math.inf, dtype=torch.float64, device=z.device)
    return history_distances(z, means, chols, calibrations).sum(1) / means.shape[0]


def history_threshold(calibrations: torch.Tensor) -> torch.Tensor:
    """The paper's ``xi = 2 mu``: twice the normalised mean in-distribution distance, averaged over the history.

    Shape:
        calibrations: ``(H, 3)``. Returns a scalar; ``inf`` when ``H = 0``.
    """
    if calibrations.shape[0] == 0:
        return torch.tensor(math.inf, dtype=torch.float64)
    return 2 * normalise(calibrations[:, 2], calibrations).mean()


@dataclass(frozen=True)
class Decision:
    """Outcome of the expansion rule for one stage (or the routing of one input).

    Attributes:
        best: index of the model with the smallest score.
        scores: every model's score (:func:`history_score`; ``inf`` for a model without history).
        xi: threshold applied to the best model (``-inf`` forces expansion).
        expand: True when ``scores[best] >= xi``: a new model starts from ``best``.
    """

    best: int
    scores: tuple[float, ...]
    xi: float
    expand: bool


def decide(scores: torch.Tensor, thresholds: torch.Tensor, xi: float | None = None) -> Decision:
    """The ODEx expansion rule (pure function).

    Args:
        scores: ``(M,)`` each model's (mean) score on the new data (``inf``/``nan``: no history).
        thresholds: ``(M,)`` each model's ``xi = 2 mu`` (:func:`history_threshold`).
        xi: fixed threshold instead of the per-model one; ``-inf`` expands at every stage (the paper's
            ``ODEx -inf xi`` ablation).

    Returns:
        A :class:`Decision`. When no model has a history there is nothing to compare with: ``best`` is 0 and
        ``expand`` is False (unless ``xi`` is ``-inf``).

    Raises:
        ValueError: shapes disagree or there is no model.
    """
    if scores.ndim != 1 or scores.numel() == 0 or thresholds.shape != scores.shape:
        raise ValueError(f"scores and thresholds must both be (M,) with M >= 1, got {tuple(scores.shape)} and "
                         f"{tuple(thresholds.shape)}")
    values = [float(v) if math.isfinite(float(v)) else math.inf for v in scores]
    best = min(range(len(values)), key=lambda i: values[i])
    limit = float(thresholds[best]) if xi is None else float(xi)
    if math.isfinite(values[best]):
        expand = values[best] >= limit
    else:
        expand = xi is not None and xi == -math.inf
    return Decision(best, tuple(values), limit, bool(expand))
