"""Feather-light Fourier multi-source transfer (Zakazov et al., DART 2022) as nnU-Net trainers.

Training is stock nnU-Net: the method acts at test time only (the per-epoch pseudo-Dice measures the plain
network). The network is a
:class:`~nnunet_ext.networks.fourier_mst.FourierMSTNetwork`; at the end of training the style bank is
filled with donor patches cut from this fold's *training* cases (preprocessed, i.e. z-scored as the network
sees them) and saved in ``checkpoint_final.pth``, so nnU-Net's final validation and every later
``nnUNetv2_predict`` apply multi-source transfer. An existing stock model gets the same without retraining
through ``nnext fda attach``.

==========================================  =====  =====  =========  =========
class                                        n_MST  beta   selection  mode
==========================================  =====  =====  =========  =========
``nnUNetTrainerFourierMST``                  7      0.03   srsim      2d / 3d*
``nnUNetTrainerFourierMST_single``           1      0.03   random     as above   (paper's "None" ablation)
``nnUNetTrainerFourierMST_random``           7      0.03   random     as above   (paper's "MST" ablation)
``nnUNetTrainerFourierMST_nmst3``            3      0.03   srsim      as above
``nnUNetTrainerFourierMST_beta0p01/0p05/0p1``7      var.   srsim      as above
``nnUNetTrainerFourierMST_mode2d/2p5d``      7      0.03   srsim      fixed (2.5d: 3D configurations)
``nnUNetTrainerFourierMST_smoke``            3      0.03   srsim      CPU budget 4 x 15 iterations (tests)
==========================================  =====  =====  =========  =========

\\* ``fda_mode = None`` picks ``"3d"`` (the paper's preferred whole-scan selection) for 3D configurations
and ``"2d"`` for 2D ones, where nnU-Net's network only ever sees single slices.

The bank is built the same way on every DDP rank (deterministic sampling of the same files), so no
all-reduce is needed.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.networks.fourier_mst import FourierMSTNetwork, StyleBank, sample_donor_patches
from nnunet_ext.trainers.budget import BudgetMixin
from nnunet_ext.trainers.toolkit import NNExtTrainerMixin, unwrap
from nnunet_ext.utils.preprocessed import load_source_volumes

__all__ = ["FourierMSTMixin", "nnUNetTrainerFourierMST", "nnUNetTrainerFourierMST_beta0p01",
           "nnUNetTrainerFourierMST_beta0p05", "nnUNetTrainerFourierMST_beta0p1", "nnUNetTrainerFourierMST_mode2d",
           "nnUNetTrainerFourierMST_mode2p5d", "nnUNetTrainerFourierMST_nmst3", "nnUNetTrainerFourierMST_random",
           "nnUNetTrainerFourierMST_single", "nnUNetTrainerFourierMST_smoke"]


class FourierMSTMixin(NNExtTrainerMixin):
    """Wraps the trainer's network in a :class:`FourierMSTNetwork` and fills its bank after training.

    Attributes:
        fda_beta: Fourier window size (radius = beta x min(patch side)); the paper grid-searches it.
        fda_n_mst: styled copies per input (paper: 7).
        fda_mode: ``"2d"``, ``"2.5d"``, ``"3d"`` or ``None`` (3d for 3D configurations, else 2d).
        fda_selection: ``"srsim"`` (paper) or ``"random"`` (ablation).
        fda_spatial_dims: 2 (slice-wise spectra, paper) or 3 (3D spectra; mode 3d only).
        fda_bank_size: most donors in the bank.
        fda_bank_max_megabytes: bound on the bank's memory (float16 patches).
        fda_bank_cases: most training cases read to cut donors from.
        fda_max_batch: most styled copies per forward (``None``: all at once; lower it for big 3D patches).
    """

    fda_beta: float = 0.03
    fda_n_mst: int = 7
    fda_mode: str | None = None
    fda_selection: str = "srsim"
    fda_spatial_dims: int = 2
    fda_bank_size: int = 64
    fda_bank_max_megabytes: float = 256.0
    fda_bank_cases: int = 32
    fda_max_batch: int | None = None

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        net = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                 num_output_channels, enable_deep_supervision)
        patch = tuple(configuration_manager.patch_size)
        mode = cls.fda_mode or ("3d" if len(patch) == 3 else "2d")
        bank = StyleBank(num_input_channels, patch, beta=cls.fda_beta, n_mst=cls.fda_n_mst, mode=mode,
                         selection=cls.fda_selection, spatial_dims=cls.fda_spatial_dims)
        return FourierMSTNetwork(net, bank, max_batch=cls.fda_max_batch)

    def initialize(self):
        if self.label_manager.has_regions:
            raise NotImplementedError(
                f"{type(self).__name__} averages softmax outputs; region-based training (sigmoid outputs) is not "
                f"supported. Train without regions or use the stock trainer")
        super().initialize()
        self.print_to_log_file(f"Fourier multi-source transfer at inference: {unwrap(self.network).bank.settings()}")

    def build_style_bank(self) -> None:
        """Fill the bank with donors from this fold's training cases (also callable on a loaded trainer)."""
        tr_keys, _ = self.do_split()
        network = unwrap(self.network)
        volumes = load_source_volumes(self.preprocessed_dataset_folder, sorted(tr_keys), self.fda_bank_cases)
        donors = sample_donor_patches(volumes, network.bank.patch_size, self.fda_bank_size,
                                      self.fda_bank_max_megabytes)
        network.bank.set_donors(donors)
        self.print_to_log_file(f"Fourier style bank: {len(network.bank)} donors from {len(volumes)} training "
                               f"cases, {network.bank.settings()['bank_megabytes']} MB")

    def on_train_start(self):
        super().on_train_start()
        # the per-epoch pseudo-Dice runs in eval mode before any bank exists: measure the plain network
        unwrap(self.network).enabled = False

    def on_train_end(self):
        self.build_style_bank()
        unwrap(self.network).enabled = True  # final validation and checkpoint: with transfer
        super().on_train_end()


