"""nnU-Net's optimizer step, shared by trainers that make their own updates.

nnU-Net's ``train_step`` runs the forward pass under CUDA autocast and then backward -> unscale -> clip the
gradient norm at 12 -> step -> update with its ``GradScaler`` (plain backward -> clip -> step without AMP).
Trainers that make several updates per batch (CateNorm, LSCL) or add a loss term (EWC, LwF) reuse these
two pieces so they cannot drift from nnU-Net or from each other.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast

#: nnU-Net's gradient-norm clip (``nnUNetTrainer.train_step``)
GRAD_CLIP_NORM = 12


def amp_context(device: torch.device) -> AbstractContextManager:
    """nnU-Net's autocast: on CUDA only (CPU and MPS run in float32)."""
    return autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()


def backward_and_step(trainer, loss: torch.Tensor) -> None:
    """Backward ``loss`` and step ``trainer.optimizer`` as nnU-Net does; with AMP a full GradScaler cycle, so it
    may run several times per batch."""
    if trainer.grad_scaler is not None:
        trainer.grad_scaler.scale(loss).backward()
        trainer.grad_scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRAD_CLIP_NORM)
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRAD_CLIP_NORM)
        trainer.optimizer.step()
