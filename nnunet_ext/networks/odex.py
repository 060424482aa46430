"""The ODEx model pool: experts, their Gaussian histories and the selector that routes each input.

:class:`ODExPool` is what ``nnUNetv2_predict -tr nnUNetTrainerODEx`` runs. Everything it needs travels in
its state dict: the experts' weights, each expert's history of Gaussians (means and Cholesky factors of the
feature covariances), each Gaussian's calibration ``[d_min, d_max, d_mean]`` of in-distribution distances,
the index of the expert being trained and the frozen feature network (``reference``). The predictor
rebuilds the network with the static ``build_network_architecture`` (one expert, empty history) and loads
the checkpoint strictly; :meth:`ODExPool._load_from_state_dict` grows the pool, the histories and the
reference to what the checkpoint holds.

**Unit of selection.** nnU-Net predicts with sliding windows, so the network sees patches, not images.
Each *patch* (each sample of a forward batch) is routed on its own: its features ``z`` are computed once
with the frozen reference network (:meth:`ODExPool.set_reference`; only up to its first normalisation
layer, cheap; pools saved without a reference use each expert's own first layer), the expert with the
smallest score (normalised Mahalanobis distances summed over its history, divided by the history length,
:func:`nnunet_ext.core.odex.history_score`) is chosen and only
that expert runs on the patch. Training statistics are computed on training patches of the same size, so
patch features are what the histories describe. (Mirrored copies of a patch, nnU-Net's test-time
augmentation, are routed separately too.)

**Inspection.** ``nnext odex explain`` (:mod:`nnunet_ext.cli.odex`) predicts with nnU-Net's own predictor and
writes, per case, the expert chosen for every patch and the scores. It attaches a :class:`SelectionRecorder`
(:meth:`ODExPool.recording`); the forward pass only hands each routing decision to the recorder, in memory,
and does nothing extra when none is attached (no environment variable, no file). ``ODExPool.selection_counts``
counts choices in memory.

**Blank patches** (every channel constant, as outside the body of a masked-normalised image) are routed like
any other patch: their features are finite (the log standard deviation is taken of ``std + 1e-5``, so even a
perfectly constant feature map gives a finite value), nothing in the scoring is random and ties go to the
lowest expert index, so the choice is deterministic. A blank patch can lie far from every history (the far-OOD
warning then says so); it gets the closest expert's own prediction, i.e. what that plain network predicts,
and no other patch of the batch is affected.

**How the pool follows the rule of** :mod:`nnunet_ext.networks.wrapper`: every expert is a plans network and
its entries are that network's keys under ``experts.<i>.``; the variable parts (number of experts, history
lengths, the reference) are restored from the state dict itself; ``active_expert`` is a buffer; the runtime
switch ``route`` is not saved (trainers turn it off for nnU-Net's per-epoch pseudo-Dice);
``far_ood_level`` (from the trainer class at build time) only decides which patches are reported, never a
prediction. ``pool.decoder`` is :class:`PoolDecoders`: nnU-Net's deep-supervision switch reaches every
expert.

**Far out-of-distribution input** (score of the chosen expert above ``far_ood_level``; 1.0 = on average
twice the largest in-distribution distance of its Gaussians) is still predicted by the closest expert, and a
warning is logged: once per input (nnU-Net's predictor loads the weights before each case, which re-arms it),
not once per sliding-window patch. ``ODExPool.far_ood_count`` counts every far-OOD patch.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnunet_ext.core.odex import (
    decide,
    history_distances,
    history_score,
    history_threshold,
    norm_input_features,
)
from nnunet_ext.networks.wrapper import moves_nothing, run_per_group

logger = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class _StopAtNorm(Exception):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


def _stop_at_norm(_module: nn.Module, inputs: tuple) -> None:
    raise _StopAtNorm(inputs[0])


def _first_norm_input(network: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What ``network``'s first norm layer receives for input ``x`` (no grad; the rest of the net never runs)."""
    handle = first_norm_layer(network).register_forward_pre_hook(_stop_at_norm)
    try:
        with torch.no_grad():
            network(x)
    except _StopAtNorm as e:
        return e.value
    finally:
        handle.remove()
    return None


