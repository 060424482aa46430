"""The bottleneck of an nnU-Net encoder's ordinary forward pass, for losses on features (style consistency's
regeneration decoder, AIVA's cluster alignment).

A forward hook keeps the encoder's last output while :meth:`FeatureCapture.active` is set, so a trainer gets the
bottleneck of the forward pass it runs anyway (through DDP, ``torch.compile`` and any other wrapper) instead of
running the encoder a second time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureCapture"]


class FeatureCapture:
    """Keeps the bottleneck of ``encoder``'s forward passes while :meth:`active`.

    Works for encoders that return a list of skips (nnU-Net's, the last is the bottleneck) or a tensor.
    The captured tensor keeps its autograd graph: a loss on it trains the encoder.

    Args:
        encoder: the module to hook (the plans network's ``encoder``, inside any DDP / compile wrapper).

    Attributes:
        outputs: the bottlenecks captured since :meth:`active` was entered, in call order.
    """

    def __init__(self, encoder: nn.Module):
        self.outputs: list[torch.Tensor] = []
        self._active = False
        self._handle = encoder.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._active:
            self.outputs.append(output[-1] if isinstance(output, (list, tuple)) else output)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Capture within this block; the captures are dropped when it ends (no graph outlives the step)."""
        self.outputs.clear()
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self.outputs.clear()

    def take_latest(self) -> torch.Tensor:
        """The most recent capture (the forward pass a loss is computed on); earlier ones are dropped.

        A trainer may run the encoder more than once before its loss (CateNorm's no-gradient pass for the mask,
        then the pass that is trained): the last pass is the one whose output the loss sees.

        Raises:
            RuntimeError: nothing was captured (the encoder did not run inside :meth:`active`).
        """
        if not self.outputs:
            raise RuntimeError("no encoder output was captured: the network's encoder did not run inside "
                               "FeatureCapture.active()")
        latest = self.outputs[-1]
        self.outputs.clear()
        return latest

    def remove(self) -> None:
        """Remove the hook."""
        self._handle.remove()
