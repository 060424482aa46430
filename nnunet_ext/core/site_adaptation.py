"""Supervised site adaptation: mixed mini-batches (MMTL), optimizer continuation (OCTL), L2-SP.

Paper: S. Goodman, H. Greenspan, J. Goldberger, "Supervised Domain Adaptation Using Gradients Transfer for
Improved Medical Image Analysis", DART 2022 (MICCAI workshop), LNCS 13542, pp. 23-32. Baseline L2-SP: X. Li,
Y. Grandvalet, F. Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks", ICML
2018. Reimplemented from the papers; no code of the authors is used (their repository carries no licence).

A model trained on a source site is fine-tuned on a few labelled scans of a target site. The paper's two ways
of carrying the *gradient history* of the source training into the fine-tuning, and the L2-SP baseline:

* **MMTL** (Algorithm 1): every fine-tuning batch mixes source and target samples; the target share grows
  linearly over the fine-tuning, ``n_target = int(progress * batch_size)`` with ``progress = epoch /
  num_epochs`` in the paper. :func:`mmtl_target_count` takes the progress at iteration granularity (``step /
  total_steps``: the same ramp, but smooth when a short budget has few epochs); :func:`mix_batches` builds the
  batch from the first ``n_source`` samples of a source batch and the first ``n_target`` of a target batch.
* **OCTL** (Algorithms 2-3): the fine-tuning optimizer starts from the source optimizer's state instead of an
  empty one, with long memories (SGD momentum 0.99; Adam betas 0.99 / 0.999) and, for Adam, the step counter of
  the bias correction restarted at 100 (neither 0, which forgets the history at once, nor the last source
  step, which lets it dominate). :func:`continue_optimizer_state` moves the state over parameter by parameter.
  The paper's Algorithm 3 writes the first moment as ``M_t = beta_1 M_{t-1} + (1 - beta_1) g_t^2``; the
  square is a typo (the first moment averages ``g_t``, as in Adam and as ``torch.optim.Adam`` does).
* **L2-SP** (Li et al.): the fine-tuning loss adds ``alpha / 2 * ||theta - theta_source||^2``
  (:func:`l2sp_penalty`), pulling the weights towards the source model instead of towards 0 (weight decay).
* **AIVA** (unsupervised; S. Goodman, S. Kasten-Serlin, H. Greenspan, J. Goldberger, "Unsupervised Site Adaptation
  by Intra-site Variability Alignment", DART 2022): once per epoch the bottleneck features (BNS) of source and
  target images are embedded jointly (PCA, then 2-D t-SNE), each site is clustered into ``k`` clusters (k-means
  in the 2-D embedding), and the target clusters are matched to the source clusters by the Hungarian method on
  the distances of the 2-D centres (Eq. 1; :func:`fit_cluster_alignment`). Every training step then adds
  ``sum_i ||mean of the batch's target features in cluster i - nu_pi(i)||^2`` (Eq. 2;
  :func:`alignment_loss`), ``nu_j`` being the BNS mean of source cluster ``j``, to the source segmentation loss,
  weighted by ``lambda`` = 1 / the mean alignment loss of the first batches (the paper's unsupervised choice).

Example:
    >>> [mmtl_target_count(s, 100, 8) for s in (0, 12, 13, 50, 99)]
    [0, 0, 1, 4, 7]
    >>> import torch
    >>> src = {"data": torch.zeros(4, 1, 2, 2), "target": [torch.zeros(4, 1, 2, 2)], "keys": list("abcd")}
    >>> tgt = {"data": torch.ones(4, 1, 2, 2), "target": [torch.ones(4, 1, 2, 2)], "keys": list("wxyz")}
    >>> mixed = mix_batches(src, tgt, 1)
    >>> mixed["keys"], mixed["data"][:, 0, 0, 0].tolist()
    (['a', 'b', 'c', 'w'], [0.0, 0.0, 0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ADAM_RESTART_STEP", "OCTL_ADAM_BETAS", "OCTL_SGD_MOMENTUM", "ClusterAlignment", "alignment_loss",
           "continue_optimizer_state", "fit_cluster_alignment", "l2sp_penalty", "mix_batches", "mmtl_target_count"]

#: the paper's momentum for OCTL with SGD (nnU-Net's own SGD momentum is 0.99 too)
OCTL_SGD_MOMENTUM = 0.99
#: the paper's Adam betas for OCTL
OCTL_ADAM_BETAS = (0.99, 0.999)
#: the step the bias correction of Adam restarts from (the paper's "step 100")
ADAM_RESTART_STEP = 100


def mmtl_target_count(step: int, total_steps: int, batch_size: int) -> int:
    """MMTL's number of target samples in the batch of fine-tuning step ``step`` (0-based) of ``total_steps``.

    ``int(step / total_steps * batch_size)``: 0 at the first step, growing linearly, ``batch_size - 1`` at most at
    the last (the paper's Algorithm 1 at iteration granularity).

    Raises:
        ValueError: ``total_steps`` or ``batch_size`` < 1, or ``step`` outside ``[0, total_steps)``.
    """
    if total_steps < 1 or batch_size < 1:
        raise ValueError(f"mmtl_target_count: total_steps and batch_size must be >= 1, got {total_steps!r} and "
                         f"{batch_size!r}")
    if not 0 <= step < total_steps:
        raise ValueError(f"mmtl_target_count: step must be in [0, {total_steps}), got {step!r}")
    return int(step * batch_size // total_steps)


def _take(value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [v[:n] for v in value]
    return list(value)[:n]


def _join(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
        return [torch.cat([x, y]) for x, y in zip(a, b, strict=True)]
    return list(a) + list(b)


def mix_batches(source: Mapping[str, Any], target: Mapping[str, Any], n_target: int) -> dict[str, Any]:
    """One batch of the first ``B - n_target`` samples of ``source`` and the first ``n_target`` of ``target``.

    Args:
        source, target: nnU-Net training batches of the same batch size ``B``: ``"data"`` ``(B, C, *spatial)``,
            ``"target"`` a tensor or a list of tensors (deep supervision), ``"keys"`` the case names; every entry
            present in both is mixed.
        n_target: target samples in the result, ``0 <= n_target <= B``.

    Returns:
        A batch of size ``B``: source samples first, then target samples.

    Raises:
        ValueError: the batch sizes differ, or ``n_target`` is outside ``[0, B]``.
    """
    size = len(source["data"])
    if len(target["data"]) != size:
        raise ValueError(f"mix_batches: source and target batches must have the same size, got {size} and "
                         f"{len(target['data'])}")
    if not 0 <= n_target <= size:
        raise ValueError(f"mix_batches: n_target must be in [0, {size}], got {n_target!r}")
    return {k: _join(_take(source[k], size - n_target), _take(target[k], n_target))
            for k in source if k in target}


def l2sp_penalty(named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                 anchor: Mapping[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """``alpha / 2 * sum ||theta - anchor||^2`` over the parameters named in ``anchor`` (float32 scalar).

    Args:
        named_parameters: the current parameters (``module.named_parameters()``).
        anchor: name -> the source model's value, same shapes (detached).
        alpha: the strength (>= 0).

    Raises:
        ValueError: ``alpha < 0``, or a name in ``anchor`` has no parameter.
    """
    if not alpha >= 0.0:
        raise ValueError(f"l2sp_penalty: alpha must be >= 0, got {alpha!r}")
    params = dict(named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters)
    missing = [n for n in anchor if n not in params]
    if missing:
        raise ValueError(f"l2sp_penalty: no parameter for anchors {missing[:5]}; the anchors were taken from a "
                         f"different network")
    terms = [((params[n].float() - a.float()) ** 2).sum() for n, a in anchor.items()]
    if not terms:
        return torch.zeros(())
    return 0.5 * alpha * torch.stack(terms).sum()


def continue_optimizer_state(optimizer: torch.optim.Optimizer, source_state: Mapping[str, Any],
                             restart_step: int | None = ADAM_RESTART_STEP) -> int:
    """Put the per-parameter state of a source optimizer (``optimizer.state_dict()`` of the same parameter list)
    into ``optimizer``, keeping ``optimizer``'s own hyper-parameters (learning rate, momentum, betas).

    Args:
        optimizer: the fine-tuning optimizer, built over the same parameters in the same order as the source's.
        source_state: the source optimizer's ``state_dict()`` (e.g. a checkpoint's ``optimizer_state``).
        restart_step: for states with a ``"step"`` counter (Adam), the step the bias correction continues from;
            None keeps the source's count.

    Returns:
        The number of parameters whose state was carried over.

    Raises:
        ValueError: the two optimizers' parameter lists differ in length or shapes, or the source state has
            entries the optimizer does not use (e.g. SGD momentum buffers into Adam: train the source with the
            same optimizer type).
    """
    own = optimizer.state_dict()
    own_ids = [i for g in own["param_groups"] for i in g["params"]]
    src_ids = [i for g in source_state["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if len(own_ids) != len(src_ids):
        raise ValueError(f"continue_optimizer_state: the source optimizer has {len(src_ids)} parameters, this one "
                         f"{len(own_ids)}; both must optimize the same network")
    kind = type(optimizer).__name__
    expected = {"SGD": {"momentum_buffer"}, "Adam": {"step", "exp_avg", "exp_avg_sq"},
                "AdamW": {"step", "exp_avg", "exp_avg_sq"}}.get(kind)
    state: dict[int, dict[str, Any]] = {}
    for own_id, src_id, param in zip(own_ids, src_ids, params, strict=True):
        entry = source_state["state"].get(src_id)
        if entry is None:
            continue
        if expected is not None and not set(entry) <= expected | {"max_exp_avg_sq"}:
            raise ValueError(f"continue_optimizer_state: the source optimizer state has {sorted(entry)}, which "
                             f"{kind} does not use; train the source model with the same optimizer type")
        moved = {}
        for k, v in entry.items():
            if k == "step":
                v = torch.tensor(float(restart_step), dtype=torch.float32) if restart_step is not None else v
            elif isinstance(v, torch.Tensor) and v.shape != param.shape:
                raise ValueError(f"continue_optimizer_state: state {k!r} of parameter {own_id} has shape "
                                 f"{tuple(v.shape)}, the parameter {tuple(param.shape)}")
            moved[k] = v
        state[own_id] = moved
    optimizer.load_state_dict({"state": state, "param_groups": own["param_groups"]})
    return len(state)


@dataclass(frozen=True)
class ClusterAlignment:
    """One epoch's AIVA clustering (see the module docstring).

    Attributes:
        target_means: ``(k, D)`` the BNS mean of each target cluster (a batch's target features are assigned to
            the nearest one).
        source_means: ``(k, D)`` for target cluster ``i``, the BNS mean ``nu_pi(i)`` of its matched source cluster.
        target_centers_2d, source_centers_2d: ``(k, 2)`` the clusters' centres in the joint t-SNE embedding.
        matching: ``(k,)`` ``pi``: target cluster ``i`` is matched to source cluster ``matching[i]``.
    """

    target_means: torch.Tensor
    source_means: torch.Tensor
    target_centers_2d: np.ndarray
    source_centers_2d: np.ndarray
    matching: np.ndarray


def fit_cluster_alignment(source: torch.Tensor, target: torch.Tensor, k: int = 12, seed: int = 0,
                          pca_components: int = 50, perplexity: float = 30.0) -> ClusterAlignment:
    """Cluster both sites in a joint 2-D embedding of their bottleneck features and match the clusters (Eq. 1).

    Args:
        source, target: ``(N_s, D)`` and ``(N_t, D)`` flattened bottleneck features (detached), ``N >= k`` each.
        k: clusters per site (the paper: 12).
        seed: seeds t-SNE and k-means.
        pca_components: PCA dimension before t-SNE (capped by the number of points and ``D``).
        perplexity: t-SNE's perplexity (capped at ``(N_s + N_t - 1) / 3``).

    Returns:
        The epoch's :class:`ClusterAlignment`.

    Raises:
        ValueError: ``k < 1``, fewer than ``k`` points in a site, or feature dimensions that differ.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if k < 1 or len(source) < k or len(target) < k:
        raise ValueError(f"fit_cluster_alignment: k must be in [1, points per site], got k={k!r} with "
                         f"{len(source)} source and {len(target)} target points; embed more batches or lower k")
    if source.shape[1:] != target.shape[1:] or source.dim() != 2:
        raise ValueError(f"fit_cluster_alignment: source and target must be (N, D) with the same D, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    joint = torch.cat([source, target]).double().cpu().numpy()
    n = len(joint)
    reduced = PCA(n_components=min(pca_components, n - 1, joint.shape[1]), random_state=seed).fit_transform(joint)
    embedded = TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca",
                    random_state=seed).fit_transform(reduced)
    labels, centers = [], []
    for part in (embedded[: len(source)], embedded[len(source):]):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(part)
        labels.append(km.labels_)
        centers.append(km.cluster_centers_)
    (source_labels, target_labels), (source_centers, target_centers) = labels, centers
    cost = ((target_centers[:, None, :] - source_centers[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    matching = cols[np.argsort(rows)]

    def means(features: torch.Tensor, assigned: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(assigned, device=features.device)
        return torch.stack([features[index == c].float().mean(0) for c in range(k)])

    source_means = means(source, source_labels)
    return ClusterAlignment(means(target, target_labels), source_means[torch.as_tensor(matching)],
                            target_centers, source_centers, matching)


def alignment_loss(target_features: torch.Tensor, alignment: ClusterAlignment) -> torch.Tensor:
    """AIVA's Eq. 2 on one batch: ``sum_i ||mean(x in cluster i) - nu_pi(i)||^2`` over the clusters present.

    Each row of ``target_features`` (``(B, D)``, with gradients) joins the target cluster whose BNS mean is nearest
    (the paper knows each image's cluster from the epoch's clustering; nnU-Net's batches hold freshly sampled
    patches, so they are assigned by distance).

    Returns:
        A float32 scalar, differentiable w.r.t. ``target_features``.
    """
    features = target_features.float()
    centres = alignment.target_means.to(features.device)
    assigned = torch.cdist(features.detach(), centres).argmin(1)
    total = features.new_zeros(())
    for c in assigned.unique():
        total = total + ((features[assigned == c].mean(0) - alignment.source_means[c].to(features.device)) ** 2).sum()
    return total