def first_norm_layer(module: nn.Module) -> nn.Module:
    """The first normalisation layer of ``module`` in registration order (nnU-Net's encoder stem norm).

    Raises:
        ValueError: ``module`` has no BatchNorm/InstanceNorm/GroupNorm/LayerNorm layer.
    """
    for m in module.modules():
        if isinstance(m, NORM_TYPES):
            return m
    raise ValueError(f"{type(module).__name__} has no normalisation layer; ODEx takes its features from the "
                     f"first one (InstanceNorm in nnU-Net's U-Nets)")


def norm_channels(norm: nn.Module) -> int:
    """Number of channels the normalisation layer sees."""
    for attr in ("num_features", "num_channels"):
        if hasattr(norm, attr):
            return int(getattr(norm, attr))
    return int(norm.normalized_shape[0])


class FeatureStem(nn.Sequential):
    """The modules an expert runs before its first normalisation layer, as a chain (see :func:`feature_stem`)."""


def feature_stem(network: nn.Module) -> FeatureStem | None:
    """A frozen copy of what ``network`` runs before its first norm layer, or ``None`` if that is not a chain.

    In nnU-Net's U-Nets (plain and residual encoders) the first norm layer sits in an ``nn.Sequential``
    ``(conv, [dropout], norm, nonlin)`` that receives the network input, so the stem is one convolution: a
    few kB instead of a whole U-Net. The stem is accepted only if it reproduces the network's first-norm
    input on a probe tensor; any other architecture gets ``None`` (the caller keeps a whole copy).
    """
    norm = first_norm_layer(network)
    parent = next((m for m in network.modules() if isinstance(m, nn.Sequential)
                   and any(child is norm for child in m.children())), None)
    if parent is None:
        return None
    chain = list(parent.children())
    chain = chain[:next(i for i, child in enumerate(chain) if child is norm)]
    conv = next((m for m in chain if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        return None
    stem = FeatureStem(*copy.deepcopy(chain)).requires_grad_(False)
    probe = torch.randn((2, conv.in_channels) + (16,) * (conv.weight.dim() - 2),
                        generator=torch.Generator().manual_seed(0)).to(conv.weight)
    modes = {m: m.training for m in network.modules()}
    try:  # eval mode: a dropout before the norm must not make the comparison random
        expected = _first_norm_input(network.eval(), probe)
        with torch.no_grad():
            got = stem.eval()(probe)
    finally:
        for m, mode in modes.items():
            m.training = mode
    stem.train(network.training)
    ok = expected is not None and got.shape == expected.shape and torch.allclose(got, expected)
    return stem if ok else None


class ExpertHistory(nn.Module):
    """One expert's history: ``means (H, D)``, ``chols (H, D, D)`` and ``calibrations (H, 3)``.

    ``calibrations[h] = [d_min, d_max, d_mean]`` of the in-distribution Mahalanobis distances to Gaussian ``h``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("means", torch.zeros(0, dim, dtype=torch.float64))
        self.register_buffer("chols", torch.zeros(0, dim, dim, dtype=torch.float64))
        self.register_buffer("calibrations", torch.zeros(0, 3, dtype=torch.float64))

    def __len__(self) -> int:
        return self.means.shape[0]

    def append(self, mean: torch.Tensor, chol: torch.Tensor, calibration: torch.Tensor) -> None:
        """Add one Gaussian (mean ``(D,)``, lower Cholesky factor ``(D, D)``, calibration ``(3,)``)."""
        if mean.shape != (self.dim,) or chol.shape != (self.dim, self.dim) or calibration.shape != (3,):
            raise ValueError(f"expected mean ({self.dim},), chol ({self.dim}, {self.dim}) and calibration (3,), got "
                             f"{tuple(mean.shape)}, {tuple(chol.shape)} and {tuple(calibration.shape)}")
        self.means = torch.cat([self.means, mean.to(self.means)[None]])
        self.chols = torch.cat([self.chols, chol.to(self.chols)[None]])
        self.calibrations = torch.cat([self.calibrations, calibration.to(self.calibrations)[None]])

    def clear(self) -> None:
        """Forget every Gaussian."""
        self.means, self.chols, self.calibrations = self.means[:0], self.chols[:0], self.calibrations[:0]

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """:func:`~nnunet_ext.core.odex.history_score` of ``z (N, D)``; ``inf`` when the history is empty."""
        return history_score(z, self.means, self.chols, self.calibrations)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """:func:`~nnunet_ext.core.odex.history_distances` of ``z (N, D)``: ``(N, H)``."""
        return history_distances(z, self.means, self.chols, self.calibrations)

    def threshold(self) -> torch.Tensor:
        """The paper's ``xi = 2 mu`` for this history (``inf`` when empty)."""
        return history_threshold(self.calibrations.cpu())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        with torch.inference_mode(False):  # nnU-Net's predictor loads inside inference mode: keep normal tensors
            for name in ("means", "chols", "calibrations"):
                if prefix + name in state_dict:  # the history length comes from the checkpoint
                    setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class PoolDecoders:
    """``pool.decoder``: the deep-supervision switch of every expert's decoder at once.

    nnU-Net's ``set_deep_supervision_enabled`` sets ``network.decoder.deep_supervision``; reading gives the
    active expert's value (all experts share it).
    """

    def __init__(self, pool: ODExPool):
        self._pool = pool

    @property
    def deep_supervision(self) -> bool:
        return self._pool.experts[self._pool.active].decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for expert in self._pool.experts:
            expert.decoder.deep_supervision = enabled


@dataclass
class SelectionRecorder:
    """Routing decisions of an :class:`ODExPool`, one entry per routed patch, in the order they were made.

    Attributes:
        expert: chosen expert per patch.
        score: every expert's score per patch (``None`` for an expert without history).
        far_ood: whether the chosen expert's score was above ``far_ood_level``.
    """

    expert: list[int] = field(default_factory=list)
    score: list[list[float | None]] = field(default_factory=list)
    far_ood: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.expert)

    def record(self, choices: list[int], scores: torch.Tensor, far: list[bool]) -> None:
        """Append one routed batch: ``choices`` and ``far`` per sample, ``scores (B, M)``."""
        self.expert.extend(choices)
        self.score.extend([[v if math.isfinite(v) else None for v in row] for row in scores.tolist()])
        self.far_ood.extend(far)

    def clear(self) -> None:
        self.expert, self.score, self.far_ood = [], [], []

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-patch lists and how often each expert was chosen."""
        counts = Counter(self.expert)
        return {"patches": len(self), "counts": {str(m): counts[m] for m in sorted(counts)},
                "expert": list(self.expert), "score": [list(r) for r in self.score], "far_ood": list(self.far_ood)}


class ODExPool(nn.Module):
    """A pool of experts (same architecture) with per-expert Gaussian histories and per-patch routing.

    In training mode (or with ``route = False``) the forward runs the *active* expert only. In eval mode
    with ``route = True`` every patch is routed to the closest expert (module docstring).

    Args:
        expert: the first expert (an nnU-Net U-Net with a ``decoder``).
        far_ood_level: score above which a patch is reported as far out-of-distribution.

    Attributes:
        experts: ``nn.ModuleList`` of experts.
        histories: ``nn.ModuleList`` of :class:`ExpertHistory`, one per expert.
        active: index of the expert being trained (persistent buffer ``active_expert``).
        route: route patches in eval mode (the trainer switches it off for nnU-Net's per-epoch validation).
        recorder: a :class:`SelectionRecorder` that receives every routing decision, or ``None`` (default).
        selection_counts: how often each expert was chosen since construction.
        far_ood_count: how many routed patches were far out-of-distribution since construction.
    """

    def __init__(self, expert: nn.Module, far_ood_level: float = 1.0):
        super().__init__()
        self.feature_dim = 2 * norm_channels(first_norm_layer(expert))
        self.far_ood_level = float(far_ood_level)
        self.experts = nn.ModuleList([expert])
        self.histories = nn.ModuleList([ExpertHistory(self.feature_dim)])
        self.reference = nn.ModuleList()  # empty, or the frozen feature network (see set_reference)
        self.register_buffer("active_expert", torch.zeros((), dtype=torch.long))
        self.route = True
        self.recorder: SelectionRecorder | None = None
        self.selection_counts: Counter = Counter()
        self.far_ood_count = 0
        self._far_ood_warned = False  # re-armed by load_state_dict, i.e. per case in nnU-Net's predictor
        self._last_load: tuple | None = None  # see load_state_dict

    def __len__(self) -> int:
        return len(self.experts)

    @property
    def active(self) -> int:
        return int(self.active_expert)

    @active.setter
    def active(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise ValueError(f"expert index must be in [0, {len(self)}), got {index}")
        self.active_expert.fill_(index)

    @property
    def decoder(self) -> PoolDecoders:
        return PoolDecoders(self)

    @contextmanager
    def recording(self) -> Iterator[SelectionRecorder]:
        """Attach a fresh :class:`SelectionRecorder` for the duration of the block (the previous one comes back)."""
        previous, self.recorder = self.recorder, SelectionRecorder()
        try:
            yield self.recorder
        finally:
            self.recorder = previous

    def add_expert(self, parent: int) -> int:
        """Append a copy of expert ``parent`` (weights and history); returns the new index."""
        self.experts.append(copy.deepcopy(self.experts[parent]))
        self.histories.append(copy.deepcopy(self.histories[parent]))
        return len(self) - 1

    def set_reference(self, index: int) -> None:
        """Freeze a copy of expert ``index`` as the network every feature is computed with from now on.

        Each expert's first convolution keeps changing while it trains, so Gaussians fitted earlier (its own
        and those inherited from its parent) would describe another feature space than the one its features
        are measured in later; an expert added by expansion then never wins a selection. With one frozen
        feature network (the trainer freezes the first expert when the first Gaussian is fitted) every
        Gaussian and every test patch live in one space, and a patch's features are computed once for all
        experts.

        The copy holds only what runs before the first norm layer (:class:`FeatureStem`, e.g. nnU-Net's first
        convolution) when that part of the expert is a plain chain of modules; otherwise the whole expert.
        """
        reference = self._frozen_copy(index)
        if len(self.reference):
            self.reference[0] = reference
        else:
            self.reference.append(reference)

    def _frozen_copy(self, index: int, stem: bool = True) -> nn.Module:
        """A frozen copy of expert ``index``: its :func:`feature_stem` if ``stem`` and it has one, else all of it."""
        expert = self.experts[index]
        return ((feature_stem(expert) if stem else None) or copy.deepcopy(expert)).requires_grad_(False)

    def features(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """ODEx features of ``x``: runs the feature network only up to its first norm layer.

        The feature network is the frozen reference (:meth:`set_reference`) if there is one, else expert ``index``.

        Shape:
            x: ``(B, C_in, *spatial)``. Returns ``(B, feature_dim)`` float64.
        """
        network = self.reference[0] if len(self.reference) else self.experts[index]
        if isinstance(network, FeatureStem):
            with torch.no_grad():
                return norm_input_features(network(x))
        z = _first_norm_input(network, x)
        if z is None:
            raise RuntimeError(f"expert {index} never reached its first normalisation layer")
        return norm_input_features(z)

    def _per_expert(self, x: torch.Tensor, measure: Callable[[ExpertHistory, torch.Tensor], torch.Tensor]) -> list:
        """``measure(history, z)`` for every expert, with one feature pass when there is a frozen reference."""
        if len(self.reference):  # one feature space: compute the features once
            z = self.features(x, 0)
            return [measure(h, z) for h in self.histories]
        return [measure(self.histories[m], self.features(x, m)) for m in range(len(self))]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Each sample's score ``(B, M)`` under each expert's history (``inf``: empty history)."""
        return torch.stack(self._per_expert(x, ExpertHistory.score), dim=1)

    def distances(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per expert, each sample's normalised distance to each Gaussian of its history: ``M`` x ``(B, H_m)``,
        Gaussians in the order they were added. Their mean over the history is the expert's score (:meth:`scores`).
        """
        return self._per_expert(x, ExpertHistory.distances)

    def thresholds(self) -> torch.Tensor:
        """Each expert's ``xi = 2 mu`` ``(M,)``."""
        return torch.stack([h.threshold() for h in self.histories])

    def select(self, x: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Chosen expert per sample and the scores ``(B, M)``."""
        scores = self.scores(x).cpu()
        thresholds = self.thresholds()
        return [decide(row, thresholds).best for row in scores], scores

    def has_history(self) -> bool:
        return any(len(h) for h in self.histories)

    def forward(self, x: torch.Tensor):
        if self.training or not self.route or not self.has_history():
            return self.experts[self.active](x)
        choices, scores = self.select(x)
        self._report(choices, scores)
        return run_per_group(x, choices, lambda m, patches: self.experts[m](patches))

    def _report(self, choices: list[int], scores: torch.Tensor) -> None:
        self.selection_counts.update(choices)
        best = [float(scores[i, c]) for i, c in enumerate(choices)]
        far = [b > self.far_ood_level for b in best]
        self.far_ood_count += sum(far)
        if any(far) and not self._far_ood_warned:
            self._far_ood_warned = True
            logger.warning("ODEx: %d of %d patches are far out-of-distribution (score %s > %.2f for the closest "
                           "expert); predicting with the closest expert anyway. Further far-OOD patches of this "
                           "input are not reported one by one (`nnext odex explain` lists every patch)", sum(far),
                           len(far), [round(b, 2) for b, f in zip(best, far) if f], self.far_ood_level)
        if self.recorder is not None:
            self.recorder.record(choices, scores, far)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`, but in eval mode a repeated load of the same, unmodified
        mapping into the unmodified pool is skipped.

        nnU-Net's predictor loads the checkpoint's weights again before every case; for a pool of M experts each
        load copies M networks (measured on the 4-expert demo pool: about 0.1 s per case, more than the routed
        forward passes of a small case). "Unmodified" is checked with the tensors' version counters, which every
        in-place change increments, so a different or edited state dict, or edited pool weights, load normally.
        """
        self._far_ood_warned = False  # a new input follows
        if self.training or assign:
            self._last_load = None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self._last_load is not None and self._last_load[0] is state_dict and self._last_load[1] is not None \
                and self._last_load[1:] == self._load_versions(state_dict):
            return nn.modules.module._IncompatibleKeys([], [])
        result = super().load_state_dict(state_dict, strict=strict)
        self._last_load = (state_dict, *self._load_versions(state_dict))
        return result

    def to(self, *args, **kwargs):
        """As :meth:`torch.nn.Module.to`, but a call that would change nothing returns at once.

        nnU-Net's predictor calls ``network.to(device)`` before every case; ``Module.to`` then visits every
        module of every expert even when all tensors are already there (on the 4-expert demo pool this walk
        cost more per case than the routed forward of a small slab). A device or dtype change, or any
        ``memory_format``, goes through ``Module.to`` as usual.
        """
        if moves_nothing(self, *args, **kwargs):
            return self
        return super().to(*args, **kwargs)

    def _load_versions(self, state_dict) -> tuple[tuple, tuple] | tuple[None, None]:
        incoming = [(k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor)]
        own = [*self.parameters(), *self.buffers()]
        if any(t.is_inference() for _, t in incoming) or any(t.is_inference() for t in own):
            return None, None  # inference tensors have no version counter: never skip
        return tuple((k, id(v), v._version) for k, v in incoming), tuple(t._version for t in own)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        pattern = re.compile(re.escape(prefix) + r"experts\.(\d+)\.")
        indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
        with torch.inference_mode(False):  # grown modules hold normal tensors even under nnU-Net's inference mode
            while indices and len(self) < max(indices) + 1:  # the pool size comes from the checkpoint
                self.add_expert(0)
            if not len(self.reference):  # a placeholder of the saved kind; its weights come from the state dict
                keys = [k[len(prefix + "reference.0."):] for k in state_dict if k.startswith(prefix + "reference.0.")]
                if keys:  # FeatureStem keys are "<position>.<name>"; a whole U-Net's are not
                    self.reference.append(self._frozen_copy(0, stem=all(k.split(".", 1)[0].isdigit() for k in keys)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
