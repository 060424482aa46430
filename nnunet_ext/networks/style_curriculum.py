"""In-plane rotation test-time augmentation inside the network (the "LSCL-TTA" of Liu et al., MICCAI 2021).

:class:`RotationTTANetwork` wraps any nnU-Net segmentation network. In training mode, or with
``rotation_tta = False``, it *is* that network. In eval mode with ``rotation_tta = True`` (what
``nnUNetv2_predict`` and nnU-Net's final validation then use) every input patch also goes through the network
rotated by 90, 180 and 270 degrees in-plane (the two trailing axes), each output is rotated back and the
logits are averaged (as nnU-Net averages its mirroring TTA; the two compose: 4 rotations x mirrors)::

    f_TTA(x) = 1/4 * sum_{k=0..3} rot_{-k}(f(rot_k(x)))

The wrapper *adopts* the wrapped network's submodules under their own names instead of holding it as a
child, so its state dict has exactly the stock keys (``encoder.*``, ``decoder.*``): a stock checkpoint loads
into it (``nnUNetv2_train -pretrained_weights``) and its checkpoint loads into a stock network. The TTA switch
is therefore not a buffer but comes from the trainer class (``build_network_architecture``); in Python it can
be flipped on a loaded predictor (``predictor.network.rotation_tta = True``).

Non-square in-plane patches are fine: a 90-degree rotation swaps the two axes and nnU-Net's networks accept
any size divisible by their strides (nnU-Net patch sizes are). In 3D configurations "in-plane" means the two
trailing axes of nnU-Net's (transposed) array order.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ROTATIONS", "RotationTTANetwork", "rotate_back", "rotation_tta"]

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


class RotationTTANetwork(nn.Module):
    """A segmentation network with optional in-plane rotation TTA at inference; stock state-dict keys.

    Args:
        net: the nnU-Net network (exposes ``.decoder.deep_supervision``).
        rotation_tta: average over 0/90/180/270-degree rotations in eval mode.
    """

    def __init__(self, net: nn.Module, rotation_tta: bool = False):
        super().__init__()
        object.__setattr__(self, "_net", net)  # not registered: its parts are registered below, under their names
        for name, module in net.named_children():
            self.add_module(name, module)
        for name, param in net.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in net.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in net._non_persistent_buffers_set)
        self.rotation_tta = bool(rotation_tta)

    @property
    def wrapped(self) -> nn.Module:
        """The stock network (shares every module and parameter with this wrapper)."""
        return self._net

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # .to()/.half() may replace tensors registered directly on the wrapped root: share ours again
        for name in self._net._parameters:
            self._net._parameters[name] = self._parameters[name]
        for name in self._net._buffers:
            self._net._buffers[name] = self._buffers[name]
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._net.training = mode  # the wrapped root module itself is not a child
        return self

    def forward(self, x: torch.Tensor):
        if self.training or not self.rotation_tta:
            return self._net(x)
        return rotation_tta(self._net, x)
