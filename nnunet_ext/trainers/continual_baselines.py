"""EWC and LwF (the ODEx paper's continual-learning baselines) as nnU-Net stream trainers.

Both train one network through the stages of the dataset's ``stream.json`` with
:class:`~nnunet_ext.trainers.stream.StreamTrainerMixin` and add one term to nnU-Net's loss with the toolkit's
:class:`~nnunet_ext.trainers.toolkit.RegularizedStepMixin` (nnU-Net's own step otherwise: AMP autocast and
``GradScaler`` on CUDA, gradient clipping at 12, deep supervision). The algorithms are in
:mod:`nnunet_ext.core.continual_regularizers`.

* **EWC** (:class:`EWCMixin`): at the end of every stage (``on_stage_end``, the stage's training loader
  still active) the diagonal Fisher is averaged over ``ewc_fisher_batches`` training batches from
  gradients of the segmentation loss, unscaled by the AMP scale (batches that overflow are skipped), and
  consolidated with the weights at that moment as anchors. Every later training step adds
  ``ewc_lambda / 2 * sum F (theta - theta*)^2``. Under DDP each batch's gradient is averaged over the ranks
  (nnU-Net's DDP wrapper, as in training) before it is squared, so the Fisher is that of the whole batch and
  the same on every rank.
* **LwF** (:class:`LwFMixin`): when a stage after the first starts, a frozen copy of the network becomes
  the teacher; every training step adds ``lwf_alpha * T^2 * KL(teacher || student)`` on the same batch,
  summed over deep-supervision outputs with nnU-Net's weights.

State that must survive ``nnUNetv2_train ... --c`` (consolidated Fisher and anchors; the teacher's weights)
is saved in the checkpoint through the mixin's ``stream_state_dict``. Inference is untouched: the
checkpoint's ``network_weights`` are an ordinary nnU-Net, so stock ``nnUNetv2_predict`` gives the single
trained model. Per-epoch mean segmentation loss and regularization term go to ``ewc.json`` / ``lwf.json``
in the fold folder.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ext.core.continual_regularizers import (
    ConsolidationMode,
    ElasticWeightConsolidation,
    FisherAccumulator,
    deep_supervision_distillation_loss,
)
from nnunet_ext.trainers.budget import BudgetMixin
from nnunet_ext.trainers.stream import StreamTrainerMixin
from nnunet_ext.trainers.toolkit import RegularizedStepMixin, amp_context, batch_to_device, unwrap

__all__ = ["ContinualRegularizerMixin", "EWCMixin", "LwFMixin", "nnUNetTrainerEWC", "nnUNetTrainerEWC_50epochs",
           "nnUNetTrainerEWC_smoke", "nnUNetTrainerLwF", "nnUNetTrainerLwF_50epochs", "nnUNetTrainerLwF_smoke"]


class ContinualRegularizerMixin(StreamTrainerMixin, RegularizedStepMixin):
    """A stream trainer with one extra loss term (:class:`~nnunet_ext.trainers.toolkit.RegularizedStepMixin`),
    its per-epoch log with the stage."""

    regularization_log_filename = "continual.json"
    regularization_log_columns = ("stage",)

    def regularization_log_values(self) -> dict[str, Any]:
        return {"stage": self.current_stage}


class EWCMixin(ContinualRegularizerMixin):
    """Elastic Weight Consolidation over the stream's stages (see the module docstring).

    Attributes:
        ewc_lambda: penalty strength lambda (>= 0); 0.4 is Lifelong-nnUNet's default, used by the ODEx
            paper's baseline.
        ewc_mode: ``"sum"`` (Kirkpatrick et al.) or ``"online"`` consolidation over stages.
        ewc_gamma: decay of older importance in ``"online"`` mode, in ``[0, 1]``.
        ewc_fisher_batches: training batches averaged for the Fisher after each stage (>= 1).
    """

    ewc_lambda: float = 0.4
    ewc_mode: ConsolidationMode = "sum"
    ewc_gamma: float = 1.0
    ewc_fisher_batches: int = 50
    regularization_log_filename = "ewc.json"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        if not self.ewc_lambda >= 0.0:
            raise ValueError(f"{name}.ewc_lambda must be >= 0, got {self.ewc_lambda!r}; set it in a subclass")
        if int(self.ewc_fisher_batches) < 1:
            raise ValueError(f"{name}.ewc_fisher_batches must be >= 1, got {self.ewc_fisher_batches!r}")
        self.ewc = ElasticWeightConsolidation(self.ewc_mode, self.ewc_gamma)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"EWC: lambda {self.ewc_lambda}, consolidation {self.ewc_mode} (gamma "
                               f"{self.ewc_gamma}), Fisher over {self.ewc_fisher_batches} batches per stage; "
                               f"{self.ewc.num_stages} stage(s) consolidated")

    def regularization_loss(self, data, output):
        if not self.ewc.fisher:
            return None
        return self.ewc.penalty(unwrap(self.network).named_parameters(), self.ewc_lambda)

    def estimate_fisher(self) -> FisherAccumulator:
        """Squared unscaled gradients of the segmentation loss over ``ewc_fisher_batches`` training batches.

        The network is in eval mode (no BatchNorm statistics change) and its weights are not updated; the
        gradients are cleared afterwards. Under DDP the passes run through nnU-Net's
        ``DistributedDataParallel`` wrapper, which averages each batch's gradients over the ranks as in a
        training step: every rank squares the gradient of the whole batch (all ranks' shares), so the Fisher
        equals the single-process one with the plans' batch size and is the same on every rank.
        """
        net = unwrap(self.network)
        was_training = net.training
        self.network.eval()
        accumulator = FisherAccumulator(net.named_parameters())
        for _ in range(int(self.ewc_fisher_batches)):
            data, target = batch_to_device(next(self.dataloader_train), self.device)
            net.zero_grad(set_to_none=True)
            with amp_context(self.device):
                loss = self.loss(self.network(data), target)
            # fp16 gradients need the scale against underflow; the accumulator divides it out again
            scale = float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0
            (loss.float() * scale).backward()
            accumulator.accumulate(net.named_parameters(), loss_scale=scale)
        net.zero_grad(set_to_none=True)
        self.network.train(was_training)
        return accumulator

    def on_stage_end(self, stage_index: int) -> None:
        super().on_stage_end(stage_index)
        accumulator = self.estimate_fisher()
        if accumulator.count == 0:
            raise RuntimeError(f"EWC: every one of the {accumulator.skipped} Fisher batches after stage "
                               f"{stage_index} had non-finite gradients; the network diverged in this stage")
        net = unwrap(self.network)
        self.ewc.consolidate(accumulator.fisher(), dict(net.named_parameters()))
        total = sum(float(f.sum()) for f in self.ewc.fisher.values())
        self.print_to_log_file(f"EWC: Fisher of stage {stage_index} from {accumulator.count} batches "
                               f"({accumulator.skipped} skipped as non-finite); consolidated importance sum "
                               f"{total:.4g} over {self.ewc.num_stages} stage(s)")

    def stream_state_dict(self) -> dict[str, Any]:
        return dict(super().stream_state_dict(), ewc=self.ewc.state_dict())

    def load_stream_state_dict(self, state: dict[str, Any]) -> None:
        super().load_stream_state_dict(state)
        if "ewc" not in state:
            raise ValueError(f"the checkpoint has no EWC state: it was not written by {type(self).__name__}; "
                             f"resume with the trainer that wrote it, or start a new run without --c")
        saved = (state["ewc"]["mode"], float(state["ewc"]["gamma"]))
        if saved != (self.ewc.mode, self.ewc.gamma):
            raise ValueError(f"the checkpoint's EWC state was consolidated with mode/gamma {saved}, but "
                             f"{type(self).__name__} has {(self.ewc.mode, self.ewc.gamma)}; resume with the same "
                             f"settings, or start a new run without --c")
        self.ewc.load_state_dict(state["ewc"], device=self.device)


class LwFMixin(ContinualRegularizerMixin):
    """Learning without Forgetting over the stream's stages (see the module docstring).

    Attributes:
        lwf_temperature: distillation temperature T (> 0); Li & Hoiem use 2.
        lwf_alpha: weight of the distillation term (>= 0); Li & Hoiem's lambda_o = 1.
        teacher: the frozen network from the start of the current stage; None during stage 0.
    """

    lwf_temperature: float = 2.0
    lwf_alpha: float = 1.0
    regularization_log_filename = "lwf.json"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        if not self.lwf_temperature > 0.0:
            raise ValueError(f"{name}.lwf_temperature must be > 0, got {self.lwf_temperature!r}")
        if not self.lwf_alpha >= 0.0:
            raise ValueError(f"{name}.lwf_alpha must be >= 0, got {self.lwf_alpha!r}")
        self.teacher: nn.Module | None = None

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"LwF: temperature {self.lwf_temperature}, alpha {self.lwf_alpha}; teacher "
                               f"{'restored' if self.teacher is not None else 'from the next stage on'}")

    def _frozen_copy(self) -> nn.Module:
        teacher = copy.deepcopy(unwrap(self.network))
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher

    def on_stage_start(self, stage_index: int) -> None:
        super().on_stage_start(stage_index)
        if stage_index > 0:
            self.teacher = self._frozen_copy()
            self.print_to_log_file(f"LwF: the network at the start of stage {stage_index} is the teacher")

    def regularization_loss(self, data, output):
        if self.teacher is None:
            return None
        with torch.no_grad(), amp_context(self.device):
            teacher_output = self.teacher(data)
        weights = getattr(self.loss, "weight_factors", None)  # nnU-Net's DeepSupervisionWrapper
        return self.lwf_alpha * deep_supervision_distillation_loss(output, teacher_output, self.lwf_temperature,
                                                                   weights)

    def stream_state_dict(self) -> dict[str, Any]:
        teacher = None if self.teacher is None else self.teacher.state_dict()
        return dict(super().stream_state_dict(), lwf={"teacher": teacher})

    def load_stream_state_dict(self, state: dict[str, Any]) -> None:
        super().load_stream_state_dict(state)
        if "lwf" not in state:
            raise ValueError(f"the checkpoint has no LwF state: it was not written by {type(self).__name__}; "
                             f"resume with the trainer that wrote it, or start a new run without --c")
        self.teacher = None
        if state["lwf"]["teacher"] is not None:
            self.teacher = self._frozen_copy()
            self.teacher.load_state_dict(state["lwf"]["teacher"])


class nnUNetTrainerEWC(EWCMixin, nnUNetTrainer):
    """EWC, lambda 0.4, Fisher over 50 batches per stage, 200 epochs per stage (the ODEx paper's budget)."""


class nnUNetTrainerLwF(LwFMixin, nnUNetTrainer):
    """LwF, T = 2, alpha 1, 200 epochs per stage (the ODEx paper's budget)."""


class nnUNetTrainerEWC_50epochs(nnUNetTrainerEWC):
    """EWC with 50 epochs per stage (as ``nnUNetTrainerSequential_50epochs``)."""

    epochs_per_stage = 50


class nnUNetTrainerLwF_50epochs(nnUNetTrainerLwF):
    """LwF with 50 epochs per stage (as ``nnUNetTrainerSequential_50epochs``)."""

    epochs_per_stage = 50


class nnUNetTrainerEWC_smoke(EWCMixin, BudgetMixin, nnUNetTrainer):
    """Tests: the ``smoke`` budget with 2 epochs x 15 iterations per stage, seed 0, Fisher over 4 batches."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"epochs_per_stage": 2}
    ewc_fisher_batches = 4


class nnUNetTrainerLwF_smoke(LwFMixin, BudgetMixin, nnUNetTrainer):
    """Tests: the ``smoke`` budget with 2 epochs x 15 iterations per stage, seed 0."""

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"epochs_per_stage": 2}
