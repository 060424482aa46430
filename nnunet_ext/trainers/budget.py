"""Stock nnU-Net training with a CPU-sized budget (fewer epochs and iterations), nothing else changed.

nnU-Net's own ``nnUNetTrainer_5epochs`` etc. keep 250 iterations per epoch; on a 2-core CPU that is
minutes per epoch even for tiny data. These trainers shrink the iterations too, so end-to-end checks
and the demo finish in minutes. :class:`CPUBudgetMixin` gives any trainer (ours or stock) the same
budget by multiple inheritance: ``class nnUNetTrainerX_demo(CPUBudgetMixin, nnUNetTrainerX)``.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.utils.seeding import seed_everything


class FixedEpochsMixin:
    """Sets nnU-Net's ``num_epochs`` from the class attribute ``epochs`` after ``nnUNetTrainer.__init__``."""

    epochs: int = 1000

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs


class CPUBudgetMixin(FixedEpochsMixin):
    """Overrides nnU-Net's training length (epochs and iterations) after ``nnUNetTrainer.__init__``.

    Attributes:
        epochs: ``num_epochs``.
        budget_iterations: ``num_iterations_per_epoch`` (nnU-Net default 250).
        budget_val_iterations: ``num_val_iterations_per_epoch`` (nnU-Net default 50).
        seed: if set, python/numpy/torch are seeded when the trainer is constructed (before nnU-Net builds the
            network and the data loaders). With nnU-Net's single-threaded augmenter (``nnUNet_n_proc_DA=0``) a
            CPU run then repeats exactly; the tests' ``*_smoke`` trainers use 0 so their numeric bounds are
            checked against one known run, not a draw. ``None`` (default): nnU-Net's usual unseeded run.
    """

    epochs = 10
    budget_iterations: int = 25
    budget_val_iterations: int = 5
    seed: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = self.budget_iterations
        self.num_val_iterations_per_epoch = self.budget_val_iterations
        if self.seed is not None:
            seed_everything(self.seed)


class nnUNetTrainerCPU_smoke(CPUBudgetMixin, nnUNetTrainer):
    """4 epochs x 15 iterations: the end-to-end tests' budget; learns enough to beat trivial predictions."""

    epochs = 4
    budget_iterations = 15
    budget_val_iterations = 2
    seed = 0


class nnUNetTrainerCPU_demo(CPUBudgetMixin, nnUNetTrainer):
    """The ``nnext demo`` budget for stock nnU-Net: 12 epochs x 25 iterations."""

    epochs = 12
    budget_iterations = 25
    budget_val_iterations = 5

