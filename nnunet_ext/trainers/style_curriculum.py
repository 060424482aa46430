"""Style curriculum learning with a local gradient sign (LSCL; Liu et al., MICCAI 2021) as nnU-Net trainers.

Each training batch ``x_c`` (after nnU-Net's augmentation) is stylised once, ``z = S(x_c, x_s)``, with style
images ``x_s`` drawn from *other training cases*: the same batch rolled by one sample (a batch of one uses the
previous batch). Then Algorithm 1 runs on it: for ``i = 0..n`` the fused sample
``z_i = Gamma_i z + (1 - Gamma_i) x_c`` gets one forward/backward pass with nnU-Net's loss (deep supervision
included) and **one optimizer step** (``n + 1`` parameter updates per batch; ``z_0 = x_c``), and the same
backward pass gives ``grad_{z_i}`` from which ``Gamma_{i+1}`` grows (:mod:`nnunet_ext.core.style_curriculum`).
``Gamma`` lives only inside :meth:`StyleCurriculumMixin.train_step`, one map per batch, never in the model.

Warm-up: the first ``curriculum_warmup_fraction`` of the epochs are stock nnU-Net training (from scratch);
the rest runs the curriculum. ``_finetune`` trainers start the curriculum at epoch 0 and are meant for
``nnUNetv2_train ... -pretrained_weights CHECKPOINT`` (the paper fine-tunes a trained U-Net for 10 epochs):
the network has the stock state-dict keys, so any stock nnU-Net checkpoint of the same plans loads.

AMP: on CUDA each of the ``n + 1`` steps uses nnU-Net's autocast + GradScaler sequence (scale, unscale,
clip at 12, step, update). The input gradient is then scaled by the loss scale, which does not change its sign;
non-finite values (an overflowing step, which the scaler skips) give no ``Gamma`` growth there.

Per-epoch curriculum statistics go to ``<fold folder>/style_curriculum.json``: per curriculum step the mean
loss and mean ``Gamma``, the fraction of batches whose loss rose from step 0 to step n (the paper's Fig. 3a),
and the per-batch losses of the first ``curriculum_log_batches`` batches of each epoch.

Trainers (settings in the class name; n 3, eps 0.25, 4 x 4 LGS, Fourier amplitude mixing unless named):

- ``nnUNetTrainerStyleCurriculum``: from scratch, stock for the first 90% of 1000 epochs, LSCL after;
  ``_rotTTA``: the same with rotation TTA at inference.
- ``nnUNetTrainerStyleCurriculum_finetune``: the paper's protocol, LSCL in all 10 epochs, lr 1e-3, for
  ``-pretrained_weights``; ``_finetune_rotTTA``, ``_finetune_scl`` (SCL ablation: raw gradient sign),
  ``_finetune_random`` (random stylisation only: Gamma = 1, one update per batch).
- From scratch: ``_n1`` / ``_n5``, ``_eps0p1`` / ``_eps0p5``, ``_pool2`` / ``_pool8``, ``_scl``, ``_random``,
  ``_histogram`` / ``_intensity`` (other style sources).
- ``_smoke``, ``_finetune_rotTTA_smoke``: CPU budgets for tests.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)
from torch import nn

from nnunet_ext.core.style_curriculum import (
    FourierAmplitudeMix,
    HistogramMatch,
    RandomIntensityBias,
    curriculum_step,
    initial_gamma,
    style_fusion,
)
from nnunet_ext.networks.style_curriculum import RotationTTANetwork
from nnunet_ext.trainers.budget import BudgetMixin, FixedEpochsMixin
from nnunet_ext.trainers.toolkit import (
    EpochLog,
    NNExtTrainerMixin,
    amp_context,
    backward_and_step,
    batch_to_device,
    unwrap,
)

__all__ = ["CURRICULUM_LOG_FILENAME", "StyleCurriculumMixin", "nnUNetTrainerStyleCurriculum",
           "nnUNetTrainerStyleCurriculum_eps0p1", "nnUNetTrainerStyleCurriculum_eps0p5",
           "nnUNetTrainerStyleCurriculum_finetune", "nnUNetTrainerStyleCurriculum_finetune_random",
           "nnUNetTrainerStyleCurriculum_finetune_rotTTA", "nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke",
           "nnUNetTrainerStyleCurriculum_finetune_scl", "nnUNetTrainerStyleCurriculum_histogram",
           "nnUNetTrainerStyleCurriculum_intensity", "nnUNetTrainerStyleCurriculum_n1", "nnUNetTrainerStyleCurriculum_n5",
           "nnUNetTrainerStyleCurriculum_pool2", "nnUNetTrainerStyleCurriculum_pool8",
           "nnUNetTrainerStyleCurriculum_random", "nnUNetTrainerStyleCurriculum_rotTTA",
           "nnUNetTrainerStyleCurriculum_scl", "nnUNetTrainerStyleCurriculum_smoke"]

CURRICULUM_LOG_FILENAME = "style_curriculum.json"


class StyleCurriculumMixin(NNExtTrainerMixin):
    """Algorithm 1 (LSCL) in nnU-Net's ``train_step``; rotation TTA in the network.

    Attributes:
        curriculum_n: max learning iter ``n`` (paper: 3); ``n + 1`` updates per batch.
        curriculum_eps: learning step ``eps`` in (0, 1] (paper: 0.25).
        curriculum_pool_size: LGS pooling cell, an int for every spatial axis or one per axis (paper: 4 x 4).
        curriculum_update: ``"lgs"`` (LSCL) or ``"sign"`` (SCL ablation: raw per-voxel sign).
        curriculum_random_only: ablation "random stylisation": train on ``z`` (Gamma = 1), one update per batch.
        curriculum_warmup_fraction: fraction of ``num_epochs`` trained as stock nnU-Net before the curriculum.
        curriculum_style_source: style source class (:class:`~nnunet_ext.core.style_curriculum.StyleSource`).
        curriculum_style_kwargs: its keyword arguments.
        curriculum_log_batches: batches per epoch whose per-step losses are kept in the JSON log.
        finetune_lr: if set, replaces nnU-Net's ``initial_lr`` (poly schedule kept).
        rotation_tta: in-plane 0/90/180/270-degree TTA at inference (the default of the network's saved
            switch, see :mod:`nnunet_ext.networks.style_curriculum`).
    """

    curriculum_n: int = 3
    curriculum_eps: float = 0.25
    curriculum_pool_size: int | tuple[int, ...] = 4
    curriculum_update: str = "lgs"
    curriculum_random_only: bool = False
    curriculum_warmup_fraction: float = 0.9
    curriculum_style_source: type = FourierAmplitudeMix
    curriculum_style_kwargs: ClassVar[dict[str, Any]] = {"beta": 0.1, "strength": (0.5, 1.0)}
    curriculum_log_batches: int = 50
    finetune_lr: float | None = None
    rotation_tta: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.finetune_lr is not None:
            self.initial_lr = self.finetune_lr
        self._previous_batch: torch.Tensor | None = None
        self._epoch_losses: list[list[float]] = []
        self._epoch_gammas: list[list[float]] = []

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        net = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                 num_output_channels, enable_deep_supervision)
        return RotationTTANetwork(net, rotation_tta=cls.rotation_tta)

    # settings --------------------------------------------------------------------------------------------------
    @property
    def curriculum_start_epoch(self) -> int:
        """First epoch of the curriculum (earlier epochs are stock training)."""
        return round(self.curriculum_warmup_fraction * self.num_epochs)

    def curriculum_settings(self) -> dict[str, Any]:
        return {"n": self.curriculum_n, "eps": self.curriculum_eps, "pool_size": self.curriculum_pool_size,
                "update": self.curriculum_update, "random_stylisation_only": self.curriculum_random_only,
                "style_source": self.curriculum_style_source.__name__,
                "style_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in self.curriculum_style_kwargs.items()},
                "start_epoch": self.curriculum_start_epoch, "num_epochs": self.num_epochs,
                "initial_lr": self.initial_lr, "rotation_tta": self.rotation_tta}

    def _check_settings(self) -> None:
        if not isinstance(self.curriculum_n, int) or self.curriculum_n < 0:
            raise ValueError(f"curriculum_n must be an int >= 0, got {self.curriculum_n!r}")
        if not 0.0 < float(self.curriculum_eps) <= 1.0:
            raise ValueError(f"curriculum_eps must be in (0, 1], got {self.curriculum_eps!r}")
        if self.curriculum_update not in ("lgs", "sign"):
            raise ValueError(f"curriculum_update must be 'lgs' or 'sign', got {self.curriculum_update!r}")
        if not 0.0 <= float(self.curriculum_warmup_fraction) <= 1.0:
            raise ValueError(f"curriculum_warmup_fraction must be in [0, 1], got {self.curriculum_warmup_fraction!r}")

    # nnU-Net hooks ---------------------------------------------------------------------------------------------
    def initialize(self):
        self._check_settings()
        if self.is_cascaded:
            raise NotImplementedError(
                f"{type(self).__name__} restyles every input channel; cascade stages get the previous stage's "
                f"segmentation as extra channels. Use a 2d or 3d_fullres configuration")
        super().initialize()
        self.style_source = self.curriculum_style_source(**self.curriculum_style_kwargs)
        # until training starts, nnU-Net's -pretrained_weights may load a stock checkpoint (no TTA switch in it)
        unwrap(self.network).hide_method_state = True

    def on_train_start(self):
        super().on_train_start()
        unwrap(self.network).hide_method_state = False  # checkpoints from now on carry the TTA switch
        # the per-epoch pseudo-Dice measures the plain network (4x cheaper); final validation uses the TTA
        unwrap(self.network).enabled = False
        self.print_to_log_file(f"Style curriculum (LSCL): {self.curriculum_settings()}")
        self._curriculum_log = EpochLog.for_trainer(self, CURRICULUM_LOG_FILENAME,
                                                    {"settings": self.curriculum_settings()}, layout="records")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._epoch_losses, self._epoch_gammas = [], []

    def _style_images(self, data: torch.Tensor) -> torch.Tensor:
        """Other training cases: the batch rolled by one (or, for a batch of one, the previous batch)."""
        if data.shape[0] > 1:
            return torch.roll(data, 1, dims=0)
        previous = self._previous_batch
        self._previous_batch = data.detach().clone()
        return previous if previous is not None and previous.shape == data.shape else data

    def _update(self, z: torch.Tensor, target) -> float:
        """One parameter update on ``z`` with nnU-Net's loss, AMP and clipping (gradients reach ``z``)."""
        self.optimizer.zero_grad(set_to_none=True)
        with amp_context(self.device):
            loss = self.loss(self.network(z), target)
        backward_and_step(self, loss)
        return float(loss.detach().cpu())

    def train_step(self, batch: dict) -> dict:
        if self.current_epoch < self.curriculum_start_epoch:
            return super().train_step(batch)
        data, target = batch_to_device(batch, self.device)
        with torch.no_grad():
            stylised = self.style_source(data, self._style_images(data)).detach()
        if self.curriculum_random_only:
            loss = self._update(stylised, target)
            self._epoch_losses.append([loss])
            self._epoch_gammas.append([1.0])
            return {"loss": np.array(loss)}
        spatial_dims = data.ndim - 2
        gamma = initial_gamma(data)
        losses, gammas = [], []
        for i in range(self.curriculum_n + 1):
            z = style_fusion(data, stylised, gamma).detach()
            last = i == self.curriculum_n
            if not last:
                z.requires_grad_(True)
            gammas.append(float(gamma.mean()))
            losses.append(self._update(z, target))
            if not last:
                gamma = curriculum_step(gamma, z.grad, self.curriculum_eps, self.curriculum_pool_size,
                                        spatial_dims, self.curriculum_update)
        self._epoch_losses.append(losses)
        self._epoch_gammas.append(gammas)
        return {"loss": np.array(float(np.mean(losses)))}

    def on_train_end(self):
        unwrap(self.network).enabled = True
        super().on_train_end()

    def on_epoch_end(self):
        if self._epoch_losses:
            losses = np.array(self._epoch_losses)
            self._curriculum_log.append(self.current_epoch, {
                "batches": len(losses), "mean_loss_per_step": losses.mean(0).tolist(),
                "mean_gamma_per_step": np.array(self._epoch_gammas).mean(0).tolist(),
                "fraction_rising": float((losses[:, -1] > losses[:, 0]).mean()) if losses.shape[1] > 1 else None,
                "per_batch_losses": losses[: self.curriculum_log_batches].tolist()})
        super().on_epoch_end()


