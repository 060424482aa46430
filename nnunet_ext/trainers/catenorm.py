"""CateNorm (Xiao et al., DART 2022) as nnU-Net trainers.

The network is :class:`~nnunet_ext.networks.catenorm.CateNormUNet` built from the plans (PlainConvUNet or
ResEnc), with CateNorm in the first encoder stages. Training follows the paper's Algorithm 1:

* **Stage one (warm-up)**, epochs ``[0, warmup_epochs)``: stock nnU-Net training through the ordinary branch.
* **Stage two**, every later iteration: (1) a plain pass, loss, one optimizer step (updates the shared
  weights and the ordinary affine, paper alpha = 1); (2) a CateNorm pass conditioned on the *detached* softmax
  of pass (1), loss, a second optimizer step (updates the shared weights and the CateNorm branch, alpha = 0).
  Each step has its own backward, gradient clipping (nnU-Net's 12) and, with AMP, its own
  ``GradScaler`` scale -> unscale -> step -> update cycle (``unscale_`` may run once per optimizer per
  ``update()``). Deep supervision: both passes return nnU-Net's output list and use its loss; the mask is
  the softmax of the full-resolution output. nnU-Net logs the CateNorm pass's loss as ``train_losses``; both
  passes' mean losses per epoch go to ``catenorm.json`` in the fold folder.

When stage two starts, ``CateNormUNet.activate_catenorm`` sets the persistent buffer ``catenorm_active`` (so
the checkpoint, validation and stock ``nnUNetv2_predict`` use the two-pass inference) and, by default, starts
the CateNorm branch as a copy of the ordinary affine (``catenorm_init_from_plain``).

Warm-up from a pretrained nnU-Net checkpoint: ``nnUNetv2_train ... -tr nnUNetTrainerCateNorm_warmup0
-pretrained_weights CHECKPOINT`` (same plans). nnU-Net transfers every weight except ``.seg_layers.`` (its
rule); the network hides its new CateNorm entries from that transfer. Because nnU-Net re-initialises the
segmentation heads, keep a short warm-up (the default) unless the heads do not matter.

Normalization: both branches use the statistics of the plans' ``norm_op`` — nnU-Net's InstanceNorm (per
sample and channel) by default, BatchNorm if the plans say so. The paper uses BatchNorm; see the method page.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.networks.catenorm import (
    CATENORM_UNET_PATH,
    CateNormUNet,
    build_catenorm_unet,
)
from nnunet_ext.trainers.avagrad import AvaGradMixin
from nnunet_ext.trainers.budget import BudgetMixin, FixedEpochsMixin
from nnunet_ext.trainers.toolkit import (
    EpochLog,
    NNExtTrainerMixin,
    amp_context,
    backward_and_step,
    batch_to_device,
    unwrap,
)

__all__ = ["CATENORM_LOG_FILENAME", "nnUNetTrainerCateNorm", "nnUNetTrainerCateNormAvaGrad",
           "nnUNetTrainerCateNorm_block1", "nnUNetTrainerCateNorm_block1_demo", "nnUNetTrainerCateNorm_demo",
           "nnUNetTrainerCateNorm_smoke", "nnUNetTrainerCateNorm_warmup0", "nnUNetTrainerCateNorm_warmup160",
           "nnUNetTrainerCateNorm_warmup500"]

CATENORM_LOG_FILENAME = "catenorm.json"


class nnUNetTrainerCateNorm(NNExtTrainerMixin, nnUNetTrainer):
    """CateNorm in encoder stages 1-4 (paper "block 1-4"), warm-up 50 of nnU-Net's 1000 epochs.

    Attributes:
        catenorm_stages: encoder stage indices with CateNorm; None = the paper's first four (never the
            bottleneck). Ignored when the plans already name ``CateNormUNet`` (``nnext plans catenorm``).
        warmup_epochs: epochs of stage one (paper Table 12: 450-9000 iterations, i.e. 5-100% of the
            second stage; "not sensitive").
        catenorm_hidden_ratio: channels of the first conditioning conv / layer channels (paper 0.5).
        catenorm_mask_mode: mask resizing to the feature maps, ``"area"`` or ``"nearest"``.
        catenorm_init_from_plain: start stage two with the CateNorm branch equal to the ordinary affine
            (paper: random initialisation).

    ``warmup_epochs`` is an epoch setting: a budget scales it with ``num_epochs``.
    """

    catenorm_stages: tuple[int, ...] | None = None
    warmup_epochs: int = 50
    catenorm_hidden_ratio: float = 0.5
    catenorm_mask_mode: str = "area"
    catenorm_init_from_plain: bool = True
    epoch_settings: ClassVar[tuple[str, ...]] = ("warmup_epochs",)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> CateNormUNet:
        """Called by nnU-Net at training *and* inference (no trainer instance): reads only class attributes."""
        return build_catenorm_unet(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            catenorm_stages=cls.catenorm_stages, hidden_ratio=cls.catenorm_hidden_ratio,
            mask_mode=cls.catenorm_mask_mode, deep_supervision=enable_deep_supervision)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.label_manager.has_regions:
            raise NotImplementedError("CateNorm conditions on a categorical (softmax) class mask; region-based "
                                      "training (overlapping sigmoid outputs) is not supported")
        if self.is_ddp:
            raise NotImplementedError("CateNorm leaves one branch unused in each of its two passes; multi-GPU "
                                      "(DDP) training is not supported yet. Train with one device.")
        if self.warmup_epochs < 0:
            raise ValueError(f"{type(self).__name__}.warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        super().initialize()
        self._pass_losses: list[tuple[float, float]] = []
        # until training starts, let nnU-Net's -pretrained_weights transfer everything but the new branch
        self._catenorm_net().hide_method_state = True

    def _do_i_compile(self) -> bool:
        return False  # the conditioning mask is set on the layers from Python; keep eager mode

    def _catenorm_net(self) -> CateNormUNet:
        net = unwrap(self.network)
        if not isinstance(net, CateNormUNet):
            raise TypeError(f"{type(self).__name__} needs a CateNormUNet, got {type(net).__name__}")
        return net

    # between initialize() and the start of training the branch is hidden from state_dict() (for nnU-Net's
    # -pretrained_weights); a checkpoint always has it, and a loaded one ends that window
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._catenorm_net().hide_method_state = False

    def save_checkpoint(self, filename: str) -> None:
        self._catenorm_net().hide_method_state = False
        super().save_checkpoint(filename)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        net = self._catenorm_net()
        net.hide_method_state = False
        super().on_train_start()
        n_all = sum(p.numel() for p in net.parameters())
        n_cond = sum(p.numel() for p in net.conditioning_parameters())
        arch = self.configuration_manager.network_arch_class_name
        self.print_to_log_file(
            f"CateNorm: stages {list(net.catenorm_stages)} ({len(net.catenorm_layers())} layers, "
            f"{'plans variant' if arch == CATENORM_UNET_PATH else 'trainer setting'}), warm-up {self.warmup_epochs} "
            f"of {self.num_epochs} epochs, hidden ratio {net.hidden_ratio}, mask resize {net.mask_mode}, "
            f"init from plain {self.catenorm_init_from_plain}; parameters {n_all} = plain x "
            f"{n_all / (n_all - n_cond):.4f}; already active: {net.is_catenorm_active}")
        self._catenorm_log = EpochLog.for_trainer(
            self, CATENORM_LOG_FILENAME, {"warmup_epochs": self.warmup_epochs, "stages": list(net.catenorm_stages)},
            columns=("stage", "train_loss_plain", "train_loss_catenorm"))
        self._pass_losses: list[tuple[float, float]] = []

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        net = self._catenorm_net()
        if self.current_epoch >= self.warmup_epochs and not net.is_catenorm_active:
            net.activate_catenorm(init_from_plain=self.catenorm_init_from_plain)
            self.print_to_log_file(f"CateNorm: stage two (alternating plain / CateNorm updates) from epoch "
                                   f"{self.current_epoch}")
        self._pass_losses = []

    def train_step(self, batch: dict) -> dict:
        net = self._catenorm_net()
        if not net.is_catenorm_active:
            return super().train_step(batch)
        data, target = batch_to_device(batch, self.device)
        amp = amp_context(self.device)

        self.optimizer.zero_grad(set_to_none=True)  # update 1: shared weights + ordinary affine
        with amp:
            output = self.network(data, branch="plain")
            loss_plain = self.loss(output, target)
        mask = net.mask_from_output(output)  # detached softmax, before update 1 (Algorithm 1)
        del output
        backward_and_step(self, loss_plain)

        self.optimizer.zero_grad(set_to_none=True)  # update 2: shared weights + CateNorm branch
        amp = amp_context(self.device)
        with amp:
            output = self.network(data, branch="catenorm", mask=mask)
            loss_cn = self.loss(output, target)
        del output
        backward_and_step(self, loss_cn)
        self._pass_losses.append((loss_plain.item(), loss_cn.item()))
        return {"loss": loss_cn.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if self._pass_losses:
            values = {"stage": "catenorm", "train_loss_plain": float(np.mean([p for p, _ in self._pass_losses])),
                      "train_loss_catenorm": float(np.mean([c for _, c in self._pass_losses]))}
        else:
            values = {"stage": "warmup", "train_loss_plain": float(np.mean([o["loss"] for o in train_outputs])),
                      "train_loss_catenorm": None}
        self._catenorm_log.append(self.current_epoch, values)


class nnUNetTrainerCateNorm_block1(nnUNetTrainerCateNorm):
    """CateNorm in the first encoder stage only (paper "block 1", Tables 1-3)."""

    catenorm_stages = (0,)


class nnUNetTrainerCateNorm_warmup0(nnUNetTrainerCateNorm):
    """No warm-up: stage two from the first iteration (use with ``-pretrained_weights``, paper Algorithm 1)."""

    warmup_epochs = 0


class nnUNetTrainerCateNorm_warmup160(nnUNetTrainerCateNorm):
    """Warm-up 160 of 1000 epochs (paper Table 12: 1440 warm-up iterations for 9000, 16%)."""

    warmup_epochs = 160


class nnUNetTrainerCateNorm_warmup500(nnUNetTrainerCateNorm):
    """Warm-up 500 of 1000 epochs: stage one as long as stage two (paper's main setting, 9000 + 9000)."""

    warmup_epochs = 500


class nnUNetTrainerCateNormAvaGrad(FixedEpochsMixin, AvaGradMixin, nnUNetTrainerCateNorm):
    """CateNorm trained with AvaGrad (lr 10, eps 0.1, 50 epochs; Sheikh et al.), warm-up 5 epochs."""

    epochs = 50
    warmup_epochs = 5


class nnUNetTrainerCateNorm_smoke(BudgetMixin, nnUNetTrainerCateNorm):
    """End-to-end test budget: ``smoke`` (4 epochs x 15 iterations, as ``nnUNetTrainerCPU_smoke``), seed 0, warm-up 2.

    The budget alone would scale the warm-up to 50 x 4/1000 = 0 epochs.
    """

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"warmup_epochs": 2}


class nnUNetTrainerCateNorm_demo(BudgetMixin, nnUNetTrainerCateNorm):
    """The ``demo`` budget (12 epochs x 25 iterations, as ``nnUNetTrainerCPU_demo``), warm-up 4 (the budget: 1)."""

    budget = "demo"
    budget_overrides: ClassVar[dict[str, Any]] = {"warmup_epochs": 4}


class nnUNetTrainerCateNorm_block1_demo(BudgetMixin, nnUNetTrainerCateNorm_block1):
    """``nnUNetTrainerCateNorm_demo`` with CateNorm in stage 1 only."""

    budget = "demo"
    budget_overrides: ClassVar[dict[str, Any]] = nnUNetTrainerCateNorm_demo.budget_overrides
