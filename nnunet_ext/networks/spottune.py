"""SpotTUNet: per image, a policy network chooses for every layer of a U-Net between its frozen source copy and its
fine-tuned copy.

Papers: Y. Guo et al., "SpotTune: Transfer Learning through Adaptive Fine-tuning", CVPR 2019; I. Zakazov et al.,
"Anatomy of Domain Shift Impact on U-Net Layers in MRI Segmentation", MICCAI 2021 (SpotTUNet), as described in
Sheikh et al. (DART 2022, the AvaGrad paper, Sec. 2.4). Reimplemented from the descriptions; no code of the
authors is used.

:class:`SpotTUNet` wraps an nnU-Net network (any architecture whose layers are dynamic-network-architectures'
``ConvDropoutNormReLU`` blocks and transposed convolutions: ``PlainConvUNet``, the residual encoders' blocks).
Every such layer becomes a :class:`SpotLayer` holding two copies, ``tuned`` (trained) and ``frozen`` (the source
weights, ``requires_grad`` off); the output is ``g * frozen(x) + (1 - g) * tuned(x)`` with the layer's gate ``g``
in {0, 1} for each image of the batch. :class:`PolicyNet` (a small CNN of the plans' convolution type: 2-D or
3-D) reads the network's input and gives two logits per layer; in training the gates are hard Gumbel-softmax
samples (straight-through gradients to the policy, temperature :attr:`SpotTUNet.temperature`), at inference the
argmax. The segmentation layers (``decoder.seg_layers``) are always the tuned copy. Everything is in the state
dict, so stock ``nnUNetv2_predict`` runs the policy (per sliding-window patch) at about twice the plain
network's convolution cost.

The policy's gates of the last forward pass are kept in :attr:`SpotTUNet.last_gates` (``(B, L)``, 1 = frozen),
for the paper's penalty ``lambda * sum_l (1 - I_l(x))`` on the number of fine-tuned layers and for the policy
figure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from torch import nn

__all__ = ["PolicyNet", "SpotLayer", "SpotTUNet", "spot_layer_names"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class _Gates:
    """The gates of the current forward pass, shared by the network and its layers (not a module: no state)."""

    def __init__(self):
        self.value: torch.Tensor | None = None


class SpotLayer(nn.Module):
    """A layer with a trained copy and a frozen source copy, mixed per sample by the network's current gates.

    Args:
        layer: the layer; it becomes ``tuned``, a deep copy with ``requires_grad`` off becomes ``frozen``.
        gates: the shared gate holder.
        index: this layer's column in the gates.
    """

    def __init__(self, layer: nn.Module, gates: _Gates, index: int):
        super().__init__()
        self.tuned = layer
        self.frozen = copy.deepcopy(layer)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self._gates = gates
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self._gates.value
        if gates is None:
            raise RuntimeError("SpotLayer called outside SpotTUNet.forward (no gates set)")
        g = gates[:, self.index].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return g * self.frozen(x) + (1 - g) * self.tuned(x)


class PolicyNet(nn.Module):
    """Two logits per layer from the input image: strided convolutions, global average pooling, a linear layer.

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d`` (the plans' convolution).
        in_channels: image channels.
        num_layers: layers to gate.
        channels: feature channels of the convolution stages.

    Shape:
        ``(B, C, *spatial)`` -> ``(B, num_layers, 2)``.
    """

    def __init__(self, conv_op: type[nn.Module], in_channels: int, num_layers: int,
                 channels: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        stages, c = [], in_channels
        for out in channels:
            stages += [conv_op(c, out, 3, stride=2, padding=1), nn.LeakyReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(c, 2 * num_layers)
        self.num_layers = num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).flatten(2).mean(-1)
        return self.head(pooled).view(len(x), self.num_layers, 2)


def spot_layer_names(network: nn.Module) -> list[str]:
    """The names of the layers :class:`SpotTUNet` gates, in forward order of the modules' registration:
    every ``ConvDropoutNormReLU`` and transposed convolution outside ``decoder.seg_layers``."""
    return [name for name, m in network.named_modules()
            if isinstance(m, (ConvDropoutNormReLU, *_TRANSPOSED)) and not name.startswith("decoder.seg_layers")]


class SpotTUNet(nn.Module):
    """An nnU-Net network whose layers are chosen per image between a frozen and a fine-tuned copy.

    Args:
        unet: the plans network (``build_network_architecture``'s output).
        conv_op: its convolution type, for the policy network.
        in_channels: image channels.
        temperature: the Gumbel-softmax temperature in training.

    Raises:
        ValueError: ``unet`` has no layer to gate (an architecture without ``ConvDropoutNormReLU`` blocks).
    """

    def __init__(self, unet: nn.Module, conv_op: type[nn.Module], in_channels: int, temperature: float = 0.1):
        super().__init__()
        names = spot_layer_names(unet)
        if not names:
            raise ValueError(f"SpotTUNet: {type(unet).__name__} has no ConvDropoutNormReLU or transposed convolution "
                             f"to gate; use a plans network of dynamic-network-architectures")
        self._gates = _Gates()
        for index, name in enumerate(names):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name) if parent_name else unet
            setattr(parent, child, SpotLayer(getattr(parent, child), self._gates, index))
        self.unet = unet
        self.policy = PolicyNet(conv_op, in_channels, len(names))
        self.layer_names = names
        self.temperature = temperature
        self.last_gates: torch.Tensor | None = None

    @property
    def decoder(self) -> nn.Module:
        """The U-Net's decoder (nnU-Net switches ``decoder.deep_supervision``)."""
        return self.unet.decoder

    @property
    def encoder(self) -> nn.Module:
        return self.unet.encoder

    def forward(self, x: torch.Tensor):
        logits = self.policy(x)
        if self.training:
            gates = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)[..., 1]
        else:
            gates = (logits.argmax(-1) == 1).to(x.dtype)
        self._gates.value = gates
        try:
            out = self.unet(x)
        finally:
            self._gates.value = None
        self.last_gates = gates
        return out

    def load_plain_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a plain network's weights (the source model) into both copies of every layer; the policy keeps
        its initialisation.

        Raises:
            RuntimeError: the weights do not fit the U-Net (missing or unexpected keys, other shapes).
        """
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for key, value in own.items():
            if key.startswith("policy."):
                mapped[key] = value
                continue
            plain = key[len("unet."):].replace(".tuned.", ".").replace(".frozen.", ".")
            if plain not in state_dict:
                raise RuntimeError(f"the plain weights have no {plain!r} (for {key!r}): another architecture")
            mapped[key] = state_dict[plain]
            used.add(plain)
        unexpected = sorted(set(state_dict) - used)
        if unexpected:
            raise RuntimeError(f"the plain weights have keys this network does not: {unexpected[:5]}")
        self.load_state_dict(mapped)