class nnUNetTrainerStyleCurriculum(StyleCurriculumMixin, nnUNetTrainer):
    """LSCL (n 3, eps 0.25, 4 x 4 LGS, Fourier amplitude mixing) from scratch: stock for 90% of 1000 epochs."""


class nnUNetTrainerStyleCurriculum_rotTTA(nnUNetTrainerStyleCurriculum):
    """LSCL-TTA: as the default, with 0/90/180/270-degree rotation TTA at inference."""

    rotation_tta = True


class nnUNetTrainerStyleCurriculum_finetune(FixedEpochsMixin, nnUNetTrainerStyleCurriculum):
    """The paper's protocol: fine-tune a trained model (``-pretrained_weights``) for 10 epochs, lr 1e-3."""

    epochs = 10
    curriculum_warmup_fraction = 0.0
    finetune_lr = 1e-3


class nnUNetTrainerStyleCurriculum_finetune_rotTTA(nnUNetTrainerStyleCurriculum_finetune):
    rotation_tta = True


class nnUNetTrainerStyleCurriculum_finetune_scl(nnUNetTrainerStyleCurriculum_finetune):
    """SCL ablation (raw gradient sign, no LGS), fine-tuning."""

    curriculum_update = "sign"


class nnUNetTrainerStyleCurriculum_finetune_random(nnUNetTrainerStyleCurriculum_finetune):
    """Random-stylisation ablation (the paper's "WaveCT-AIN" row), fine-tuning."""

    curriculum_random_only = True


