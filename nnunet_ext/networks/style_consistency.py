"""The training-only parts of style consistency + regeneration (:mod:`nnunet_ext.core.style_consistency`).

Nothing here runs at test time: the segmentation network stays the plans network (a stock nnU-Net state
dict, predicted by stock ``nnUNetv2_predict``, loadable by ``-pretrained_weights``), as the paper drops the
regeneration network at inference.

* :class:`RegenerationDecoder`: the paper's ``M_gen``, "stacked convolutions in each stage before upsampling to
  get the original image size", built from an nnU-Net encoder (``PlainConvEncoder``, ``ResidualEncoder``: any
  encoder with dynamic-network-architectures' ``output_channels`` / ``strides`` / ``conv_op`` attributes). It
  reads the **bottleneck** only and mirrors the encoder's stages: per stage, from the deepest, as many
  convolutions as the stage's ``StackedConvBlocks`` has (2 for encoders built of residual blocks), with the
  encoder's kernel size, norm and non-linearity, and a transposed convolution by the stage's stride, then a
  1 x 1 convolution to the image channels. No skip connections: a skip would hand the decoder the
  altered image's high-resolution features, and regeneration could succeed by undoing the alteration locally
  instead of requiring style-free features where the paper puts them (after the feature extractor).
* :class:`~nnunet_ext.networks.feature_capture.FeatureCapture` (its own module, shared with AIVA): the bottleneck
  of the ordinary
  forward pass (through DDP and any other wrapper) feeds the regeneration decoder without a second encoder pass.
"""

from __future__ import annotations

from typing import Any

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

__all__ = ["RegenerationDecoder"]


def _convs_in(stage: nn.Module) -> int:
    """Convolutions of an encoder stage's ``StackedConvBlocks`` (2, nnU-Net's default, if it has none)."""
    blocks = [m for m in stage.modules() if isinstance(m, StackedConvBlocks)]
    return sum(len(b.convs) for b in blocks) or 2


class RegenerationDecoder(nn.Module):
    """Image decoder from an encoder's bottleneck back to the input's size and channels.

    Args:
        encoder: the plans network's encoder (read for its structure only; no weights are shared).
        out_channels: channels of the regenerated image (the network's input channels).

    Shape:
        Input: the bottleneck ``(B, encoder.output_channels[-1], *spatial / prod(strides))``.
        Output: ``(B, out_channels, *spatial)``.

    Raises:
        TypeError: ``encoder`` lacks the attributes of a dynamic-network-architectures encoder.
    """

    def __init__(self, encoder: nn.Module, out_channels: int):
        super().__init__()
        needed = ("output_channels", "strides", "conv_op", "kernel_sizes")
        missing = [a for a in needed if not hasattr(encoder, a)]
        if missing:
            raise TypeError(f"RegenerationDecoder needs a dynamic-network-architectures encoder (PlainConvEncoder, "
                            f"ResidualEncoder); {type(encoder).__name__} has no {missing}")
        conv_op = encoder.conv_op
        transpose = get_matching_convtransp(conv_op=conv_op)
        common: dict[str, Any] = {
            "conv_bias": getattr(encoder, "conv_bias", True), "norm_op": getattr(encoder, "norm_op", None),
            "norm_op_kwargs": getattr(encoder, "norm_op_kwargs", None), "nonlin": getattr(encoder, "nonlin", None),
            "nonlin_kwargs": getattr(encoder, "nonlin_kwargs", None)}
        channels = list(encoder.output_channels)
        n_convs = [_convs_in(stage) for stage in encoder.stages] if hasattr(encoder, "stages") else [2] * len(channels)
        stages: list[nn.Module] = []
        for s in range(len(channels) - 1, -1, -1):  # deepest first
            out = channels[s - 1] if s > 0 else channels[0]
            block: list[nn.Module] = [StackedConvBlocks(int(n_convs[s]), conv_op, channels[s], channels[s],
                                                        encoder.kernel_sizes[s], 1, **common)]
            stride = [int(v) for v in encoder.strides[s]]
            if any(v != 1 for v in stride):
                block.append(transpose(channels[s], out, stride, stride, bias=common["conv_bias"]))
            elif out != channels[s]:
                block.append(conv_op(channels[s], out, 1, bias=True))
            stages.append(nn.Sequential(*block))
        self.stages = nn.Sequential(*stages)
        self.head = conv_op(channels[0], int(out_channels), 1, bias=True)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(bottleneck))
