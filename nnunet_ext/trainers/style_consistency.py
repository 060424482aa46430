"""Style consistency + regeneration (Stain-AgLr, Raipuria et al., DART 2022) as composable nnU-Net training.

Every training batch (after nnU-Net's own augmentation: stock, DA5 or any other) gets a style-altered copy
(:func:`~nnunet_ext.core.style_consistency.apply_style`: random intensity curve, receive bias and noise,
re-standardised, in place of the paper's HED jitter). The batch handed to ``super().train_step`` is
``[clean; altered]`` (twice the samples, targets repeated), so nnU-Net's loss (Dice + CE, deep supervision)
supervises both views, as the paper trains its task loss on raw and altered images in one batch; ``self.loss``
adds, inside ``train_step`` only:

* ``sc_consistency_weight`` (paper: lambda_2 = 10) times ``KL(p_clean || p_altered)`` of the full-resolution
  softmax outputs, the clean prediction as the target (no gradient through it;
  :func:`~nnunet_ext.core.style_consistency.consistency_kl`);
* ``sc_regeneration_weight`` (paper: lambda_1 = 0.1) times the MSE between the clean images and what a
  regeneration decoder (:class:`~nnunet_ext.networks.style_consistency.RegenerationDecoder`, from the encoder's
  bottleneck, no skips) makes of the **altered** images' bottleneck features. The bottleneck is taken from
  the ordinary forward pass by a forward hook on the encoder (so DDP and the other wrappers stay in place).

The regeneration decoder is training-only: it is optimised by the trainer's optimizer (an extra parameter
group, the same learning-rate schedule), saved in every checkpoint under ``nnext_regeneration_decoder`` (so
``--c`` resumes it) and never part of the segmentation network, whose state dict stays stock: stock
``nnUNetv2_predict`` predicts with the plain U-Net at the plain U-Net's cost, and the checkpoint can warm-start
another trainer with ``-pretrained_weights``. Under DDP the decoder is wrapped in its own
``DistributedDataParallel`` so its gradients are averaged like the network's. The alteration has its own
generator, saved as ``nnext_style_generator``.

Per-epoch values go to ``<fold folder>/style_consistency.json``: the settings, then per epoch the mean
segmentation loss (both views), consistency and regeneration terms (unweighted) and the mean gamma.

Combining: put the mixin before the trainer it extends, ``class X(StyleConsistencyMixin, nnUNetTrainerDA5)``
(shipped as ``nnUNetTrainerStyleConsistencyDA5``); GIN goes before it (``class Y(GINMixin,
StyleConsistencyMixin, nnUNetTrainer)``: the clean view is the GIN view). Ablations as the paper's Table 1:
``_noReg`` (consistency only), ``_noCons`` (regeneration only), ``_augmentOnly`` (both off: the "HED-light
augmentation" row, i.e. training on both views). ``_keepBatch``: both views of half the samples, so the network
batch stays nnU-Net's. With ``use_mask_for_norm`` (background exactly 0 after nnU-Net's normalisation) only the
non-zero voxels of those channels are altered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ext.core.style_consistency import (
    StyleConfig,
    apply_style,
    consistency_kl,
    regeneration_mse,
    sample_style_parameters,
)
from nnunet_ext.networks.feature_capture import FeatureCapture
from nnunet_ext.networks.style_consistency import RegenerationDecoder
from nnunet_ext.trainers.budget import BudgetMixin
from nnunet_ext.trainers.toolkit import (
    EpochLog,
    MethodGenerator,
    NNExtTrainerMixin,
    PairedConsistencyLoss,
    Target,
    batch_to_device,
    half_batch,
    unwrap,
)

__all__ = [
    "REGENERATION_DECODER_KEY",
    "STYLE_CONSISTENCY_LOG_FILENAME",
    "STYLE_GENERATOR_KEY",
    "StyleConsistencyLoss",
    "StyleConsistencyMixin",
    "nnUNetTrainerStyleConsistency",
    "nnUNetTrainerStyleConsistencyDA5",
    "nnUNetTrainerStyleConsistency_augmentOnly",
    "nnUNetTrainerStyleConsistency_keepBatch",
    "nnUNetTrainerStyleConsistency_noCons",
    "nnUNetTrainerStyleConsistency_noReg",
    "nnUNetTrainerStyleConsistency_smoke",
]

STYLE_CONSISTENCY_LOG_FILENAME = "style_consistency.json"
#: checkpoint key of the regeneration decoder's weights
REGENERATION_DECODER_KEY = "nnext_regeneration_decoder"
#: checkpoint key of the alteration generator's state
STYLE_GENERATOR_KEY = "nnext_style_generator"

_DEFAULTS = StyleConfig()


class StyleConsistencyLoss(PairedConsistencyLoss):
    """nnU-Net's loss + ``consistency_weight * KL`` + ``regeneration_weight * MSE`` on a ``[clean; altered]`` batch.

    Args:
        segmentation_loss: nnU-Net's loss.
        consistency_weight: lambda_2.
        regeneration_weight: lambda_1; 0 skips the regeneration (no decoder is needed then).
        capture: the encoder hook that supplies the bottleneck of each forward pass (None when
            ``regeneration_weight`` is 0).
        decoder: the regeneration decoder (possibly DDP-wrapped; None when ``regeneration_weight`` is 0).

    Attributes:
        regeneration_records: the unweighted MSE of every paired call, detached.
    """

    def __init__(self, segmentation_loss: nn.Module, consistency_weight: float, regeneration_weight: float,
                 capture: FeatureCapture | None, decoder: nn.Module | None):
        super().__init__(segmentation_loss, consistency_weight, consistency_kl)
        self.regeneration_weight = float(regeneration_weight)
        if self.regeneration_weight and (capture is None or decoder is None):
            raise ValueError("a regeneration weight > 0 needs the encoder capture and the regeneration decoder")
        self.capture, self.decoder = capture, decoder
        self.regeneration_records: list[torch.Tensor] = []
        self._clean: torch.Tensor | None = None

    @contextmanager
    def pairing_with(self, clean: torch.Tensor) -> Iterator[None]:
        """Pair the calls in this block, with ``clean`` as the regeneration target."""
        self._clean = clean
        try:
            with self.capture.active() if self.capture is not None else nullcontext(), self.pairing():
                yield
        finally:
            self._clean = None

    def forward(self, output: torch.Tensor | list[torch.Tensor], target: Target) -> torch.Tensor:
        total = super().forward(output, target)
        if not self._paired or not self.regeneration_weight:
            return total
        bottleneck = self.capture.take_latest()
        regenerated = self.decoder(bottleneck.chunk(2)[1])
        mse = regeneration_mse(regenerated, self._clean)
        self.regeneration_records.append(mse.detach())
        return total + self.regeneration_weight * mse


class StyleConsistencyMixin(NNExtTrainerMixin):
    """Style-altered views, KL consistency and regeneration (see the module docstring).

    Attributes:
        sc_consistency_weight: weight of the KL consistency (paper: lambda_2 = 10); 0 switches it off.
        sc_regeneration_weight: weight of the regeneration MSE (paper: lambda_1 = 0.1); 0 switches it off and
            builds no decoder.
        sc_gamma_range, sc_bias_std, sc_bias_grid, sc_noise_std: the alteration's strength
            (:class:`~nnunet_ext.core.style_consistency.StyleConfig`).
        sc_seed: seed of the alteration's generator; None: drawn from torch's global generator when the trainer
            is initialised (so ``BudgetMixin.seed`` makes runs repeat).
        sc_keep_batch_size: False (the paper): both views of every sample, i.e. twice nnU-Net's batch through the
            network. True: both views of a random half of the samples (``B // 2``, at least 1), so the network
            batch stays nnU-Net's (GPU memory) and each iteration sees half the cases.
    """

    sc_consistency_weight: float = 10.0
    sc_regeneration_weight: float = 0.1
    sc_gamma_range: tuple[float, float] = _DEFAULTS.gamma_range
    sc_bias_std: float = _DEFAULTS.bias_std
    sc_bias_grid: int = _DEFAULTS.bias_grid
    sc_noise_std: float = _DEFAULTS.noise_std
    sc_seed: int | None = None
    sc_keep_batch_size: bool = False

    def style_config(self) -> StyleConfig:
        """The alteration's :class:`~nnunet_ext.core.style_consistency.StyleConfig` (validated)."""
        try:
            return StyleConfig(tuple(self.sc_gamma_range), self.sc_bias_std, self.sc_bias_grid, self.sc_noise_std)
        except ValueError as e:  # the core names its field; the user sets the sc_ attribute of that name
            raise ValueError(f"{type(self).__name__}.sc_{e}") from e

    def style_consistency_settings(self) -> dict[str, Any]:
        return {"style": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.style_config()).items()},
                "consistency_weight": self.sc_consistency_weight, "regeneration_weight": self.sc_regeneration_weight,
                "seed": self.sc_seed, "keep_batch_size": self.sc_keep_batch_size, "views_per_sample": 2,
                "consistency_on": "full-resolution output",
                "regeneration_from": "encoder bottleneck of the altered view, no skips"}

    def initialize(self):
        name = type(self).__name__
        if self.is_cascaded:
            raise NotImplementedError(f"{name} alters every input channel; cascade stages get the previous stage's "
                                      f"segmentation as extra channels. Use a 2d or 3d_fullres configuration")
        if self.label_manager.has_regions:
            raise NotImplementedError(f"{name}: the consistency term compares softmax class distributions; "
                                      f"region-based training (sigmoid outputs) is not supported")
        for attr in ("sc_consistency_weight", "sc_regeneration_weight"):
            if not float(getattr(self, attr)) >= 0:
                raise ValueError(f"{name}.{attr} must be >= 0, got {getattr(self, attr)!r}")
        self._sc_style = self.style_config()
        self._sc_decoder: RegenerationDecoder | None = None
        self._sc_capture: FeatureCapture | None = None
        super().initialize()
        self._sc_rng = MethodGenerator(STYLE_GENERATOR_KEY, self.sc_seed, self.local_rank)
        self._sc_epoch: dict[str, list[float]] = {}

    def configure_optimizers(self):
        """nnU-Net's optimizer and schedule, plus the regeneration decoder as an extra parameter group.

        The decoder and the encoder hook are built once; trainers that rebuild their optimizer (stream trainers
        at a stage boundary) get the same decoder in the new optimizer.
        """
        optimizer, scheduler = super().configure_optimizers()
        if float(self.sc_regeneration_weight) > 0:
            if self._sc_decoder is None:
                encoder = unwrap(self.network).encoder
                self._sc_decoder = RegenerationDecoder(encoder, self.num_input_channels).to(self.device)
                self._sc_capture = FeatureCapture(encoder)
            optimizer.add_param_group({"params": list(self._sc_decoder.parameters())})
        return optimizer, scheduler

    def _build_loss(self) -> StyleConsistencyLoss:
        decoder = self._sc_decoder
        if decoder is not None and self.is_ddp:
            decoder = DDP(decoder, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        self._sc_loss = StyleConsistencyLoss(super()._build_loss(), self.sc_consistency_weight,
                                             self.sc_regeneration_weight, self._sc_capture, decoder)
        return self._sc_loss

    def extra_checkpoint_state(self) -> dict[str, Any]:
        state = {**super().extra_checkpoint_state(), **self._sc_rng.checkpoint_state()}
        if self._sc_decoder is not None:
            state[REGENERATION_DECODER_KEY] = self._sc_decoder.state_dict()
        return state

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self._sc_rng.restore(checkpoint, self.is_ddp)
        if self._sc_decoder is not None:
            if REGENERATION_DECODER_KEY not in checkpoint:
                raise ValueError(f"{type(self).__name__}: the checkpoint has no regeneration decoder "
                                 f"({REGENERATION_DECODER_KEY!r}); it was not written by a trainer with "
                                 f"sc_regeneration_weight > 0. Resume with the trainer that wrote it, or start a new "
                                 f"run from its weights with -pretrained_weights")
            self._sc_decoder.load_state_dict(checkpoint[REGENERATION_DECODER_KEY])

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"{type(self).__name__}: style-altered views after nnU-Net's augmentation: "
                               f"{self.style_consistency_settings()}")
        self._sc_log = EpochLog.for_trainer(self, STYLE_CONSISTENCY_LOG_FILENAME,
                                            {"settings": self.style_consistency_settings()}, layout="records")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._sc_epoch = {}
        if self._sc_decoder is not None:
            self._sc_decoder.train()

    def _foreground(self, data: torch.Tensor) -> torch.Tensor | None:
        """Per channel, the voxels nnU-Net normalised (``use_mask_for_norm``: the background is 0), else None."""
        masked = list(self.configuration_manager.use_mask_for_norm or [])
        if not any(masked):
            return None
        flags = torch.tensor([bool(masked[c]) if c < len(masked) else False for c in range(data.shape[1])],
                             device=data.device).view(1, -1, *(1,) * (data.ndim - 2))
        return (data != 0) | ~flags

    def train_step(self, batch: dict) -> dict:
        data, target = batch_to_device(batch, self.device)
        if self.sc_keep_batch_size:
            data, target = half_batch(data, target, self._sc_rng.generator)
        with torch.no_grad():
            params = sample_style_parameters(data.shape[0], data.shape[1], data.shape[2:], self._sc_style,
                                             self._sc_rng.generator, data.device, data.dtype)
            altered = apply_style(data, params, self._foreground(data))
        target = [torch.cat([t, t]) for t in target] if isinstance(target, list) else torch.cat([target, target])
        loss = self._sc_loss
        loss.records.clear()
        loss.regeneration_records.clear()
        with loss.pairing_with(data):
            out = super().train_step({**batch, "data": torch.cat([data, altered]), "target": target})
        if not loss.records:
            raise RuntimeError(f"{type(self).__name__}: the train_step after StyleConsistencyMixin never called "
                               f"self.loss, so the consistency terms were not applied; put StyleConsistencyMixin "
                               f"before the trainer it extends in the class bases")
        values = {"segmentation_loss": torch.stack([s for s, _ in loss.records]).mean(),
                  "consistency": torch.stack([c for _, c in loss.records]).mean(), "gamma": params.gamma.mean()}
        if loss.regeneration_records:
            values["regeneration_mse"] = torch.stack(loss.regeneration_records).mean()
        for k, v in values.items():
            self._sc_epoch.setdefault(k, []).append(float(v))
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        entry: dict[str, Any] = {"batches": len(self._sc_epoch.get("gamma", []))}
        entry.update({f"mean_{k}": float(np.mean(v)) for k, v in self._sc_epoch.items()})
        self._sc_log.append(self.current_epoch, entry)