class nnUNetTrainerStyleCurriculum_n1(nnUNetTrainerStyleCurriculum):
    curriculum_n = 1


class nnUNetTrainerStyleCurriculum_n5(nnUNetTrainerStyleCurriculum):
    curriculum_n = 5


class nnUNetTrainerStyleCurriculum_eps0p1(nnUNetTrainerStyleCurriculum):
    curriculum_eps = 0.1


class nnUNetTrainerStyleCurriculum_eps0p5(nnUNetTrainerStyleCurriculum):
    curriculum_eps = 0.5


class nnUNetTrainerStyleCurriculum_pool2(nnUNetTrainerStyleCurriculum):
    curriculum_pool_size = 2


class nnUNetTrainerStyleCurriculum_pool8(nnUNetTrainerStyleCurriculum):
    curriculum_pool_size = 8


class nnUNetTrainerStyleCurriculum_scl(nnUNetTrainerStyleCurriculum):
    """SCL ablation: raw per-voxel gradient sign instead of LGS."""

    curriculum_update = "sign"


class nnUNetTrainerStyleCurriculum_random(nnUNetTrainerStyleCurriculum):
    """Random-stylisation ablation: train on the stylised samples (Gamma = 1), one update per batch."""

    curriculum_random_only = True


class nnUNetTrainerStyleCurriculum_histogram(nnUNetTrainerStyleCurriculum):
    """Style source: histogram matching to another training case (scikit-image)."""

    curriculum_style_source = HistogramMatch
    curriculum_style_kwargs: ClassVar[dict[str, Any]] = {}


