"""AvaGrad with early stopping (Sheikh, Klasen, Schultz, DART 2022) as nnU-Net trainers.

nnU-Net's recipe (poly learning-rate schedule, augmentation, Dice + CE loss, gradient clipping at 12) with
the optimizer swapped for AvaGrad (lr 10, eps 0.1) and 50 instead of 1000 epochs. The paper's comparison
points that nnunetv2 does not ship are here too (``S``: SGD, ``A``: Adam, ``AG``: AvaGrad; number: epochs):

============================================  =============  ==================================
class                                         paper column   nnunetv2 equivalent
============================================  =============  ==================================
``nnUNetTrainer`` (stock)                     S-1000
``nnUNetTrainerEarlyStopSGD_25epochs``        S-25
``nnUNetTrainer_50epochs`` (stock)            S-50
``nnUNetTrainerEarlyStopAdam_25epochs``       A-25           (``nnUNetTrainerAdam`` + 25 epochs)
``nnUNetTrainerEarlyStopAdam_50epochs``       A-50
``nnUNetTrainerAvaGrad_25epochs``             AG-25
``nnUNetTrainerAvaGrad``                      AG-50
``nnUNetTrainerAvaGrad_1000epochs``           AG-1000
``nnUNetTrainerNoDA`` (stock)                 S-1000-noAug
``nnUNetTrainerEarlyStopSGDNoDA_25epochs``    S-25-noAug
``nnUNetTrainerEarlyStopAdamNoDA_25epochs``   A-25-noAug
``nnUNetTrainerAvaGradNoDA_25epochs``         AG-25-noAug
============================================  =============  ==================================

:class:`AvaGradMixin` gives any trainer the optimizer (``class X(AvaGradMixin, nnUNetTrainerY)``);
:class:`LayerSpeedMixin` records the paper's Fig. 2 statistic into ``layer_speed.json``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

from nnunet_ext.core.avagrad import AvaGrad
from nnunet_ext.core.layer_speed import GROUPS, UpdateMeter, layer_group
from nnunet_ext.trainers.budget import BudgetMixin, FixedEpochsMixin
from nnunet_ext.trainers.toolkit import EpochLog, NNExtTrainerMixin, unwrap

__all__ = ["LAYER_SPEED_FILENAME", "AvaGradMixin", "LayerSpeedMixin", "nnUNetTrainerAvaGrad",
           "nnUNetTrainerAvaGrad_25epochs", "nnUNetTrainerAvaGrad_1000epochs", "nnUNetTrainerAvaGrad_demo",
           "nnUNetTrainerAvaGrad_layerspeed", "nnUNetTrainerAvaGradNoDA_25epochs",
           "nnUNetTrainerEarlyStopAdam_25epochs", "nnUNetTrainerEarlyStopAdam_50epochs",
           "nnUNetTrainerEarlyStopAdamNoDA_25epochs", "nnUNetTrainerEarlyStopSGD_25epochs",
           "nnUNetTrainerEarlyStopSGDNoDA_25epochs", "nnUNetTrainerSGD_layerspeed"]

LAYER_SPEED_FILENAME = "layer_speed.json"


class AvaGradMixin(NNExtTrainerMixin):
    """Replaces nnU-Net's SGD with :class:`~nnunet_ext.core.avagrad.AvaGrad`; keeps the poly schedule.

    Attributes:
        avagrad_lr: learning rate (paper: 10). Also becomes nnU-Net's ``initial_lr`` for the schedule.
        avagrad_eps: adaptability epsilon (paper: 0.1).
        avagrad_betas: ``(beta1, beta2)`` (paper: AvaGrad defaults 0.9, 0.999).
        avagrad_weight_decay: decoupled weight decay (paper: not used, 0). nnU-Net's ``weight_decay`` (3e-5,
            an L2 term for SGD) is not applied: with lr 10 it would shrink weights by 3e-4 per step.
    """

    avagrad_lr: float = 10.0
    avagrad_eps: float = 0.1
    avagrad_betas: tuple[float, float] = (0.9, 0.999)
    avagrad_weight_decay: float = 0.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.avagrad_lr

    def configure_optimizers(self):
        optimizer = AvaGrad(self.network.parameters(), lr=self.avagrad_lr, betas=self.avagrad_betas,
                            eps=self.avagrad_eps, weight_decay=self.avagrad_weight_decay)
        lr_scheduler = PolyLRScheduler(optimizer, self.avagrad_lr, self.num_epochs)
        return optimizer, lr_scheduler

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"AvaGrad: lr {self.avagrad_lr}, eps {self.avagrad_eps}, betas {self.avagrad_betas}, "
            f"decoupled weight decay {self.avagrad_weight_decay}, poly schedule over {self.num_epochs} epochs")


class LayerSpeedMixin(NNExtTrainerMixin):
    """Records, per epoch, each U-Net conv layer's mean absolute weight update per iteration (paper Fig. 2).

    Written (rank 0) to ``<fold folder>/layer_speed.json``: ``{"groups": {layer: group}, "epochs": [...],
    "updates": {layer: [value per epoch]}}``. Costs one copy of the tracked weights per iteration, so it is
    a separate setting (``record_layer_speed``), off in the plain trainers. Resuming with ``--c`` keeps the
    epochs up to the checkpoint and drops later ones (:class:`~nnunet_ext.trainers.toolkit.EpochLog`).
    ``decoder.seg_layers.0`` (the lowest-resolution head) records 0: nnU-Net gives that deep-supervision output
    the loss weight 0, so it never trains.
    """

    record_layer_speed: bool = True

    def on_train_start(self):
        super().on_train_start()
        if not self.record_layer_speed:
            return
        tracked = {n: p for n, p in unwrap(self.network).named_parameters() if layer_group(n) is not None}
        self._layer_meter = UpdateMeter(tracked)
        header = {"groups": {n: layer_group(n) for n in tracked}, "group_order": list(GROUPS),
                  "optimizer": type(self.optimizer).__name__}
        self._layer_speed = EpochLog.for_trainer(self, LAYER_SPEED_FILENAME, header, columns=tuple(tracked),
                                                 group="updates")

    def train_step(self, batch: dict) -> dict:
        if not self.record_layer_speed:
            return super().train_step(batch)
        self._layer_meter.before_step()
        out = super().train_step(batch)
        self._layer_meter.after_step()
        return out

    def on_epoch_end(self):
        if self.record_layer_speed:
            self._layer_speed.append(self.current_epoch, self._layer_meter.pop_means())
        super().on_epoch_end()


class nnUNetTrainerAvaGrad(FixedEpochsMixin, AvaGradMixin, nnUNetTrainer):
    """AG-50: AvaGrad (lr 10, eps 0.1), 50 epochs, everything else as nnU-Net. The paper's proposed default."""

    epochs = 50