class nnUNetTrainerStyleConsistency(StyleConsistencyMixin, nnUNetTrainer):
    """Stock nnU-Net + style-altered views, KL consistency (10) and regeneration (0.1): the paper's Stain-AgLr."""


class nnUNetTrainerStyleConsistency_noReg(nnUNetTrainerStyleConsistency):
    """Consistency only (the paper's "HED-Light Aug + L_Cons" row)."""

    sc_regeneration_weight = 0.0


class nnUNetTrainerStyleConsistency_noCons(nnUNetTrainerStyleConsistency):
    """Regeneration only (the paper's "HED-Light Aug + L_Reg" row)."""

    sc_consistency_weight = 0.0


class nnUNetTrainerStyleConsistency_augmentOnly(nnUNetTrainerStyleConsistency):
    """Both views supervised, no consistency, no regeneration (the paper's "HED-Light Aug" row)."""

    sc_consistency_weight = 0.0
    sc_regeneration_weight = 0.0


class nnUNetTrainerStyleConsistency_keepBatch(nnUNetTrainerStyleConsistency):
    """Both views of half of each batch's samples: nnU-Net's network batch size (for GPUs that stock fills)."""

    sc_keep_batch_size = True


class nnUNetTrainerStyleConsistencyDA5(StyleConsistencyMixin, nnUNetTrainerDA5):
    """nnU-Net's strong augmentation (``nnUNetTrainerDA5``), then style consistency + regeneration."""


class nnUNetTrainerStyleConsistency_smoke(BudgetMixin, nnUNetTrainerStyleConsistency):
    """End-to-end test budget: 8 epochs x 20 iterations, seed 0.

    Like GIN-IPA, the method learns more slowly than stock nnU-Net early on: with the stock smoke budget (4 x 15)
    the tiny demo model reached a test Dice of 0.19-0.20 (seed 0, with gradients through both views of the
    consistency, as first implemented); with 8 x 20 and the clean view as the consistency's target, 0.62-0.71.
    """

    budget = "smoke"
    seed = 0
    budget_overrides: ClassVar[dict[str, Any]] = {"num_epochs": 8, "num_iterations_per_epoch": 20}
