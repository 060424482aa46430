"""In-plane rotation test-time augmentation inside the network (the "LSCL-TTA" of Liu et al., MICCAI 2021).

:class:`RotationTTANetwork` wraps any nnU-Net segmentation network. In training mode, or with
``rotation_tta = False``, it *is* that network. In eval mode with ``rotation_tta = True`` (what
``nnUNetv2_predict`` and nnU-Net's final validation then use) every input patch also goes through the network
rotated by 90, 180 and 270 degrees in-plane (the two trailing axes), each output is rotated back and the
logits are averaged (as nnU-Net averages its mirroring TTA; the two compose: 4 rotations x mirrors)::

    f_TTA(x) = 1/4 * sum_{k=0..3} rot_{-k}(f(rot_k(x)))

It is a :class:`~nnunet_ext.networks.wrapper.PlansNetworkWrapper`: the state dict has the stock keys
(``encoder.*``, ``decoder.*``) plus one entry, the persistent switch ``rotation_tta_enabled``. A stock
checkpoint loads into it (the switch then keeps its build-time value, the trainer class's ``rotation_tta``;
so do checkpoints written before the switch was saved) and :meth:`plans_state_dict` loads into a stock
network. A checkpoint predicts with the switch it was saved with; on a loaded predictor change it in the
parameters nnU-Net reloads before every case (:func:`with_rotation_tta`). Blank patches
(:func:`~nnunet_ext.networks.wrapper.blank_patches`) get the plain network's output without rotations.

Non-square in-plane patches are fine: a 90-degree rotation swaps the two axes and nnU-Net's networks accept
any size divisible by their strides (nnU-Net patch sizes are). In 3D configurations "in-plane" means the two
trailing axes of nnU-Net's (transposed) array order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nnunet_ext.networks.wrapper import PlansNetworkWrapper

__all__ = ["ROTATIONS", "RotationTTANetwork", "rotate_back", "rotation_tta", "with_rotation_tta"]

#: quarter turns of the TTA (0 = the unrotated input)
ROTATIONS: tuple[int, ...] = (0, 1, 2, 3)


def rotate_back(output, k: int):
    """Undo ``k`` quarter turns on a network output (a tensor or a deep-supervision list of tensors)."""
    if isinstance(output, (list, tuple)):
        return type(output)(rotate_back(o, k) for o in output)
    return torch.rot90(output, -k, dims=(-2, -1)) if k % 4 else output


def rotation_tta(net: nn.Module, x: torch.Tensor, rotations: tuple[int, ...] = ROTATIONS):
    """Mean of ``net`` over in-plane quarter-turn rotations of ``x``, each output rotated back.

    Args:
        net: a module mapping ``(B, C, *spatial)`` to logits ``(B, K, *spatial)`` or a list of them.
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        rotations: quarter turns to average (default 0, 90, 180, 270 degrees).

    Raises:
        ValueError: fewer than 2 spatial axes or no rotation.
    """
    if x.ndim < 4:
        raise ValueError(f"rotation TTA needs (B, C, *spatial) with >= 2 spatial axes, got shape {tuple(x.shape)}")
    if not rotations:
        raise ValueError("rotations must name at least one quarter turn, got an empty tuple")
    total = None
    for k in rotations:
        out = rotate_back(net(torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x), k)
        if total is None:
            total = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
        elif isinstance(out, (list, tuple)):
            total = [t + o.float() for t, o in zip(total, out)]
        else:
            total = total + out.float()
    if isinstance(total, list):
        return [(t / len(rotations)).to(x.dtype if x.is_floating_point() else t.dtype) for t in total]
    return (total / len(rotations)).to(x.dtype if x.is_floating_point() else total.dtype)


class RotationTTANetwork(PlansNetworkWrapper):
    """A segmentation network with optional in-plane rotation TTA at inference; stock state-dict keys.

    Args:
        net: the nnU-Net plans network (exposes ``.decoder.deep_supervision``).
        rotation_tta: average over 0/90/180/270-degree rotations in eval mode (the build-time default of the
            persistent buffer ``rotation_tta_enabled``; a loaded checkpoint's value wins).

    Attributes:
        rotation_tta: the saved switch as a bool; assign to change it.
    """

    optional_entries = ("rotation_tta_enabled",)  # checkpoints written before it was saved keep the class default

    def __init__(self, net: nn.Module, rotation_tta: bool = False):
        super().__init__(net)
        self.register_buffer("rotation_tta_enabled", torch.tensor(bool(rotation_tta)))

    @property
    def rotation_tta(self) -> bool:
        return bool(self.rotation_tta_enabled)

    @rotation_tta.setter
    def rotation_tta(self, on: bool) -> None:
        self.rotation_tta_enabled.fill_(bool(on))

    def test_time_forward(self, x: torch.Tensor):
        return rotation_tta(self.net, x) if self.rotation_tta else self.net(x)


def with_rotation_tta(state_dict: Mapping[str, torch.Tensor], on: bool) -> dict[str, torch.Tensor]:
    """A copy of a :class:`RotationTTANetwork` state dict with the TTA switch set to ``on`` (the input is kept).

    nnU-Net's predictor loads its saved parameters before every case, so switching TTA on a loaded predictor
    means changing them: ``predictor.list_of_parameters = [with_rotation_tta(p, True) for p in
    predictor.list_of_parameters]``.
    """
    return {**state_dict, "rotation_tta_enabled": torch.tensor(bool(on))}
