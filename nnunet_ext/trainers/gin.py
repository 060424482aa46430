"""GIN and GIN-IPA (Ouyang et al., IEEE TMI 2022) as composable nnU-Net augmentation, and augmentation combos.

Both act on the training batch **on the training device, after nnU-Net's own augmentation** (the data loader's
transforms: stock, DA5 or any other), in ``train_step``, and leave test time alone (the network is whatever
the rest of the trainer builds). The algorithms are in :mod:`nnunet_ext.core.gin`.

* :class:`GINMixin`: each sample is replaced by a GIN view (a fresh random shallow network mixed with the
  input by ``alpha ~ U(0, 1)``, standardised back to the sample's per-channel mean and std), then the batch is
  handed to ``super().train_step``. Because it only transforms the batch before delegating, it composes with
  any trainer whose ``train_step`` reads ``batch["data"]``: stock, DA5, CateNorm (both passes see the GIN
  views), LSCL (the curriculum restyles the GIN views), ...
* :class:`GINIPAMixin`: each sample gives the paper's two complementary GIN-IPA views; the batch handed to
  ``super().train_step`` is ``[views a; views b]`` (twice the samples, targets repeated), so nnU-Net's loss
  (Dice + CE with deep supervision) supervises both views, and ``self.loss`` adds ``ipa_consistency_weight``
  times the KL consistency between the two views' softmax predictions (full-resolution output only; the
  deep-supervision outputs get the segmentation loss only). The loss wrapper is installed by
  ``_build_loss``; it adds the term only inside ``train_step``, so validation measures the plain loss.
  The forward pass, AMP autocast, GradScaler and clipping are the ones of the ``train_step`` it delegates to.

The augmentation's own generator is saved in every checkpoint (``nnext_gin_generator``), so a run resumed with
``--c`` draws what the uninterrupted run would have drawn. Per-epoch values go to ``<fold folder>/gin.json``: the settings, and per epoch the batches seen, the mean
``alpha`` and, for GIN-IPA, the mean blending map value, the mean segmentation and consistency losses (the
loss nnU-Net logs as ``train_losses`` is their weighted sum).

Combining: put the mixin first, ``class MyTrainer(GINMixin, nnUNetTrainerCateNorm): pass``. Shipped:
``nnUNetTrainerGIN``, ``nnUNetTrainerGINIPA`` (``_keepBatch``: nnU-Net's network batch size),
``nnUNetTrainerGINDA5`` (GIN after DA5's pipeline),
``nnUNetTrainerCateNormGIN``, ``nnUNetTrainerStyleCurriculumDA5`` (LSCL + DA5), and ``_smoke`` budgets.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

from nnunet_ext.core.gin import (
    GINConfig,
    apply_gin,
    apply_ipa,
    pseudo_correlation_map,
    sample_gin_parameters,
    sample_ipa_parameters,
    view_consistency,
)
from nnunet_ext.trainers.budget import BudgetMixin
from nnunet_ext.trainers.catenorm import nnUNetTrainerCateNorm
from nnunet_ext.trainers.style_curriculum import StyleCurriculumMixin
from nnunet_ext.trainers.toolkit import (
    EpochLog,
    MethodGenerator,
    NNExtTrainerMixin,
    PairedConsistencyLoss,
    batch_to_device,
    half_batch,
)

__all__ = [
    "GIN_GENERATOR_KEY",
    "GIN_LOG_FILENAME",
    "GINIPAMixin",
    "GINMixin",
    "PairedConsistencyLoss",
    "nnUNetTrainerCateNormGIN",
    "nnUNetTrainerCateNormGIN_smoke",
    "nnUNetTrainerGIN",
    "nnUNetTrainerGINDA5",
    "nnUNetTrainerGINDA5_smoke",
    "nnUNetTrainerGINIPA",
    "nnUNetTrainerGINIPA_keepBatch",
    "nnUNetTrainerGINIPA_smoke",
    "nnUNetTrainerGIN_smoke",
    "nnUNetTrainerStyleCurriculumDA5",
    "nnUNetTrainerStyleCurriculumDA5_smoke",
]

GIN_LOG_FILENAME = "gin.json"
#: checkpoint key of the augmentation generator's state
GIN_GENERATOR_KEY = "nnext_gin_generator"

_DEFAULTS = GINConfig()  # the trainers' defaults are the core's (authors' settings, our normalization)


class _GINAugmentation(NNExtTrainerMixin):
    """Settings, generator and ``gin.json`` log shared by :class:`GINMixin` and :class:`GINIPAMixin`.

    Attributes:
        gin_n_layers: convolutions per GIN network (authors' code: 4).
        gin_interm_channels: channels between them (authors' code: 2).
        gin_kernel_sizes: kernel sizes, one drawn per layer and batch (authors' code: 1 or 3).
        gin_negative_slope: LeakyReLU slope (authors' code: torch's default 0.01).
        gin_alpha_range: range of the per-sample mixing coefficient ``alpha`` (authors' code: U(0, 1)).
        gin_normalization: ``"standardize"`` (default: per sample and channel back to the input's mean and std,
            so nnU-Net's z-scored inputs stay z-scored) or ``"frobenius"`` (the paper's norm matching only).
        gin_seed: seed of the augmentation's own ``torch.Generator``; None: drawn from torch's global generator
            once the network is built (so ``BudgetMixin.seed`` makes runs repeat). DDP ranks use
            :func:`~nnunet_ext.utils.seeding.rank_seed`. Its state is saved in the checkpoint (``--c`` continues it).
    """

    gin_n_layers: int = _DEFAULTS.n_layers
    gin_interm_channels: int = _DEFAULTS.interm_channels
    gin_kernel_sizes: tuple[int, ...] = _DEFAULTS.kernel_sizes
    gin_negative_slope: float = _DEFAULTS.negative_slope
    gin_alpha_range: tuple[float, float] = _DEFAULTS.alpha_range
    gin_normalization: str = _DEFAULTS.normalization
    gin_seed: int | None = None

    def gin_config(self) -> GINConfig:
        """The :class:`~nnunet_ext.core.gin.GINConfig` of the class attributes (validated)."""
        try:
            return GINConfig(self.gin_n_layers, self.gin_interm_channels, tuple(self.gin_kernel_sizes),
                             self.gin_negative_slope, tuple(self.gin_alpha_range), self.gin_normalization)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: bad gin_* class attribute: {e}") from e

    def gin_settings(self) -> dict[str, Any]:
        return {"gin": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.gin_config()).items()},
                "seed": self.gin_seed}

    def initialize(self):
        if self.is_cascaded:
            raise NotImplementedError(
                f"{type(self).__name__} transforms every input channel; cascade stages get the previous stage's "
                f"segmentation as extra channels. Use a 2d or 3d_fullres configuration")
        self._gin = self.gin_config()
        super().initialize()
        self._gin_rng = MethodGenerator(GIN_GENERATOR_KEY, self.gin_seed, self.local_rank)
        self._gin_generator = self._gin_rng.generator
        self._gin_epoch: dict[str, list[float]] = {}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        """The augmentation generator's state, so ``--c`` continues its random sequence (rank 0's, saved once)."""
        return {**super().extra_checkpoint_state(), **self._gin_rng.checkpoint_state()}

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self._gin_rng.restore(checkpoint, self.is_ddp)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"{type(self).__name__} augmentation on the device after nnU-Net's: "
                               f"{self.gin_settings()}")
        self._gin_log = EpochLog.for_trainer(self, GIN_LOG_FILENAME, {"settings": self.gin_settings()},
                                             layout="records")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._gin_epoch = {}

    def _gin_record(self, **values: float) -> None:
        for k, v in values.items():
            self._gin_epoch.setdefault(k, []).append(float(v))

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        entry: dict[str, Any] = {"batches": len(self._gin_epoch.get("alpha", []))}
        entry.update({f"mean_{k}": float(np.mean(v)) for k, v in self._gin_epoch.items()})
        self._gin_log.append(self.current_epoch, entry)


class GINMixin(_GINAugmentation):
    """GIN on every training batch after nnU-Net's augmentation, then the ``train_step`` of the next class.

    Attributes: the ``gin_*`` settings (see the module docstring of :mod:`nnunet_ext.trainers.gin`).
    """

    def train_step(self, batch: dict) -> dict:
        data, target = batch_to_device(batch, self.device)
        with torch.no_grad():
            params = sample_gin_parameters(data.shape[0], data.shape[1], data.ndim - 2, self._gin,
                                           self._gin_generator, data.device, data.dtype)
            data = apply_gin(data, params, self._gin)
        self._gin_record(alpha=params.alpha.mean())
        return super().train_step({**batch, "data": data, "target": target})


class GINIPAMixin(_GINAugmentation):
    """GIN-IPA: two complementary views per sample, both supervised, plus the KL consistency between them.

    Attributes:
        ipa_grid_cells: B-spline cells of the blending map per spatial axis (int or one per axis); 4 = a
            control-point spacing of 1/4 of the patch side (authors' setting for 192 x 192 images).
        ipa_consistency_weight: weight of the consistency term (authors' code: 10).
        ipa_keep_batch_size: False (the paper): both views of every sample, i.e. twice nnU-Net's batch through
            the network. True: both views of a random half of the samples (``B // 2``, at least 1), so the
            network batch stays nnU-Net's (GPU memory, time per iteration) and each iteration sees half the cases.
        gin_*: as :class:`GINMixin`.
    """

    ipa_grid_cells: int | tuple[int, ...] = 4
    ipa_consistency_weight: float = 10.0
    ipa_keep_batch_size: bool = False

    def gin_settings(self) -> dict[str, Any]:
        cells = self.ipa_grid_cells
        return {**super().gin_settings(), "ipa_grid_cells": list(cells) if isinstance(cells, tuple) else cells,
                "ipa_consistency_weight": self.ipa_consistency_weight,
                "ipa_keep_batch_size": self.ipa_keep_batch_size, "consistency_on": "full-resolution output",
                "views_per_sample": 2}

    def initialize(self):
        if self.label_manager.has_regions:
            raise NotImplementedError(f"{type(self).__name__}: the consistency term compares softmax class "
                                      f"distributions; region-based training (sigmoid outputs) is not supported")
        if not float(self.ipa_consistency_weight) >= 0:
            raise ValueError(f"{type(self).__name__}.ipa_consistency_weight must be >= 0, got "
                             f"{self.ipa_consistency_weight!r}")
        super().initialize()

    def _build_loss(self) -> PairedConsistencyLoss:
        self._ipa_loss = PairedConsistencyLoss(super()._build_loss(), self.ipa_consistency_weight, view_consistency)
        return self._ipa_loss

    def train_step(self, batch: dict) -> dict:
        data, target = batch_to_device(batch, self.device)
        if self.ipa_keep_batch_size:
            data, target = half_batch(data, target, self._gin_generator)
        with torch.no_grad():
            params = sample_ipa_parameters(data.shape[0], data.shape[1], data.ndim - 2, self._gin,
                                           self.ipa_grid_cells, self._gin_generator, data.device, data.dtype)
            view_a, view_b = apply_ipa(data, params, self._gin)
            blend = pseudo_correlation_map(params.control_points, data.shape[2:]).mean()
        target = [torch.cat([t, t]) for t in target] if isinstance(target, list) else torch.cat([target, target])
        loss = self._ipa_loss
        loss.records.clear()
        with loss.pairing():
            out = super().train_step({**batch, "data": torch.cat([view_a, view_b]), "target": target})
        if not loss.records:
            raise RuntimeError(f"{type(self).__name__}: the train_step after GINIPAMixin never called self.loss, so "
                               f"the consistency term was not applied; put GINIPAMixin first in the class bases")
        alpha = torch.cat([params.gin_1.alpha, params.gin_2.alpha]).mean()
        self._gin_record(alpha=alpha, blend=blend,
                         segmentation_loss=torch.stack([s for s, _ in loss.records]).mean(),
                         consistency_loss=torch.stack([c for _, c in loss.records]).mean())
        return out


class nnUNetTrainerGIN(GINMixin, nnUNetTrainer):
    """Stock nnU-Net with GIN on every training batch (the authors' settings)."""


class nnUNetTrainerGINIPA(GINIPAMixin, nnUNetTrainer):
    """Stock nnU-Net with GIN-IPA: two views per sample, consistency weight 10 (the authors' settings)."""


class nnUNetTrainerGINIPA_keepBatch(nnUNetTrainerGINIPA):
    """GIN-IPA with nnU-Net's network batch size: both views of half of each batch's samples."""

    ipa_keep_batch_size = True


class nnUNetTrainerGINDA5(GINMixin, nnUNetTrainerDA5):
    """nnU-Net's strong augmentation (``nnUNetTrainerDA5``), then GIN on the device."""


class nnUNetTrainerCateNormGIN(GINMixin, nnUNetTrainerCateNorm):
    """CateNorm (both passes of stage two, and the warm-up) trained on GIN views."""


class nnUNetTrainerStyleCurriculumDA5(StyleCurriculumMixin, nnUNetTrainerDA5):
    """LSCL (from scratch, curriculum in the last 10% of the epochs) on DA5-augmented batches."""


#: the composition tests' budget: 2 epochs x 4 iterations, 1 validation iteration
_TINY: dict[str, int] = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1}


class nnUNetTrainerGIN_smoke(BudgetMixin, nnUNetTrainerGIN):
    """CPU test budget: 8 epochs x 25 iterations, seed 0 (as ``nnUNetTrainerGINIPA_smoke``)."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 8, "num_iterations_per_epoch": 25}


class nnUNetTrainerGINIPA_smoke(BudgetMixin, nnUNetTrainerGINIPA):
    """End-to-end test budget: 8 epochs x 25 iterations, seed 0.

    GIN-IPA learns more slowly than stock nnU-Net early on: with the stock smoke budget (4 x 15) the tiny demo
    model reached a test Dice of 0.03 (white matter never predicted); with 8 x 25 it reached 0.65 (seed 0).
    """

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 8, "num_iterations_per_epoch": 25}


class nnUNetTrainerGINDA5_smoke(BudgetMixin, nnUNetTrainerGINDA5):
    """Test budget: 2 epochs x 4 iterations, seed 0."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = _TINY


class nnUNetTrainerCateNormGIN_smoke(BudgetMixin, nnUNetTrainerCateNormGIN):
    """Test budget: 2 epochs x 4 iterations, warm-up 1 epoch, seed 0."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {**_TINY, "warmup_epochs": 1}


class nnUNetTrainerStyleCurriculumDA5_smoke(BudgetMixin, nnUNetTrainerStyleCurriculumDA5):
    """Test budget: 2 epochs x 4 iterations, the curriculum from epoch 1, seed 0."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = _TINY
    curriculum_warmup_fraction = 0.5