class nnUNetTrainerAvaGrad_25epochs(nnUNetTrainerAvaGrad):
    """AG-25."""

    epochs = 25


class nnUNetTrainerAvaGrad_1000epochs(nnUNetTrainerAvaGrad):
    """AG-1000: AvaGrad without early stopping (the paper shows it generalises worse)."""

    epochs = 1000


class nnUNetTrainerAvaGrad_layerspeed(LayerSpeedMixin, nnUNetTrainerAvaGrad):
    """AG-50 that also writes ``layer_speed.json`` (paper Fig. 2)."""


class nnUNetTrainerSGD_layerspeed(LayerSpeedMixin, nnUNetTrainer):
    """Stock nnU-Net (S-1000) that also writes ``layer_speed.json`` (paper Fig. 2)."""


class nnUNetTrainerEarlyStopSGD_25epochs(FixedEpochsMixin, nnUNetTrainer):
    """S-25: stock SGD recipe, 25 epochs (nnunetv2 ships 20 and 50 but not 25)."""

    epochs = 25


class nnUNetTrainerEarlyStopAdam_25epochs(FixedEpochsMixin, nnUNetTrainerAdam):
    """A-25: nnunetv2's ``nnUNetTrainerAdam`` (AdamW, amsgrad, lr 1e-2, poly), 25 epochs."""

    epochs = 25


class nnUNetTrainerEarlyStopAdam_50epochs(nnUNetTrainerEarlyStopAdam_25epochs):
    """A-50."""

    epochs = 50


class nnUNetTrainerEarlyStopSGDNoDA_25epochs(FixedEpochsMixin, nnUNetTrainerNoDA):
    """S-25-noAug (paper Table 3)."""

    epochs = 25


class nnUNetTrainerEarlyStopAdamNoDA_25epochs(FixedEpochsMixin, nnUNetTrainerNoDA):
    """A-25-noAug (paper Table 3)."""

    epochs = 25
    configure_optimizers = nnUNetTrainerAdam.configure_optimizers


class nnUNetTrainerAvaGradNoDA_25epochs(FixedEpochsMixin, AvaGradMixin, nnUNetTrainerNoDA):
    """AG-25-noAug (paper Table 3)."""

    epochs = 25


class nnUNetTrainerAvaGrad_demo(BudgetMixin, nnUNetTrainerAvaGrad):
    """The ``nnext demo`` budget for AvaGrad with early stopping: 3 epochs x 25 iterations (1/4 of stock's).

    The budget alone would give AvaGrad's 50 epochs x 12/1000 = 1 epoch; the demo trains 3.
    """

    budget = "demo"
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 3}
