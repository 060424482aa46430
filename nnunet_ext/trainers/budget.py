"""Stock nnU-Net training with a CPU-sized budget (fewer epochs and iterations), nothing else changed.

nnU-Net's own ``nnUNetTrainer_5epochs`` etc. keep 250 iterations per epoch; on a 2-core CPU that is
minutes per epoch even for tiny data. These trainers shrink the iterations too, so end-to-end checks
and the demo finish in minutes. :class:`CPUBudgetMixin` gives any trainer (ours or stock) the same
budget by multiple inheritance: ``class nnUNetTrainerX_demo(CPUBudgetMixin, nnUNetTrainerX)``.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.trainers.avagrad import nnUNetTrainerAvaGrad


class CPUBudgetMixin:
    """Overrides nnU-Net's training length after ``nnUNetTrainer.__init__``.

    Attributes:
        budget_epochs: ``num_epochs``.
        budget_iterations: ``num_iterations_per_epoch`` (nnU-Net default 250).
        budget_val_iterations: ``num_val_iterations_per_epoch`` (nnU-Net default 50).
    """

    budget_epochs: int = 10
    budget_iterations: int = 25
    budget_val_iterations: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.budget_epochs
        self.num_iterations_per_epoch = self.budget_iterations
        self.num_val_iterations_per_epoch = self.budget_val_iterations


class nnUNetTrainerCPU_smoke(CPUBudgetMixin, nnUNetTrainer):
    """4 epochs x 15 iterations: the end-to-end tests' budget; learns enough to beat trivial predictions."""

    budget_epochs = 4
    budget_iterations = 15
    budget_val_iterations = 2


class nnUNetTrainerCPU_demo(CPUBudgetMixin, nnUNetTrainer):
    """The ``nnext demo`` budget for stock nnU-Net: 12 epochs x 25 iterations."""

    budget_epochs = 12
    budget_iterations = 25
    budget_val_iterations = 5


class nnUNetTrainerAvaGrad_demo(CPUBudgetMixin, nnUNetTrainerAvaGrad):
    """The ``nnext demo`` budget for AvaGrad with early stopping: 3 epochs x 25 iterations (1/4 of stock's)."""

    budget_epochs = 3
    budget_iterations = 25
    budget_val_iterations = 5
