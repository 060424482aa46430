"""Adapting a trained model to a new site with a few labelled scans: MMTL, OCTL, L2-SP and fine-tuning baselines.

Papers: Goodman, Greenspan, Goldberger, "Supervised Domain Adaptation Using Gradients Transfer for Improved
Medical Image Analysis" (DART 2022: MMTL, OCTL); Li, Grandvalet, Davoine (ICML 2018: L2-SP); Shirokikh et al.
(DART 2020: fine-tuning the first or the last layers). The algorithms are in
:mod:`nnunet_ext.core.site_adaptation`.

Every trainer here trains on a **site-adaptation fold** made by ``nnext adapt`` (:mod:`nnunet_ext.adaptation`):
its ``train`` cases are the labelled target-site cases, its ``val`` cases the target site's validation cases,
and ``nnext_adaptation.json`` names the source model. A fresh run starts from the source checkpoint's weights,
all of them (the segmentation layers too; nnU-Net's ``-pretrained_weights`` would re-initialise those, so it is
not needed); a run resumed with ``--c`` continues from its own checkpoint. The result is an ordinary nnU-Net
model: stock ``nnUNetv2_predict -f FOLD`` predicts with it.

==================================  ===============================================================================
trainer                             what it trains
==================================  ===============================================================================
``nnUNetTrainerFineTuneAll``        every weight on the target cases (FTA), nnU-Net's SGD with a fresh state
``nnUNetTrainerFineTuneFirst``      only the first encoder stage (FTF; Shirokikh et al.: the first layers carry
                                    most of the scanner shift)
``nnUNetTrainerFineTuneLast``       only the last decoder stage and the segmentation layers
``nnUNetTrainerL2SP``               every weight, loss + ``alpha / 2 ||theta - theta_source||^2``, no weight decay
``nnUNetTrainerMMTL``               every weight on batches of source and target samples, the target share
                                    growing from 0 to ``(B - 1) / B`` (Algorithm 1)
``nnUNetTrainerOCTL``               as FTA, with the source SGD's momentum buffers carried over (Algorithm 2;
                                    momentum 0.99, which is nnU-Net's own)
``nnUNetTrainerFineTuneAll_Adam``   FTA with Adam (fresh state), for the paper's Adam table
``nnUNetTrainerOCTL_Adam``          Adam with the source Adam's moments, betas 0.99 / 0.999, bias correction from
                                    step 100 (Algorithm 3); the source must be trained with Adam (e.g. nnU-Net's
                                    ``nnUNetTrainerVanillaAdam1en3``)
``nnUNetTrainerSpotTUNet``          every layer twice (frozen source copy, fine-tuned copy), chosen per image by a
                                    policy network (Gumbel-softmax), loss + a penalty on fine-tuned layers
                                    (:mod:`nnunet_ext.networks.spottune`); about 2x the convolution cost, at
                                    inference too
``nnUNetTrainerAIVA``               unsupervised (an unlabelled fold): source segmentation loss + alignment of the
                                    target's bottleneck clusters to the source's (AIVA, Goodman et al. DART 2022)
==================================  ===============================================================================

Settings: ``num_epochs = 250`` (a quarter of nnU-Net's training; a named budget scales it like every epoch
setting) and ``initial_lr = 1e-3`` (the paper's fine-tuning rate; nnU-Net's 1e-2 is for training from scratch),
nnU-Net's poly schedule. Per-epoch values go to ``site_adaptation.json`` in the fold folder (MMTL: the target
samples per batch; L2-SP: the mean penalty).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.adaptation import ADAPTATION_FILENAME, AdaptationFold, load_adaptation_fold, load_adaptation_folds
from nnunet_ext.core.site_adaptation import (
    ADAM_RESTART_STEP,
    OCTL_ADAM_BETAS,
    OCTL_SGD_MOMENTUM,
    ClusterAlignment,
    alignment_loss,
    continue_optimizer_state,
    fit_cluster_alignment,
    l2sp_penalty,
    mix_batches,
    mmtl_target_count,
)
from nnunet_ext.networks.feature_capture import FeatureCapture
from nnunet_ext.networks.spottune import SpotTUNet
from nnunet_ext.trainers.budget import FixedEpochsMixin
from nnunet_ext.trainers.toolkit import (
    EpochLog,
    RegularizedStepMixin,
    amp_context,
    backward_and_step,
    batch_to_device,
    shutdown_augmenters,
    unwrap,
)
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely

__all__ = ["ADAPTATION_CHECKPOINT_KEY", "AIVA_LAMBDA_KEY", "L2SP_ANCHOR_KEY", "AIVAMixin", "FreezeMixin", "L2SPMixin",
           "MMTLMixin", "OCTLMixin", "SiteAdaptationMixin", "SpotTUNetMixin", "nnUNetTrainerAIVA",
           "nnUNetTrainerFineTuneAll", "nnUNetTrainerFineTuneAll_Adam", "nnUNetTrainerFineTuneFirst",
           "nnUNetTrainerFineTuneLast", "nnUNetTrainerL2SP", "nnUNetTrainerMMTL", "nnUNetTrainerOCTL",
           "nnUNetTrainerOCTL_Adam", "nnUNetTrainerSpotTUNet"]

#: checkpoint key of the adaptation fold's definition (provenance: source model, target site, labelled subjects)
ADAPTATION_CHECKPOINT_KEY = "nnext_adaptation"
#: checkpoint key of AIVA's lambda (set once, from the first batches)
AIVA_LAMBDA_KEY = "nnext_aiva_lambda"
#: checkpoint key of L2-SP's anchor (the source weights), so ``--c`` keeps pulling towards the same point
L2SP_ANCHOR_KEY = "nnext_l2sp_anchor"


class SiteAdaptationMixin(FixedEpochsMixin):
    """Training on a site-adaptation fold, starting from its source model (see the module docstring).

    Attributes:
        epochs: fine-tuning epochs before a budget's scaling (250).
        adaptation_lr: the initial learning rate (1e-3).
        log_filename: the per-epoch JSON log in the fold folder.
    """

    epochs: int = 250
    adaptation_lr: float = 1e-3
    log_filename: ClassVar[str] = "site_adaptation.json"
    #: whether the method trains on target labels (a labelled fold) or not (an unlabelled fold, --labelled 0)
    uses_target_labels: ClassVar[bool] = True
    #: whether the method also draws source batches (``self.dataloader_source``, nnU-Net's own pipeline)
    uses_source_batches: ClassVar[bool] = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.adaptation_lr
        self.adaptation: AdaptationFold | None = None
        self._split_override: list[str] | None = None

    # ---------------------------------------------------------------- hooks
    def on_source_loaded(self, checkpoint: dict[str, Any]) -> None:
        """Hook: the source checkpoint has just been loaded into the network (fresh runs only)."""

    def epoch_log_values(self) -> dict[str, Any]:
        """Hook: this epoch's method values for :attr:`log_filename`."""
        return {}

    def load_source_weights(self, network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Hook: put the source checkpoint's ``network_weights`` into ``network`` (default: strictly, every key)."""
        network.load_state_dict(weights)

    # ---------------------------------------------------------------- nnU-Net overrides
    def initialize(self):
        if self.fold == "all" or not isinstance(self.fold, int):
            raise NotImplementedError(f"{type(self).__name__} trains on a site-adaptation fold made by nnext adapt "
                                      f"(a fold number), not on fold {self.fold!r}")
        self.adaptation = load_adaptation_fold(self.preprocessed_dataset_folder_base, self.fold)
        if self.adaptation is None:
            known = sorted(load_adaptation_folds(self.preprocessed_dataset_folder_base))
            raise ValueError(
                f"fold {self.fold} of {self.plans_manager.dataset_name} is not a site-adaptation fold "
                f"({ADAPTATION_FILENAME} in {self.preprocessed_dataset_folder_base} lists {known or 'none'}); make "
                f"one with: nnext adapt {self.plans_manager.dataset_name} -m SOURCE_MODEL_FOLDER -f SOURCE_FOLD "
                f"--target DOMAIN --labelled N")
        if self.uses_target_labels != bool(self.adaptation.labelled_subjects):
            need = "a labelled fold (nnext adapt ... --labelled N, N >= 1)" if self.uses_target_labels else \
                "an unlabelled fold (nnext adapt ... --labelled 0)"
            has = "unlabelled" if not self.adaptation.labelled_subjects else "labelled"
            raise ValueError(f"{type(self).__name__} needs {need}; fold {self.fold} is {has}")
        super().initialize()
        a = self.adaptation
        self.print_to_log_file(f"Site adaptation fold {self.fold}: source fold {a.source_fold} "
                               f"({', '.join(a.source_domains)}) -> {a.target_domain}, {len(a.labelled_subjects)} "
                               f"labelled subject(s) {a.labelled_subjects}; source model {a.source_checkpoint}")

    def do_split(self):
        if self._split_override is not None:
            return list(self._split_override), list(self.adaptation.val_cases)
        tr, val = super().do_split()
        if sorted(tr) != sorted(self.adaptation.target_cases):
            raise ValueError(f"fold {self.fold} of splits_final.json in {self.preprocessed_dataset_folder_base} is "
                             f"not the site-adaptation fold {ADAPTATION_FILENAME} describes (nnU-Net's preprocessing "
                             f"copies the raw splits over it); run nnext adapt again")
        return tr, val

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        if self.uses_source_batches:
            self._split_override = self.adaptation.source_cases
            try:
                source_train, source_val = super().get_dataloaders()
            finally:
                self._split_override = None
            shutdown_augmenters(source_val)
            self.dataloader_source = source_train
        return train, val

    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0:
            self._load_source()
        self._epoch_log = EpochLog.for_trainer(self, self.log_filename, header={
            "trainer": type(self).__name__, "fold": self.fold, **self.adaptation.to_json()}, layout="records")

    def on_epoch_end(self):
        values = self.epoch_log_values()
        if values:
            self._epoch_log.append(self.current_epoch, values)
        super().on_epoch_end()

    def on_train_end(self):
        super().on_train_end()
        shutdown_augmenters(getattr(self, "dataloader_source", None))
        self.dataloader_source = None

    def extra_checkpoint_state(self) -> dict[str, Any]:
        entry = {"fold": self.fold, **self.adaptation.to_json()} if self.adaptation is not None else None
        return {**super().extra_checkpoint_state(), ADAPTATION_CHECKPOINT_KEY: entry}

    # ---------------------------------------------------------------- internals
    def _load_source(self) -> None:
        path = self.adaptation.source_checkpoint
        checkpoint = load_checkpoint_safely(path, map_location=self.device)
        network = unwrap(self.network)
        try:
            self.load_source_weights(network, checkpoint["network_weights"])
        except (KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the source checkpoint {path} does not fit this network ({first}); the source model must "
                             f"be trained with the same plans and configuration ({self.plans_manager.plans_name}, "
                             f"{self.configuration_name}) and an architecture-preserving trainer") from e
        self.print_to_log_file(f"started from every weight of the source model {path}")
        self.on_source_loaded(checkpoint)


class FreezeMixin(SiteAdaptationMixin):
    """Fine-tune only the parameters whose names start with one of :meth:`trainable_prefixes`; the others keep the
    source values (``requires_grad`` off before the optimizer and any DDP wrapper are built)."""

    def trainable_prefixes(self, network: torch.nn.Module) -> tuple[str, ...]:
        raise NotImplementedError

    def configure_optimizers(self):
        network = unwrap(self.network)
        prefixes = self.trainable_prefixes(network)
        trainable = 0
        for name, p in network.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
            trainable += p.numel() if p.requires_grad else 0
        if trainable == 0:
            raise NotImplementedError(f"{type(self).__name__}: no parameter of {type(network).__name__} starts with "
                                      f"{prefixes}; this architecture is not supported, use nnUNetTrainerFineTuneAll")
        self.print_to_log_file(f"fine-tuning {trainable} of {sum(p.numel() for p in network.parameters())} "
                               f"parameters ({', '.join(prefixes)})")
        return super().configure_optimizers()


class L2SPMixin(RegularizedStepMixin, SiteAdaptationMixin):
    """L2-SP: the loss adds ``l2sp_alpha / 2 * ||theta - theta_source||^2``; weight decay is off (it would pull
    towards 0 instead).

    Attributes:
        l2sp_alpha: the strength alpha (Li et al. choose it on validation data among 0.001-1; 0.1 here, not tuned).
    """

    l2sp_alpha: float = 0.1
    regularization_log_filename = "l2sp.json"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.weight_decay = 0.0
        self._anchor: dict[str, torch.Tensor] | None = None

    def on_source_loaded(self, checkpoint: dict[str, Any]) -> None:
        super().on_source_loaded(checkpoint)
        self._anchor = {n: p.detach().clone() for n, p in unwrap(self.network).named_parameters()}

    def regularization_loss(self, data, output):
        if self._anchor is None:
            raise RuntimeError("L2-SP has no anchor: the source model was not loaded and the checkpoint has none")
        return l2sp_penalty(unwrap(self.network).named_parameters(), self._anchor, self.l2sp_alpha)

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {**super().extra_checkpoint_state(), L2SP_ANCHOR_KEY: self._anchor}

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        anchor = checkpoint.get(L2SP_ANCHOR_KEY)
        if anchor is None:
            raise ValueError(f"the checkpoint has no '{L2SP_ANCHOR_KEY}' entry: it was not written by an L2-SP "
                             f"trainer; start a new run without --c")
        self._anchor = {k: v.to(self.device) for k, v in anchor.items()}


class MMTLMixin(SiteAdaptationMixin):
    """MMTL: batches of source and target samples, the target count ``mmtl_target_count(step, total, B)``.

    A second training loader (nnU-Net's own pipeline and augmentation) draws from the source fold's training cases;
    each step takes the first ``B - n_target`` samples of a source batch and the first ``n_target`` of a target
    batch, so both loaders draw full batches (loading costs up to twice nnU-Net's).
    """

    uses_source_batches = True

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._step_in_epoch = 0
        self._target_counts: list[int] = []

    def train_step(self, batch: dict) -> dict:
        step = self.current_epoch * self.num_iterations_per_epoch + self._step_in_epoch
        total = self.num_epochs * self.num_iterations_per_epoch
        n_target = mmtl_target_count(min(step, total - 1), total, len(batch["data"]))
        self._step_in_epoch += 1
        self._target_counts.append(n_target)
        if n_target < len(batch["data"]):
            batch = mix_batches(next(self.dataloader_source), batch, n_target)
        return super().train_step(batch)

    def epoch_log_values(self) -> dict[str, Any]:
        counts = self._target_counts or [0]
        return {**super().epoch_log_values(), "target_samples_first": counts[0], "target_samples_last": counts[-1],
                "batch_size": self.batch_size}


class OCTLMixin(SiteAdaptationMixin):
    """OCTL: the optimizer continues the source optimizer's state (momentum buffers; Adam's moments with the bias
    correction restarted at step :data:`~nnunet_ext.core.site_adaptation.ADAM_RESTART_STEP`), with the paper's
    long memories (SGD momentum 0.99, Adam betas 0.99 / 0.999)."""

    def on_source_loaded(self, checkpoint: dict[str, Any]) -> None:
        super().on_source_loaded(checkpoint)
        state = checkpoint.get("optimizer_state")
        if not state or not state.get("state"):
            raise ValueError(f"the source checkpoint {self.adaptation.source_checkpoint} has no optimizer state to "
                             f"continue; OCTL needs a checkpoint written by nnU-Net training")
        moved = continue_optimizer_state(self.optimizer, state, restart_step=ADAM_RESTART_STEP)
        self.print_to_log_file(f"OCTL: continued the source optimizer's state of {moved} parameters")


class AIVAMixin(SiteAdaptationMixin):
    """AIVA: unsupervised adaptation on an unlabelled fold by aligning bottleneck clusters of the two sites.

    At the start of every epoch ``aiva_embedding_batches`` batches of each site are run through the encoder (no
    gradient; under DDP the features of every rank are gathered, so all ranks cluster the same points) and
    :func:`~nnunet_ext.core.site_adaptation.fit_cluster_alignment` clusters and matches them (``aiva_clusters``
    clusters per site). Every step runs ``[source batch; target batch]`` through the network in one forward pass
    (so DDP sees every parameter used): nnU-Net's loss on the source half's outputs plus ``lambda`` times the
    alignment loss of the target half's bottleneck (taken by a forward hook on the encoder). ``lambda`` is 1 / the
    mean alignment loss of ``aiva_lambda_batches`` target batches before the first step (the paper's
    unsupervised choice), saved in the checkpoint under ``nnext_aiva_lambda``. Target labels are never used.

    Attributes:
        aiva_clusters: clusters per site (the paper: 12).
        aiva_embedding_batches: batches per site embedded for each epoch's clustering (the paper embeds every
            image; a sample keeps it cheap).
        aiva_lambda_batches: target batches that set lambda.
    """

    uses_target_labels = False
    uses_source_batches = True
    aiva_clusters: int = 12
    aiva_embedding_batches: int = 8
    aiva_lambda_batches: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._aiva_lambda: float | None = None
        self._alignment: ClusterAlignment | None = None
        self._capture: FeatureCapture | None = None

    def initialize(self):
        super().initialize()
        self._capture = FeatureCapture(unwrap(self.network).encoder)

    def on_epoch_start(self):
        super().on_epoch_start()
        self._alignment = self._fit_alignment()
        if self._aiva_lambda is None:
            with torch.no_grad():
                values = [alignment_loss(self._bottleneck(next(self.dataloader_train)["data"]), self._alignment).item()
                          for _ in range(self.aiva_lambda_batches)]
            mean = sum(values) / len(values)
            self._aiva_lambda = 1.0 / mean if mean > 0 else 1.0
            self.print_to_log_file(f"AIVA: lambda = 1 / {mean:.4g} = {self._aiva_lambda:.4g}")
        self._terms: list[tuple[float, float]] = []

    def train_step(self, batch: dict) -> dict:
        source = next(self.dataloader_source)
        n = len(source["data"])
        data, target = batch_to_device(source, self.device)
        target_data = batch["data"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with amp_context(self.device), self._capture.active():
            output = self.network(torch.cat([data, target_data]))
            features = self._capture.take_latest()[n:].flatten(1)
            source_output = [o[:n] for o in output] if isinstance(output, (list, tuple)) else output[:n]
            seg_loss = self.loss(source_output, target)
        align = alignment_loss(features, self._alignment)
        loss = seg_loss + self._aiva_lambda * align
        backward_and_step(self, loss)
        self._terms.append((seg_loss.item(), align.item()))
        return {"loss": loss.detach().cpu().numpy()}

    def epoch_log_values(self) -> dict[str, Any]:
        terms = self._terms or [(float("nan"), float("nan"))]
        a = self._alignment
        gap = float(((a.target_centers_2d - a.source_centers_2d[a.matching]) ** 2).sum(1).mean())
        return {**super().epoch_log_values(), "lambda": self._aiva_lambda,
                "train_loss_segmentation_source": sum(t[0] for t in terms) / len(terms),
                "train_alignment": sum(t[1] for t in terms) / len(terms),
                "matched_center_distance_2d": gap}

    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {**super().extra_checkpoint_state(), AIVA_LAMBDA_KEY: self._aiva_lambda}

    def load_extra_checkpoint_state(self, checkpoint: dict[str, Any]) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self._aiva_lambda = checkpoint.get(AIVA_LAMBDA_KEY)

    # ---------------------------------------------------------------- internals
    @torch.no_grad()
    def _bottleneck(self, data: torch.Tensor) -> torch.Tensor:
        with amp_context(self.device):
            return unwrap(self.network).encoder(data.to(self.device, non_blocking=True))[-1].flatten(1).float()

    def _fit_alignment(self) -> ClusterAlignment:
        feats = {}
        for name, loader in (("source", self.dataloader_source), ("target", self.dataloader_train)):
            local = torch.cat([self._bottleneck(next(loader)["data"]) for _ in range(self.aiva_embedding_batches)])
            if self.is_ddp:
                gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
                dist.all_gather(gathered, local)
                local = torch.cat(gathered)
            feats[name] = local
        return fit_cluster_alignment(feats["source"], feats["target"], k=self.aiva_clusters,
                                     seed=self.current_epoch)


class SpotTUNetMixin(RegularizedStepMixin, SiteAdaptationMixin):
    """SpotTUNet: the network is :class:`~nnunet_ext.networks.spottune.SpotTUNet` (every layer a frozen source
    copy and a fine-tuned copy, chosen per image by a policy network); both copies start from the source weights;
    the loss adds ``spottune_lambda * mean_batch sum_l (1 - I_l(x))`` (``I_l = 1``: layer ``l`` frozen), the paper's
    penalty on the number of fine-tuned layers. Per epoch, the share of images that froze each layer goes to
    ``site_adaptation.json`` (the policy figure of Zakazov et al. / Sheikh et al. Fig. 5).

    Attributes:
        spottune_lambda: the penalty weight (not from the paper, which does not give it; not tuned).
        spottune_temperature: the Gumbel-softmax temperature.
    """

    spottune_lambda: float = 0.005
    spottune_temperature: float = 0.1
    regularization_log_filename = "spottune.json"
    _gate_sums: torch.Tensor | None = None
    _gate_count: int = 0

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> SpotTUNet:
        """Called by nnU-Net at training *and* inference (no trainer instance): the plans network, wrapped."""
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return SpotTUNet(unet, unet.encoder.conv_op, num_input_channels, temperature=cls.spottune_temperature)

    def load_source_weights(self, network, weights):
        network.load_plain_state_dict(weights)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._gate_sums: torch.Tensor | None = None
        self._gate_count = 0

    def regularization_loss(self, data, output):
        gates = unwrap(self.network).last_gates
        frozen = gates.detach().sum(0).cpu()
        self._gate_sums = frozen if self._gate_sums is None else self._gate_sums + frozen
        self._gate_count += len(gates)
        return self.spottune_lambda * (1 - gates).sum(1).mean()

    def epoch_log_values(self) -> dict[str, Any]:
        if self._gate_sums is None:
            return super().epoch_log_values()
        share = (self._gate_sums / max(self._gate_count, 1)).tolist()
        names = unwrap(self.network).layer_names
        return {**super().epoch_log_values(), "frozen_share": dict(zip(names, share, strict=True))}


class AdamMixin(SiteAdaptationMixin):
    """Adam (nnU-Net's weight decay, poly schedule) in place of nnU-Net's SGD, betas :attr:`adam_betas`."""

    adam_betas: tuple[float, float] = (0.9, 0.999)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, betas=self.adam_betas,
                                     weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


class nnUNetTrainerFineTuneAll(SiteAdaptationMixin, nnUNetTrainer):
    """Fine-tune every weight on the labelled target cases (FTA)."""


class nnUNetTrainerFineTuneFirst(FreezeMixin, nnUNetTrainer):
    """Fine-tune only the first encoder stage (FTF)."""

    def trainable_prefixes(self, network):
        return ("encoder.stem.", "encoder.stages.0.")


class nnUNetTrainerFineTuneLast(FreezeMixin, nnUNetTrainer):
    """Fine-tune only the last decoder stage and the segmentation layers."""

    def trainable_prefixes(self, network):
        return (f"decoder.stages.{len(network.decoder.stages) - 1}.", "decoder.seg_layers.")


class nnUNetTrainerL2SP(L2SPMixin, nnUNetTrainer):
    """L2-SP fine-tuning (alpha 0.1)."""


class nnUNetTrainerMMTL(MMTLMixin, nnUNetTrainer):
    """Mixed mini-batch transfer learning (Algorithm 1)."""


class nnUNetTrainerOCTL(OCTLMixin, nnUNetTrainer):
    """Optimizer-continuation transfer learning with nnU-Net's SGD (Algorithm 2; momentum 0.99)."""

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        for group in optimizer.param_groups:
            group["momentum"] = OCTL_SGD_MOMENTUM
        return optimizer, scheduler


class nnUNetTrainerSpotTUNet(SpotTUNetMixin, nnUNetTrainer):
    """SpotTUNet fine-tuning (per-image choice between frozen and fine-tuned copies of every layer)."""


class nnUNetTrainerAIVA(AIVAMixin, nnUNetTrainer):
    """Unsupervised site adaptation by intra-site variability alignment (12 clusters)."""


class nnUNetTrainerFineTuneAll_Adam(AdamMixin, nnUNetTrainer):
    """FTA with a fresh Adam."""


class nnUNetTrainerOCTL_Adam(OCTLMixin, AdamMixin, nnUNetTrainer):
    """Optimizer-continuation transfer learning with Adam (Algorithm 3; betas 0.99 / 0.999, restart at step 100)."""

    adam_betas = OCTL_ADAM_BETAS