class nnUNetTrainerFourierMST(FourierMSTMixin, nnUNetTrainer):
    """Stock nnU-Net training; multi-source Fourier transfer (n_MST 7, SR-SIM donors) at inference."""


class nnUNetTrainerFourierMST_single(nnUNetTrainerFourierMST):
    """Ablation "None": one random donor, one swap."""

    fda_n_mst = 1
    fda_selection = "random"


class nnUNetTrainerFourierMST_random(nnUNetTrainerFourierMST):
    """Ablation "MST": seven random donors, no SR-SIM."""

    fda_selection = "random"


class nnUNetTrainerFourierMST_nmst3(nnUNetTrainerFourierMST):
    fda_n_mst = 3


class nnUNetTrainerFourierMST_beta0p01(nnUNetTrainerFourierMST):
    fda_beta = 0.01


class nnUNetTrainerFourierMST_beta0p05(nnUNetTrainerFourierMST):
    fda_beta = 0.05


class nnUNetTrainerFourierMST_beta0p1(nnUNetTrainerFourierMST):
    fda_beta = 0.1


class nnUNetTrainerFourierMST_mode2d(nnUNetTrainerFourierMST):
    fda_mode = "2d"


class nnUNetTrainerFourierMST_mode2p5d(nnUNetTrainerFourierMST):
    """Donor slices within +-2 positions (3D configurations only)."""

    fda_mode = "2.5d"


class nnUNetTrainerFourierMST_smoke(BudgetMixin, nnUNetTrainerFourierMST):
    """The ``smoke`` budget (4 epochs x 15 iterations), seed 0, n_MST 3 (end-to-end tests)."""

    budget = "smoke"
    seed = 0
    fda_n_mst = 3
