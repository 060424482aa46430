"""AvaGrad: an adaptive optimizer whose learning rate and adaptability (epsilon) are decoupled.

Paper: P. Savarese, D. McAllester, S. Babu, M. Maire, "Domain-independent Dominance of Adaptive Methods",
CVPR 2021 (arXiv:1912.01823). Used for nnU-Net with few epochs by R. Sheikh, M. Klasen, T. Schultz,
"Adaptive Optimization with Fewer Epochs Improves Across-Scanner Generalization of U-Net Based Medical
Image Segmentation", DART 2022 (lr = 10, eps = 0.1).

Update for step t (per parameter group; ``d`` is the number of scalars in the group)::

    m_t     = beta1 * m_{t-1} + (1 - beta1) * g_t
    eta_t   = 1 / (sqrt(v_{t-1}) + eps)                     # uses the *previous* second moment
    w_{t+1} = w_t - lr_t * eta_t / ||eta_t / sqrt(d)||_2 * m_t
    v_t     = beta2 * v_{t-1} + (1 - beta2) * g_t ** 2

with ``m_0 = v_0 = 0``. Because ``eta_t`` is normalised, ``eps`` only sets how adaptive the update is
(large ``eps``: SGD with momentum; small: Adam-like) while ``lr`` alone sets its size. Optional weight
decay is decoupled (``w <- w - lr_t * weight_decay * w`` before the update, as AdamW).

Deviations from the reference implementation in ``pytorch-optimizer`` (``pytorch_optimizer.AvaGrad``),
which follows the authors' original one-pass code; we implement the paper's equations instead:

1. The normaliser: ours is computed from the same ``eta_t`` that scales the update; the reference uses the
   norm of the previous step's ``eta`` (a lag that saves a second pass over the parameters).
2. The first step: ours updates with ``eta_1 = 1/eps`` (a momentum-SGD step of size ``lr * (1 - beta1)``);
   the reference only accumulates moments in step 1.
3. Bias correction: none, as in the paper's equations; the reference divides ``sqrt(v)`` by
   ``sqrt(1 - beta2^t)``.

``tests/core/test_avagrad.py`` checks ours step for step against an independent float64 transcription of
the equations above, and against the reference on problems where it converges, so the deviations are
visible and bounded.

BibTeX::

    @inproceedings{savarese2021domain,
      title={Domain-independent Dominance of Adaptive Methods},
      author={Savarese, Pedro and McAllester, David and Babu, Sudarshan and Maire, Michael},
      booktitle={CVPR}, pages={16286--16295}, year={2021}}

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = AvaGrad([w], lr=0.1, eps=0.1)
    >>> for _ in range(3):
    ...     opt.zero_grad(); (w ** 2).sum().backward(); opt.step()
    >>> bool((w.detach().abs() < torch.tensor([1.0, 2.0])).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class AvaGrad(Optimizer):
    """AvaGrad with decoupled learning rate and epsilon (see the module docstring for the update).

    Args:
        params: parameters or parameter-group dicts.
        lr: learning rate ``alpha`` (> 0). Sheikh et al. use 10 with nnU-Net.
        betas: ``(beta1, beta2)`` in ``[0, 1)``.
        eps: adaptability ``epsilon`` (> 0). Sheikh et al. use 0.1.
        weight_decay: decoupled weight decay (>= 0), multiplied by the current learning rate.

    Raises:
        ValueError: a hyperparameter is out of range (the message names it and the value received).

    State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (v); per group: ``step``.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 0.1, weight_decay: float = 0.0):
        if not lr > 0.0:
            raise ValueError(f"AvaGrad: lr must be > 0, got {lr!r}")
        if not eps > 0.0:
            raise ValueError(f"AvaGrad: eps must be > 0 (it is the adaptability, not a tiny constant), got {eps!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AvaGrad: betas must be two values in [0, 1), got {betas!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AvaGrad: weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("weight_decay", 0.0)
            group.setdefault("step", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AvaGrad does not support sparse gradients")
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]

            if group["weight_decay"] != 0.0:
                torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            # eta_t = 1 / (sqrt(v_{t-1}) + eps), normalised by its RMS over the whole group
            etas = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(etas, eps)
            torch._foreach_reciprocal_(etas)
            num_scalars = sum(e.numel() for e in etas)
            norms = torch._foreach_norm(etas)
            acc = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
            sum_sq = torch.stack([n.to(acc) for n in norms]).square().sum()
            rms = torch.sqrt(sum_sq / num_scalars)
            torch._foreach_mul_(etas, exp_avgs)
            torch._foreach_div_(etas, rms)
            torch._foreach_add_(params, etas, alpha=-lr)
            # v_t after the update: the next step uses it
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        return loss
