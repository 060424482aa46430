"""Per-layer training speed: the mean absolute weight update of each layer, grouped as in Sheikh et al.

Sheikh, Klasen, Schultz (DART 2022, Fig. 2) plot the average magnitude of weight updates per layer for
SGD and AvaGrad, grouped by nnU-Net's layer roles: ``context`` (encoder convolutions), ``transpose``
(transposed convolutions), ``localization`` (decoder convolutions after the skip concatenation) and
``segmentation`` (the 1x1 output heads). :class:`UpdateMeter` accumulates ``mean(|w_after - w_before|)``
per weight tensor over optimizer steps; the trainer turns it into one value per layer and epoch.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> meter = UpdateMeter({"head": lin.weight})
    >>> meter.before_step()
    >>> with torch.no_grad():
    ...     _ = lin.weight.add_(0.5)
    >>> meter.after_step()
    >>> meter.pop_means()
    {'head': 0.5}
"""

from __future__ import annotations

import re

import torch

#: (pattern on the parameter name, group) for nnU-Net's PlainConvUNet / ResidualEncoderUNet naming
_GROUP_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(^|\.)encoder\."), "context"),
    (re.compile(r"(^|\.)decoder\.transpconvs\."), "transpose"),
    (re.compile(r"(^|\.)decoder\.seg_layers\."), "segmentation"),
    (re.compile(r"(^|\.)decoder\.stages\."), "localization"),
)
GROUPS: tuple[str, ...] = ("context", "transpose", "localization", "segmentation")


def layer_group(parameter_name: str) -> str | None:
    """The paper's group of a parameter name, or None when it is not a conv weight of a U-Net role.

    >>> layer_group("encoder.stages.0.0.convs.0.conv.weight")
    'context'
    >>> layer_group("decoder.seg_layers.4.weight")
    'segmentation'
    >>> layer_group("encoder.stages.0.0.convs.0.norm.weight") is None
    True
    """
    if not parameter_name.endswith(".weight") or ".norm." in parameter_name or ".all_modules." in parameter_name:
        return None
    for pattern, group in _GROUP_PATTERNS:
        if pattern.search(parameter_name):
            return group
    return None


class UpdateMeter:
    """Accumulates the mean absolute update of named tensors across optimizer steps.

    Args:
        tensors: name -> parameter tensor (the same objects the optimizer updates).
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = dict(tensors)
        self._before: list[torch.Tensor] | None = None
        self._sums = {name: 0.0 for name in self.tensors}
        self._steps = 0

    @torch.no_grad()
    def before_step(self) -> None:
        self._before = [t.detach().clone() for t in self.tensors.values()]

    @torch.no_grad()
    def after_step(self) -> None:
        if self._before is None:
            raise RuntimeError("UpdateMeter.after_step called without before_step")
        after = [t.detach() for t in self.tensors.values()]
        diffs = torch._foreach_sub(after, self._before)
        means = torch.stack([d.abs().mean() for d in diffs]).double().cpu().tolist()
        for name, m in zip(self.tensors, means):
            self._sums[name] += m
        self._steps += 1
        self._before = None

    def pop_means(self) -> dict[str, float]:
        """Mean update per step since the last call, per tensor; resets the meter."""
        steps = max(self._steps, 1)
        means = {name: s / steps for name, s in self._sums.items()}
        self._sums = {name: 0.0 for name in self.tensors}
        self._steps = 0
        return means
