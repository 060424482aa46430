"""Regularizers against forgetting: Elastic Weight Consolidation (EWC) and Learning without Forgetting (LwF).

Both are the classic baselines of continual segmentation (the ODEx paper, González et al., DART 2022,
Table 1, compares against them). Pure torch: no nnU-Net, no file I/O.

**EWC** (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017). After
a stage, each parameter ``theta_i`` gets an importance ``F_i`` (the diagonal of the Fisher information,
estimated by squared gradients) and an anchor ``theta*_i`` (its value at the end of the stage). Training
on later stages adds::

    penalty = lambda / 2 * sum_i F_i * (theta_i - theta*_i) ** 2

Fisher estimate (:class:`FisherAccumulator`)::

    F_i = 1/B * sum_{b=1..B} (d loss_b / d theta_i) ** 2

over ``B`` mini-batches of the whole stage, where ``loss_b`` is the training loss of batch ``b``. Two
defects of the Lifelong-nnUNet implementation that the ODEx paper's baselines ran on are avoided on
purpose:

1. *Many batches, not the last one.* ``F`` averages over ``B`` batches of the stage, not the squared
   gradient of whichever batch happened to be last.
2. *Unscaled gradients.* With mixed precision the gradients come from ``scale * loss`` (``GradScaler``);
   the accumulator divides them by ``scale`` before squaring (else ``F`` is inflated by ``scale ** 2``,
   2^32 at the default scale) and skips a batch whose gradients are not finite (an overflow step that the
   scaler would skip too).

The sum of squares and the number of batches are kept separately so that data-parallel workers can each
accumulate their own batches and :meth:`FisherAccumulator.all_reduce` adds both over the ranks.

Consolidation over stages (:class:`ElasticWeightConsolidation`), ``mode``:

* ``"sum"`` (Kirkpatrick et al.: one quadratic penalty per finished stage, summed). The sum of quadratics
  ``sum_k F_k (theta - theta*_k)^2`` equals ``F (theta - a)^2 + const`` with ``F = sum_k F_k`` and the
  Fisher-weighted anchor ``a = sum_k F_k theta*_k / F``, so we store one ``F`` and one ``a`` (constant memory
  in the number of stages) and get exactly the same gradient; the penalty's *value* drops the constant
  (it is 0 at ``a``). Where ``F == 0`` the anchor is the latest ``theta*``.
* ``"online"`` (online EWC: Schwarz et al., "Progress & Compress", ICML 2018; Huszár, PNAS 2018):
  ``F <- gamma * F + F_new``, anchor = latest ``theta*``. ``gamma = 1`` keeps all the old importance,
  ``gamma < 1`` forgets it geometrically.

**LwF** (Li & Hoiem, "Learning without Forgetting", TPAMI 2018) with knowledge distillation (Hinton et al.,
"Distilling the Knowledge in a Neural Network", 2015): a frozen copy of the model from before the stage
(the *teacher*) labels the new data softly, and the model being trained (the *student*) is kept close::

    L_distill = T^2 * mean_voxels KL( softmax(z_teacher / T) || softmax(z_student / T) )

over the class axis of segmentation logits ``(N, C, *spatial)``. The ``T^2`` factor (Hinton et al.) keeps
the gradient magnitude comparable across temperatures: the gradient w.r.t. the student logits is
``T * (p_student - p_teacher) / n_voxels``, which for large ``T`` tends to ``(z_s - z_t) / (C * n_voxels)``
(mean-centred logits), independent of ``T``. KL instead of Li & Hoiem's soft cross-entropy: the two differ
by the teacher's entropy, a constant, so the gradients are identical and KL is 0 when the logits agree.
With deep supervision (a list of outputs, highest resolution first) the per-output losses are summed with
nnU-Net's weights, as nnU-Net's ``DeepSupervisionWrapper`` does for the segmentation loss.

BibTeX::

    @article{kirkpatrick2017overcoming,
      title={Overcoming catastrophic forgetting in neural networks},
      author={Kirkpatrick, James and Pascanu, Razvan and Rabinowitz, Neil and Veness, Joel and others},
      journal={PNAS}, volume={114}, number={13}, pages={3521--3526}, year={2017}}
    @article{li2018learning,
      title={Learning without Forgetting}, author={Li, Zhizhong and Hoiem, Derek},
      journal={IEEE TPAMI}, volume={40}, number={12}, pages={2935--2947}, year={2018}}
    @article{hinton2015distilling,
      title={Distilling the Knowledge in a Neural Network},
      author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff}, journal={arXiv:1503.02531}, year={2015}}

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> layer = torch.nn.Linear(3, 1)
    >>> acc = FisherAccumulator(layer.named_parameters())
    >>> for _ in range(4):
    ...     layer.zero_grad(); layer(torch.randn(8, 3)).pow(2).mean().backward(); acc.accumulate(layer.named_parameters())
    True
    True
    True
    True
    >>> ewc = ElasticWeightConsolidation()
    >>> ewc.consolidate(acc.fisher(), dict(layer.named_parameters()))
    >>> ewc.penalty(layer.named_parameters(), lam=1.0).item()
    0.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

ConsolidationMode = Literal["sum", "online"]


def _named(named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    items = named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters
    return {n: p for n, p in items if p.requires_grad}


class FisherAccumulator:
    """Running sum of squared, unscaled gradients over mini-batches (the diagonal empirical Fisher).

    Args:
        named_parameters: ``module.named_parameters()`` (or a name -> tensor mapping); parameters with
            ``requires_grad=False`` are ignored.

    Attributes:
        sums: name -> float32 sum over accepted batches of ``(grad / scale) ** 2``.
        count: number of accepted batches.
        skipped: number of batches rejected because a gradient was not finite.

    Shape:
        each entry of ``sums`` has its parameter's shape.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]):
        params = _named(named_parameters)
        if not params:
            raise ValueError("FisherAccumulator: named_parameters holds no parameter with requires_grad=True; "
                             "pass module.named_parameters() of the network being trained")
        self.sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        self.count = 0
        self.skipped = 0

    @torch.no_grad()
    def accumulate(self, named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                   loss_scale: float | torch.Tensor = 1.0) -> bool:
        """Add the squared gradients currently in ``p.grad`` as one batch.

        Args:
            named_parameters: the same parameters (names) the accumulator was built from, after
                ``backward()`` of one batch's loss. A parameter without ``.grad`` counts as gradient 0.
            loss_scale: the factor the loss was multiplied with before ``backward()``
                (``GradScaler.get_scale()``); gradients are divided by it. 1 without AMP.

        Returns:
            True if the batch was added, False if it was skipped (a non-finite gradient).

        Raises:
            ValueError: ``loss_scale`` is not a finite number > 0, or a parameter name is unknown.
        """
        scale = float(loss_scale)
        if not (scale > 0.0 and scale != float("inf")):
            raise ValueError(f"FisherAccumulator.accumulate: loss_scale must be a finite number > 0 (the "
                             f"GradScaler's get_scale()), got {loss_scale!r}")
        grads = {}
        for n, p in _named(named_parameters).items():
            if n not in self.sums:
                raise ValueError(f"FisherAccumulator.accumulate: parameter {n!r} was not among the parameters the "
                                 f"accumulator was built from; build it from the same module")
            if p.grad is not None:
                grads[n] = p.grad.detach().float() / scale
        if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            self.skipped += 1
            return False
        for n, g in grads.items():
            self.sums[n].addcmul_(g, g)
        self.count += 1
        return True

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> None:
        """Sum ``sums``, ``count`` and ``skipped`` over the ranks of ``torch.distributed`` (no-op without it)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        ref = next(iter(self.sums.values()))
        counts = torch.tensor([self.count, self.skipped], dtype=torch.float64, device=ref.device)
        torch.distributed.all_reduce(counts, group=group)
        for t in self.sums.values():
            torch.distributed.all_reduce(t, group=group)
        self.count, self.skipped = int(counts[0].item()), int(counts[1].item())

    def fisher(self) -> dict[str, torch.Tensor]:
        """The average over accepted batches, ``sums / count``.

        Raises:
            RuntimeError: no batch was accepted (every one was skipped or none was added).
        """
        if self.count == 0:
            raise RuntimeError(f"FisherAccumulator: no batch accumulated ({self.skipped} skipped as non-finite); "
                               f"call accumulate() after backward() on at least one batch with finite gradients")
        return {n: s / self.count for n, s in self.sums.items()}


def ewc_penalty(named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                fisher: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], lam: float) -> torch.Tensor:
    """``lam / 2 * sum_i F_i (theta_i - anchor_i) ** 2`` over the parameters named in ``fisher`` (float32).

    Args:
        named_parameters: the current parameters (``module.named_parameters()``).
        fisher: name -> importance, same shapes.
        anchor: name -> anchor values, same shapes.
        lam: the strength lambda (>= 0).

    Returns:
        A scalar tensor that is differentiable w.r.t. the parameters.

    Raises:
        ValueError: ``lam < 0``, or a name in ``fisher`` has no parameter or anchor.
    """
    if not lam >= 0.0:
        raise ValueError(f"ewc_penalty: lam must be >= 0, got {lam!r}")
    params = dict(named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters)
    missing = [n for n in fisher if n not in params or n not in anchor]
    if missing:
        raise ValueError(f"ewc_penalty: no parameter or anchor for {missing[:5]}; the EWC state was built for a "
                         f"different network (load the checkpoint that matches these plans)")
    if not fisher:
        return torch.zeros(())
    total = torch.zeros((), dtype=torch.float32, device=next(iter(fisher.values())).device)
    for n, f in fisher.items():
        total = total + (f * (params[n].float() - anchor[n]) ** 2).sum()
    return 0.5 * lam * total


class ElasticWeightConsolidation:
    """EWC state consolidated over finished stages: one importance ``fisher`` and one ``anchor`` per parameter.

    Args:
        mode: ``"sum"`` (Kirkpatrick et al.; exact gradient of the sum of per-stage penalties) or
            ``"online"`` (online EWC with decay ``gamma``); see the module docstring.
        gamma: decay of the old importance in ``"online"`` mode, in ``[0, 1]``; unused in ``"sum"`` mode.

    Attributes:
        fisher: name -> consolidated importance (float32); empty before the first stage.
        anchor: name -> anchor (float32).
        num_stages: number of consolidated stages.

    Raises:
        ValueError: unknown ``mode`` or ``gamma`` outside ``[0, 1]``.
    """

    def __init__(self, mode: ConsolidationMode = "sum", gamma: float = 1.0):
        if mode not in ("sum", "online"):
            raise ValueError(f"ElasticWeightConsolidation: mode must be 'sum' or 'online', got {mode!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ElasticWeightConsolidation: gamma must be in [0, 1], got {gamma!r}")
        self.mode: ConsolidationMode = mode
        self.gamma = float(gamma)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.num_stages = 0

    @torch.no_grad()
    def consolidate(self, fisher: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> None:
        """Fold one finished stage (its Fisher and its final parameters) into the state.

        Raises:
            ValueError: ``fisher`` names a parameter missing from ``params`` or with another shape, or the
                parameter names differ from the stages consolidated before.
        """
        bad = [n for n, f in fisher.items() if n not in params or params[n].shape != f.shape]
        if bad:
            raise ValueError(f"ElasticWeightConsolidation.consolidate: fisher and params disagree for {bad[:5]} "
                             f"(missing or different shape); pass the Fisher of these parameters")
        if self.fisher and set(fisher) != set(self.fisher):
            raise ValueError("ElasticWeightConsolidation.consolidate: the parameter names differ from the stages "
                             "consolidated before; the network must stay the same across stages")
        new_f = {n: f.detach().float().clone() for n, f in fisher.items()}
        new_a = {n: params[n].detach().float().clone() for n in fisher}
        if not self.fisher or self.mode == "online":
            decay = self.gamma if self.fisher else 0.0
            self.fisher = {n: (decay * self.fisher[n] + f) if self.fisher else f for n, f in new_f.items()}
            self.anchor = new_a
        else:
            for n, f in new_f.items():
                total = self.fisher[n] + f
                weighted = self.fisher[n] * self.anchor[n] + f * new_a[n]
                self.anchor[n] = torch.where(total > 0, weighted / total.clamp_min(torch.finfo(total.dtype).tiny),
                                             new_a[n])
                self.fisher[n] = total
        self.num_stages += 1

    def penalty(self, named_parameters: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                lam: float) -> torch.Tensor:
        """:func:`ewc_penalty` with the consolidated state (0 before the first stage)."""
        if not self.fisher:
            return torch.zeros(())
        return ewc_penalty(named_parameters, self.fisher, self.anchor, lam)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: mode, gamma, stages, and CPU copies of fisher and anchor."""
        return {"mode": self.mode, "gamma": self.gamma, "num_stages": self.num_stages,
                "fisher": {n: t.detach().cpu() for n, t in self.fisher.items()},
                "anchor": {n: t.detach().cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` output, moving the tensors to ``device``."""
        self.mode, self.gamma, self.num_stages = state["mode"], float(state["gamma"]), int(state["num_stages"])
        self.fisher = {n: t.to(device) for n, t in state["fisher"].items()}
        self.anchor = {n: t.to(device) for n, t in state["anchor"].items()}

    def to(self, device: torch.device | str) -> ElasticWeightConsolidation:
        """Move fisher and anchor to ``device`` (in place); returns self."""
        self.fisher = {n: t.to(device) for n, t in self.fisher.items()}
        self.anchor = {n: t.to(device) for n, t in self.anchor.items()}
        return self


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      class_dim: int = 1) -> torch.Tensor:
    """``T^2 * mean_voxels KL(softmax(teacher / T) || softmax(student / T))`` over the class axis, in float32.

    Args:
        student_logits: logits of the model being trained.
        teacher_logits: logits of the frozen old model (no gradient flows into them).
        temperature: ``T > 0``; Li & Hoiem use 2.
        class_dim: the class axis (1 for nnU-Net's ``(N, C, *spatial)``).

    Shape:
        both ``(N, C, *spatial)`` (any number of spatial axes), equal shapes.

    Returns:
        A scalar tensor; 0 when the logits agree.

    Raises:
        ValueError: shapes differ or ``temperature <= 0``.
    """
    if not temperature > 0.0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student and teacher logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; the teacher must be a "
                         f"copy of the same network with the same deep-supervision setting")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=class_dim)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=class_dim)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=class_dim)
    return temperature ** 2 * kl.mean()


def deep_supervision_distillation_loss(student_outputs: torch.Tensor | Sequence[torch.Tensor],
                                       teacher_outputs: torch.Tensor | Sequence[torch.Tensor],
                                       temperature: float = 2.0,
                                       weights: Sequence[float] | None = None) -> torch.Tensor:
    """:func:`distillation_loss` of one output, or the weighted sum over a deep-supervision list.

    Args:
        student_outputs: one logits tensor, or nnU-Net's list (highest resolution first).
        teacher_outputs: the teacher's outputs, same structure and shapes.
        temperature: ``T > 0``.
        weights: per-output weights (nnU-Net's ``DeepSupervisionWrapper.weight_factors``); None = equal
            weights ``1 / len(outputs)``. Outputs with weight 0 are not computed.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: one side is a list and the other not, the lengths differ, or ``weights`` has the
            wrong length.
    """
    if isinstance(student_outputs, torch.Tensor) and isinstance(teacher_outputs, torch.Tensor):
        return distillation_loss(student_outputs, teacher_outputs, temperature)
    if isinstance(student_outputs, torch.Tensor) or isinstance(teacher_outputs, torch.Tensor):
        raise ValueError("deep_supervision_distillation_loss: pass two tensors or two lists of outputs; got one of "
                         "each (enable or disable deep supervision on the teacher as on the student)")
    if len(student_outputs) != len(teacher_outputs) or not student_outputs:
        raise ValueError(f"deep_supervision_distillation_loss: expected two non-empty lists of equal length, got "
                         f"{len(student_outputs)} and {len(teacher_outputs)} outputs")
    if weights is None:
        weights = [1.0 / len(student_outputs)] * len(student_outputs)
    if len(weights) != len(student_outputs):
        raise ValueError(f"deep_supervision_distillation_loss: weights has {len(weights)} entries for "
                         f"{len(student_outputs)} outputs; pass one weight per output")
    terms = [float(w) * distillation_loss(s, t, temperature)
             for w, s, t in zip(weights, student_outputs, teacher_outputs) if w != 0.0]
    if not terms:
        raise ValueError("deep_supervision_distillation_loss: every weight is 0; give at least one output weight > 0")
    return torch.stack(terms).sum()