class nnUNetTrainerStyleCurriculum_intensity(nnUNetTrainerStyleCurriculum):
    """Style source: random gamma / bias field / contrast (no style image)."""

    curriculum_style_source = RandomIntensityBias
    curriculum_style_kwargs: ClassVar[dict[str, Any]] = {}


class nnUNetTrainerStyleCurriculum_smoke(BudgetMixin, nnUNetTrainerStyleCurriculum):
    """2 epochs x 4 iterations (shorter than the ``smoke`` budget), seed 0, the curriculum from epoch 1 (tests)."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 2, "num_iterations_per_epoch": 4,
                                                  "num_val_iterations_per_epoch": 1}
    curriculum_warmup_fraction = 0.5


class nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke(BudgetMixin, nnUNetTrainerStyleCurriculum_finetune_rotTTA):
    """Fine-tuning with rotation TTA, 3 epochs x 10 iterations at nnU-Net's lr 1e-2, seed 0 (end-to-end tests).

    Started with the stock ``-pretrained_weights``, the segmentation heads start anew (nnU-Net skips them).
    At the paper's lr 1e-3, 30 batches relearnt them in 3 of 4 runs (test Dice 0.69-0.71, once 0.38); at
    1e-2 they did in 9 of 9 (0.66-0.79), so the tests use 1e-2.
    """

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 3, "num_iterations_per_epoch": 10,
                                                  "num_val_iterations_per_epoch": 1}
    finetune_lr = 1e-2
