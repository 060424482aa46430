"""Multi-source Fourier style transfer at test time, inside the network (Zakazov et al., DART 2022).

:class:`FourierMSTNetwork` wraps any nnU-Net segmentation network. In training mode it *is* that network.
In eval mode (what ``nnUNetv2_predict`` and nnU-Net's validation use) each input patch is restyled
``n_MST`` times with the low-frequency amplitude spectra of source "style donors" kept in a
:class:`StyleBank`, all copies go through the network in one batch, and the softmax outputs are averaged::

    p(t) = 1/n_MST * sum_i softmax(net(FDA(s_i, t)))         returned as log p(t) (valid logits)

The network is a :class:`~nnunet_ext.networks.wrapper.PlansNetworkWrapper`: the plans network's entries keep
their stock keys and the bank adds ``bank.*`` (checkpoints written with the older ``net.`` prefix still
load). The bank is part of the state dict (persistent buffers, resized on load), so stock
``nnUNetv2_predict`` and ``nnUNetv2_predict_from_modelfolder`` reproduce the method, and so do ensembles of
folds whose banks differ in size. Settings (``beta``, ``n_mst``, ``mode``, ``selection``) are buffers too:
they travel with the checkpoint and ``nnext fda`` tools can change them without retraining.

**Blank input.** The amplitude spectrum of a constant patch is its mean alone; swapping in a donor's low
frequencies would paint the donor's coarse anatomy into it (a blank image was predicted as ~14% tissue). So a
patch whose every channel is (near-)constant is not restyled and gets the plain network's prediction, and
in a multi-channel patch a near-constant channel is kept as it is while the other channels are restyled
(:func:`~nnunet_ext.networks.wrapper.near_constant_channels`).

Donor selection (``selection="srsim"``, the paper's "SR-SIM+"; ``"random"`` is its "MST" ablation: a fixed,
seeded random choice of donors):

``"2d"``
    every 2D input (or every slice of a 3D input) gets the ``n_MST`` donor slices most similar to it.
``"2.5d"``
    like ``"2d"`` but a target slice ``z`` only considers donor slices ``z - m .. z + m`` (``m = 2``), i.e.
    similar positions in the donor patches. 3D inputs only.
``"3d"``
    donors are whole patches ranked by the mean SR-SIM of corresponding slices (the paper's scan-level
    similarity, here per patch). 3D inputs only.

nnU-Net feeds a network one tile of ``patch_size`` at a time, so "scan" means "tile": a 2D configuration
never sees a whole volume, hence ``"2.5d"`` and ``"3d"`` need a 3D configuration (documented deviation).
Styling is slice-wise (2D FFT over the two in-plane axes) by default, as the paper's 2D U-Net; for ``"3d"``
``spatial_dims=3`` swaps 3D spectra instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from nnunet_ext.core.fourier import amplitude_spectrum, check_window, fourier_amplitude_swap, low_frequency_mask
from nnunet_ext.core.srsim import SRSIMFeatures, srsim_features, srsim_matrix
from nnunet_ext.networks.wrapper import PlansNetworkWrapper, near_constant_channels

logger = logging.getLogger(__name__)

Mode = Literal["2d", "2.5d", "3d"]
Selection = Literal["srsim", "random"]
MODES: tuple[str, ...] = ("2d", "2.5d", "3d")
SELECTIONS: tuple[str, ...] = ("srsim", "random")

__all__ = ["MODES", "SELECTIONS", "FourierMSTNetwork", "StyleBank", "sample_donor_patches"]


class StyleBank(nn.Module):
    """Source style donors (z-scored patches, float16) and the multi-source-transfer settings.

    Args:
        num_channels: input channels of the network.
        patch_size: spatial patch size of the network (2 or 3 axes); donors have exactly this shape.
        beta: Fourier window size, ``[0, 0.5]`` (see :mod:`nnunet_ext.core.fourier`).
        n_mst: number of styled copies per input (the paper: 7).
        mode: donor selection granularity, see the module docstring.
        selection: ``"srsim"`` or ``"random"``.
        spatial_dims: axes of the Fourier swap: 2 (slice-wise; required for ``"2d"``/``"2.5d"`` on 3D
            patches) or 3 (3D patches with ``"3d"`` only).
        neighbours: ``m`` of the ``"2.5d"`` mode.
        seed: seed of the ``"random"`` selection.

    Raises:
        ValueError: any setting out of range or incompatible with the patch (the message says what fits).
    """

    def __init__(self, num_channels: int, patch_size: Sequence[int], beta: float = 0.01, n_mst: int = 7,
                 mode: Mode = "2d", selection: Selection = "srsim", spatial_dims: int | None = None,
                 neighbours: int = 2, seed: int = 0):
        super().__init__()
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 axes, got {patch_size}")
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.patch_size = patch_size
        spatial_dims = 2 if spatial_dims is None else spatial_dims
        self._cache: dict[tuple, object] = {}  # donor amplitudes, SR-SIM features, windows; keyed by the donors
        self._loaded_from: tuple | None = None  # identity of the donors tensor last loaded by load_state_dict
        self.register_buffer("donors", torch.zeros((0, num_channels, *patch_size), dtype=torch.float16))
        self.register_buffer("beta", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("n_mst", torch.tensor(1, dtype=torch.int64))
        self.register_buffer("mode_index", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("selection_index", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("spatial_dims", torch.tensor(2, dtype=torch.int64))
        self.register_buffer("neighbours", torch.tensor(2, dtype=torch.int64))
        self.register_buffer("seed", torch.tensor(0, dtype=torch.int64))
        self.configure(beta=beta, n_mst=n_mst, mode=mode, selection=selection, spatial_dims=spatial_dims,
                       neighbours=neighbours, seed=seed)
        self._warned_small_bank = False

    # settings ------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return MODES[int(self.mode_index)]

    @property
    def selection(self) -> str:
        return SELECTIONS[int(self.selection_index)]

    def configure(self, *, beta: float | None = None, n_mst: int | None = None, mode: str | None = None,
                  selection: str | None = None, spatial_dims: int | None = None, neighbours: int | None = None,
                  seed: int | None = None) -> None:
        """Change settings in place (validated together); ``None`` keeps a setting."""
        beta = float(self.beta) if beta is None else beta
        n_mst = int(self.n_mst) if n_mst is None else n_mst
        mode = self.mode if mode is None else mode
        selection = self.selection if selection is None else selection
        spatial_dims = int(self.spatial_dims) if spatial_dims is None else spatial_dims
        neighbours = int(self.neighbours) if neighbours is None else neighbours
        seed = int(self.seed) if seed is None else seed
        check_window(self.patch_size, beta)
        if isinstance(n_mst, bool) or not isinstance(n_mst, int) or n_mst < 1:
            raise ValueError(f"n_mst must be an integer >= 1 (the paper uses 7), got {n_mst!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if len(self.patch_size) == 2 and mode != "2d":
            raise ValueError(
                f"mode {mode!r} needs a 3D configuration: a 2D nnU-Net network sees one slice at a time, so "
                f"donors can only be chosen per slice; use mode='2d' (or a 3d_fullres model)"
            )
        if spatial_dims not in (2, 3) or spatial_dims > len(self.patch_size):
            raise ValueError(f"spatial_dims must be 2 or (for 3D patches) 3, got {spatial_dims!r} for patch "
                             f"{self.patch_size}")
        if spatial_dims == 3 and mode != "3d":
            raise ValueError(f"spatial_dims=3 (3D spectra) needs mode='3d' (whole-patch donors), got mode {mode!r}")
        if neighbours < 0:
            raise ValueError(f"neighbours (m of the 2.5d mode) must be >= 0, got {neighbours!r}")
        if spatial_dims != int(self.spatial_dims):
            self._cache = {}  # the donor amplitudes depend on the transformed axes
        self.beta.fill_(beta)
        self.n_mst.fill_(n_mst)
        self.mode_index.fill_(MODES.index(mode))
        self.selection_index.fill_(SELECTIONS.index(selection))
        self.spatial_dims.fill_(spatial_dims)
        self.neighbours.fill_(neighbours)
        self.seed.fill_(seed)

    def settings(self) -> dict[str, object]:
        """Settings and bank size as plain Python values (for logs and reports)."""
        return {"beta": float(self.beta), "n_mst": int(self.n_mst), "mode": self.mode,
                "selection": self.selection, "spatial_dims": int(self.spatial_dims),
                "neighbours": int(self.neighbours), "seed": int(self.seed), "num_donors": len(self),
                "bank_megabytes": round(self.donors.numel() * self.donors.element_size() / 2 ** 20, 3)}

    # donors --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.donors.shape[0])

    def set_donors(self, donors: torch.Tensor) -> None:
        """Replace the donors by ``(N, C, *patch_size)`` finite, non-constant patches (stored as float16)."""
        expected = tuple(self.donors.shape[1:])
        if donors.ndim != len(expected) + 1 or tuple(donors.shape[1:]) != expected:
            raise ValueError(f"donors must have shape (N, {', '.join(map(str, expected))}), got "
                             f"{tuple(donors.shape)}")
        if not bool(torch.isfinite(donors).all()):
            raise ValueError("donors contain NaN or infinite values")
        flat = donors.float().flatten(1)
        constant = (flat.amax(1) == flat.amin(1)).nonzero().flatten().tolist()
        if constant:
            raise ValueError(f"donors {constant} are constant images and carry no style; drop them")
        self.donors = donors.detach().to(device=self.donors.device, dtype=torch.float16).clone()
        self._cache, self._loaded_from = {}, None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        incoming = state_dict.get(prefix + "donors")
        if incoming is not None and incoming.ndim == self.donors.ndim and incoming.shape[0] != self.donors.shape[0]:
            # the number of donors is free; channels and patch size must match (checked by the copy)
            self.donors = torch.empty((incoming.shape[0], *self.donors.shape[1:]), dtype=self.donors.dtype,
                                      device=self.donors.device)
        # nnU-Net's predictor reloads the same state dict before every case: keep the donor caches (amplitudes,
        # SR-SIM features) when the very same, unmodified donors tensor comes in again
        source = None if incoming is None else (incoming.data_ptr(), tuple(incoming.shape), incoming._version)
        if source is None or source != self._loaded_from:
            self._cache = {}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._loaded_from = source

    def _cached(self, name: str, make):
        key = (name, self.donors.device, self.donors.data_ptr(), len(self))
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[1:3] == key[1:3]}
            self._cache[key] = make()
        return self._cache[key]

    def _donor_amplitudes(self) -> torch.Tensor:
        spatial_dims = int(self.spatial_dims)
        return self._cached(f"amplitude{spatial_dims}", lambda: amplitude_spectrum(self.donors, spatial_dims))

    def _donor_slice_features(self) -> SRSIMFeatures:
        """SR-SIM features of every donor slice: ``(N, H, W)`` for 2D donors, ``(N * Z, Y, X)`` for 3D."""
        def make():
            grey = self.donors.float().mean(1)
            return srsim_features(grey.reshape(-1, *grey.shape[-2:]))
        return self._cached("features", make)

    def _mask(self, spatial: tuple[int, ...]) -> torch.Tensor:
        beta = float(self.beta)
        return self._cached(f"mask{spatial}{beta}", lambda: low_frequency_mask(spatial, beta, device=self.donors.device))

    # the method ----------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if len(self) == 0:
            raise RuntimeError(
                "the Fourier style bank of this model is empty, so multi-source transfer cannot run. Build it from "
                "source images with `nnext fda attach MODEL_FOLDER -o NEW_MODEL_FOLDER --images SOURCE_IMAGES`, or "
                "finish training with nnUNetTrainerFourierMST (the bank is built at the end of training)"
            )
        if tuple(x.shape[1:]) != tuple(self.donors.shape[1:]):
            raise ValueError(
                f"input patch has shape {tuple(x.shape[1:])} (channels, spatial) but the style donors have "
                f"{tuple(self.donors.shape[1:])}: Fourier style transfer needs inputs of the network's patch size "
                f"(nnU-Net's sliding-window predictor guarantees this)"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or infinite values; check the image for corrupt voxels "
                             "(Fourier style transfer would spread them over the whole patch)")

    def _random_donors(self, count: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(self.seed))
        return torch.randperm(len(self), generator=g)[:count].to(self.donors.device)

    def styled_copies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Restyle ``x`` with its donors.

        Args:
            x: ``(B, C, *patch_size)`` network inputs.

        Returns:
            ``(styled, donor_index)``: ``styled`` is ``(B * n, C, *patch_size)`` with the ``n`` copies of a
            sample contiguous (``n = min(n_mst, number of donors)``; near-constant channels are copied
            unchanged); ``donor_index`` is ``(B, n)`` for
            whole-patch selection or ``(B, Z, n)`` (donor slice ``index = donor * Z + z``) for per-slice
            selection of 3D inputs.

        Raises:
            RuntimeError: empty bank. ValueError: wrong input shape, non-finite input.
        """
        self._check_input(x)
        n = min(int(self.n_mst), len(self))
        if n < int(self.n_mst) and not self._warned_small_bank:
            logger.warning("style bank holds %d donors, fewer than n_mst=%d: using %d", len(self), int(self.n_mst), n)
            self._warned_small_bank = True
        b, c = x.shape[:2]
        beta, sd = float(self.beta), int(self.spatial_dims)
        amps = self._donor_amplitudes()  # (N, C, *spectrum)
        mask = self._mask(tuple(x.shape[-sd:]))
        three_d = x.ndim == 5
        grey = x.float().mean(1)
        if not three_d or self.mode == "3d" or self.selection == "random":
            if self.selection == "random":
                index = self._random_donors(n).expand(b, n)
            elif not three_d:
                index = srsim_matrix(srsim_features(grey), self._donor_slice_features()).topk(n, dim=1).indices
            else:
                index = self._patch_similarity(grey).topk(n, dim=1).indices
            donor_amp = amps[index]  # (B, n, C, *spectrum)
        else:
            index = self._slice_index(grey, n)  # (B, Z, n)
            z = x.shape[2]
            slice_amps = amps.permute(0, 2, 1, 3, 4).reshape(len(self) * z, c, *amps.shape[-2:])
            donor_amp = slice_amps[index].permute(0, 2, 3, 1, 4, 5)  # (B, n, C, Z, Y, Xf)
        n = index.shape[-1]
        styled = fourier_amplitude_swap(x[:, None], donor_amp, beta, sd, mask=mask)
        # beta = 0 returns the target itself, without the copy axis broadcast
        styled = styled.expand(b, n, *x.shape[1:])
        blank = near_constant_channels(x).view(b, 1, c, *[1] * (x.ndim - 2))
        if bool(blank.any()):  # a constant channel has no style to change: keep it
            styled = torch.where(blank, x[:, None].to(styled.dtype), styled)
        return styled.reshape(b * n, *x.shape[1:]), index

    def _patch_similarity(self, grey: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` mean SR-SIM of corresponding slices between targets ``(B, Z, Y, X)`` and donor patches."""
        b, z = grey.shape[:2]
        targets = srsim_features(grey.reshape(b * z, *grey.shape[-2:]))
        donors = self._donor_slice_features()
        total = torch.zeros(b, len(self), device=grey.device)
        for k in range(z):
            t = SRSIMFeatures(targets.saliency[k::z], targets.gradient[k::z])
            d = SRSIMFeatures(donors.saliency[k::z], donors.gradient[k::z])
            total += srsim_matrix(t, d)
        return total / z

    def _slice_index(self, grey: torch.Tensor, n: int) -> torch.Tensor:
        """``(B, Z, n)`` best donor slices per target slice (all slices, or +-m positions in ``"2.5d"``)."""
        b, z = grey.shape[:2]
        targets = srsim_features(grey.reshape(b * z, *grey.shape[-2:]))
        sims = srsim_matrix(targets, self._donor_slice_features()).view(b, z, len(self), z)
        if self.mode == "2.5d":
            pos = torch.arange(z, device=sims.device)
            far = (pos[:, None] - pos[None, :]).abs() > int(self.neighbours)  # (target z, donor z)
            sims = sims.masked_fill(far[None, :, None, :], float("-inf"))
        flat = sims.reshape(b, z, len(self) * z)
        return flat.topk(min(n, int(torch.isfinite(flat).sum(-1).min())), dim=-1).indices


class FourierMSTNetwork(PlansNetworkWrapper):
    """A segmentation network with multi-source Fourier style transfer at inference.

    Args:
        net: the nnU-Net plans network (exposes ``.decoder.deep_supervision``).
        bank: its :class:`StyleBank` (state-dict entries ``bank.*``).
        max_batch: most styled copies through ``net`` at once (``None``: all ``B * n_MST`` in one batch); a
            memory setting that does not change the output.

    Training mode, or an eval-mode call with the transfer switched off (``enabled = False``), is ``net(x)``.
    In eval mode a blank patch (:func:`~nnunet_ext.networks.wrapper.blank_patches`) is not restyled: it gets
    the plain network's prediction, as log-probabilities like every output of the transfer.
    """

    def __init__(self, net: nn.Module, bank: StyleBank, max_batch: int | None = None):
        super().__init__(net)
        self.bank = bank
        self.max_batch = max_batch

    def test_time_forward(self, x: torch.Tensor) -> torch.Tensor:
        styled, _ = self.bank.styled_copies(x)
        step = styled.shape[0] if self.max_batch is None else max(1, self.max_batch)
        logits = torch.cat([_logits(self.net(styled[i:i + step])) for i in range(0, styled.shape[0], step)])
        n = styled.shape[0] // x.shape[0]
        probs = torch.softmax(logits.float(), dim=1).view(x.shape[0], n, *logits.shape[1:]).mean(1)
        return torch.log(probs.clamp_min(1e-6)).to(logits.dtype)

    def blank_forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _logits(self.net(x))
        return torch.log_softmax(logits.float(), dim=1).to(logits.dtype)


def _logits(output) -> torch.Tensor:
    if isinstance(output, (list, tuple)):
        raise RuntimeError("multi-source transfer needs deep supervision disabled at inference "
                           "(nnU-Net's predictor and validation disable it)")
    return output


def _fit(array: np.ndarray, size: Sequence[int], starts: Sequence[int | None]) -> np.ndarray:
    """Crop or zero-pad the trailing axes of ``array`` to ``size``: pad centred (as nnU-Net's predictor),
    crop at ``starts`` (``None``: centred)."""
    out = array
    for axis_from_end, (target, start) in enumerate(zip(reversed(size), reversed(starts)), start=1):
        axis = out.ndim - axis_from_end
        length = out.shape[axis]
        if length > target:
            first = (length - target) // 2 if start is None else min(max(0, start), length - target)
            out = np.take(out, range(first, first + target), axis=axis)
        elif length < target:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((target - length) // 2, target - length - (target - length) // 2)
            out = np.pad(out, pad)
    return out


def sample_donor_patches(volumes: Sequence[np.ndarray | torch.Tensor], patch_size: Sequence[int],
                         max_donors: int, max_megabytes: float = 256.0) -> torch.Tensor:
    """Cut style donors of ``patch_size`` from preprocessed source volumes, deterministically.

    2D patches: non-constant slices of all volumes, evenly spaced over the concatenated list of slices,
    centre-cropped or zero-padded in-plane. 3D patches: per volume, crops whose centres are evenly spaced
    along the first axis (centred in-plane), volumes taken round-robin.

    Args:
        volumes: ``(C, Z, Y, X)`` arrays (nnU-Net's preprocessed data; a 2D dataset has ``Z = 1``).
        patch_size: the network's patch size (2 or 3 axes).
        max_donors: most donors to return.
        max_megabytes: bound on the bank's size in float16; fewer donors are returned if needed.

    Returns:
        ``(N, C, *patch_size)`` float32 donors, ``1 <= N <= max_donors``.

    Raises:
        ValueError: no volumes, inconsistent channels, or no non-constant slice to cut a donor from.
    """
    if max_donors < 1:
        raise ValueError(f"max_donors must be >= 1, got {max_donors}")
    if not volumes:
        raise ValueError("no source volumes to build a style bank from")
    arrays = [np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for v in volumes]
    channels = {a.shape[0] for a in arrays}
    if len(channels) != 1 or any(a.ndim != 4 for a in arrays):
        raise ValueError(f"volumes must all be (C, Z, Y, X) with the same C, got shapes {[a.shape for a in arrays]}")
    patch_size = tuple(int(p) for p in patch_size)
    per_donor_mb = channels.pop() * math.prod(patch_size) * 2 / 2 ** 20
    max_donors = max(1, min(max_donors, int(max_megabytes // per_donor_mb)))
    donors: list[np.ndarray] = []
    if len(patch_size) == 2:
        candidates = [(i, z) for i, a in enumerate(arrays) for z in range(a.shape[1]) if np.ptp(a[:, z]) > 0]
        if not candidates:
            raise ValueError("every source slice is constant: no style donor can be cut from these volumes")
        picks = np.unique(np.linspace(0, len(candidates) - 1, min(max_donors, len(candidates))).round().astype(int))
        donors = [_fit(arrays[i][:, z], patch_size, (None, None)) for i, z in (candidates[p] for p in picks)]
    else:
        per_volume = math.ceil(max_donors / len(arrays))
        crops: list[list[np.ndarray]] = []
        for a in arrays:
            z = a.shape[1]
            starts = np.unique(np.linspace(0, max(0, z - patch_size[0]), per_volume).round().astype(int))
            crops.append([c for c in (_fit(a, patch_size, (s, None, None)) for s in starts) if np.ptp(c) > 0])
        for k in range(per_volume):
            donors += [c[k] for c in crops if k < len(c)]
        if not donors:
            raise ValueError("every source crop is constant: no style donor can be cut from these volumes")
        donors = donors[:max_donors]
    return torch.from_numpy(np.stack(donors))
