"""The plans network plus test-time behaviour: the one pattern every method network follows.

nnU-Net builds the network of a configuration from the plans (``get_network_from_plans``), trains it, saves
its ``state_dict()`` and, at inference, rebuilds it with the trainer class's *static*
``build_network_architecture(...)`` and loads the saved weights strictly (before every case). A method that
acts at test time wraps that plans network in a :class:`PlansNetworkWrapper` subclass:

* **The plans network is the child** ``net`` (an ordinary registered submodule: ``train()``, ``to()``,
  ``deepcopy`` and DDP need nothing special). ``wrapper.decoder`` and ``wrapper.encoder`` are the plans
  network's, so nnU-Net's ``set_deep_supervision_enabled`` (``network.decoder.deep_supervision = ...``) reaches
  it.
* **Stock state-dict keys.** The plans network's entries appear without a ``net.`` prefix, exactly as in a
  stock nnU-Net checkpoint; the method's own entries (``bank.*``, ``rotation_tta_enabled``, CateNorm's
  ``...cond_gamma.*``) come after them. A stock checkpoint therefore loads into the wrapper (see the rule below
  for the method's entries) and :meth:`PlansNetworkWrapper.plans_state_dict` loads strictly into a stock
  network. Two public ``torch.nn.Module`` hooks do the renaming (a state-dict post-hook and a load pre-hook);
  checkpoints written with the ``net.`` prefix (Fourier MST before this module existed) still load.
* **Forward.** Training mode, or ``enabled = False``: the plans network, unchanged. Eval mode: the method's
  :meth:`~PlansNetworkWrapper.test_time_forward`, except for *blank* patches (below).

**The rule for test-time state.** What prediction needs is either a saved (persistent) buffer or parameter,
or derivable from the plans. Trainer class attributes (``rotation_tta``, ``fda_beta``, ...) are only the
*defaults written into the network at build time*; the checkpoint's values win when it is loaded, so a model
folder predicts as it was trained even after a class default changes. Consequences:

* A setting added later is listed in :attr:`~PlansNetworkWrapper.optional_entries`: a checkpoint written before
  it existed lacks the entry and the network keeps its build-time value (the class default).
* Structural settings that must be known before the weights can load (CateNorm's stages) cannot come from the
  checkpoint; :meth:`~PlansNetworkWrapper.check_checkpoint` compares them with the incoming state dict and
  raises a ``ValueError`` naming the mismatch instead of loading into the wrong structure.
* Runtime switches are not state: ``enabled`` (and ODEx's ``route``) default to on when a network is built and
  are turned off only by trainers, for nnU-Net's per-epoch pseudo-Dice; they are never saved. Settings that
  change cost but not the output (Fourier MST's ``max_batch``) are build-time settings too.
* ``hide_method_state``: while True, ``state_dict()`` holds only the plans network's entries and a load keeps
  the current value of every method entry it does not get. nnU-Net's ``-pretrained_weights`` asserts that
  every key of the new network is in the checkpoint; a trainer sets the flag between ``initialize()`` and the
  start of training so that a stock checkpoint warm-starts the plans network.

**Blank patches.** A patch (one sample of a forward batch) whose every channel is constant or nearly so
(:func:`blank_patches`: std at most ``1e-6`` times ``max(1, max |x|)``) carries no image content: the
restyling, rotation or conditioning of a test-time method can only invent structure there. Such patches get
:meth:`~PlansNetworkWrapper.blank_forward`, i.e. what the plain network predicts; the other samples of the
batch get the method. nnU-Net's sliding window meets such patches outside the body of masked-normalised
images (zeros) and in blank images.

**Pools.** ODEx (:class:`~nnunet_ext.networks.odex.ODExPool`) holds several plans networks (experts) and follows
the same rule without this base class: its variable state (experts, histories, reference, the active index) is
restored from the state dict itself (``experts.<i>.*`` keys grow the pool on load), its ``decoder`` switches
deep supervision on every expert, its runtime switch ``route`` is not saved, and blank patches are routed like
any other patch (deterministically; see its module docstring).

>>> import torch
>>> from torch import nn
>>> class Plain(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.encoder, self.decoder = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 3, 1)
...     def forward(self, x):
...         return self.decoder(self.encoder(x))
>>> class Flip(PlansNetworkWrapper):
...     def test_time_forward(self, x):
...         return (self.net(x) + self.net(x.flip(-1)).flip(-1)) / 2
>>> net = Flip(Plain()).eval()
>>> list(net.state_dict()) == list(Plain().state_dict())
True
>>> bool(torch.equal(net(torch.zeros(1, 1, 4, 4)), net.net(torch.zeros(1, 1, 4, 4))))  # blank: the plain output
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["BLANK_TOLERANCE", "PlansNetworkWrapper", "blank_patches", "moves_nothing", "near_constant_channels",
           "run_per_group"]

#: a channel is blank when its std is at most this times max(1, max |x|) (relative, so large values qualify too)
BLANK_TOLERANCE = 1e-6
_NET = "net"

#: a network output: logits, or nnU-Net's deep-supervision list of logits
Output = torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]


def near_constant_channels(x: torch.Tensor, tolerance: float = BLANK_TOLERANCE) -> torch.Tensor:
    """Which channels of which samples are constant or nearly so.

    Args:
        x: ``(B, C, *spatial)``.
        tolerance: a channel is near-constant when its std is at most ``tolerance * max(1, max |x|)``.

    Shape:
        Returns ``(B, C)`` bool. NaN channels are not near-constant.
    """
    flat = x.detach().flatten(2).float()
    scale = flat.abs().amax(dim=2).clamp_min(1.0)
    return flat.std(dim=2, correction=0) <= tolerance * scale


def blank_patches(x: torch.Tensor, tolerance: float = BLANK_TOLERANCE) -> torch.Tensor:
    """``(B,)`` bool: samples of ``x (B, C, *spatial)`` whose every channel is near-constant
    (:func:`near_constant_channels`)."""
    return near_constant_channels(x, tolerance).all(dim=1)


def run_per_group(x: torch.Tensor, groups: Sequence[Any], run: Callable[[Any, torch.Tensor], Output]) -> Output:
    """``run(group, x[samples of the group])`` once per distinct group; outputs reassembled in sample order.

    Args:
        x: ``(B, ...)`` batch.
        groups: one hashable, sortable label per sample (an expert index, a blank flag).
        run: maps a label and its samples to a tensor or a list of tensors (deep supervision), batch first.

    Returns:
        What ``run`` returns, for all ``B`` samples in their original order (a list for deep supervision).
    """
    distinct = sorted(set(groups))
    if len(distinct) == 1:
        return run(distinct[0], x)
    members = [[i for i, g in enumerate(groups) if g == d] for d in distinct]
    outputs = [run(d, x[m]) for d, m in zip(distinct, members)]
    order = torch.tensor([i for m in members for i in m], device=x.device)
    inverse = torch.argsort(order)
    if isinstance(outputs[0], (list, tuple)):
        return [torch.cat(level)[inverse] for level in zip(*outputs)]
    return torch.cat(outputs)[inverse]


def moves_nothing(module: nn.Module, *args: Any, **kwargs: Any) -> bool:
    """True if ``module.to(*args, **kwargs)`` would leave every parameter and buffer where and as it is.

    Parses the arguments exactly as ``Tensor.to`` does, on empty probe tensors of each device and floating
    dtype the module holds (``Module.to`` changes the dtype of floating-point and complex tensors only). A
    ``memory_format`` always counts as a change.
    """
    if "memory_format" in kwargs:
        return False
    tensors = [*module.parameters(), *module.buffers()]
    for device in {t.device for t in tensors}:
        if torch.empty(0, device=device).to(*args, **kwargs).device != device:
            return False
    for dtype in {t.dtype for t in tensors if t.is_floating_point() or t.is_complex()}:
        if torch.empty(0, dtype=dtype, device=tensors[0].device).to(*args, **kwargs).dtype != dtype:
            return False
    return True


class PlansNetworkWrapper(nn.Module):
    """The plans network ``net`` plus a test-time method, with the plans network's state-dict keys.

    Subclasses register their own parameters / buffers / submodules after ``super().__init__(net)`` and
    implement :meth:`test_time_forward`; see the module docstring for the rule they follow.

    Args:
        net: the network nnU-Net builds from the plans (``get_network_from_plans`` or a trainer's
            ``build_network_architecture``).

    Attributes:
        net: the plans network (a registered child whose state-dict entries carry no ``net.`` prefix).
        enabled: runtime switch (not saved): False makes the eval-mode forward the plans network.
        hide_method_state: while True, ``state_dict()`` leaves out the method's entries and loads keep the
            current values of method entries they do not get (for nnU-Net's ``-pretrained_weights``).
        optional_entries: names (state-dict keys) of method entries a checkpoint may lack because they were
            added later; a load without them keeps the build-time values.
    """

    optional_entries: ClassVar[tuple[str, ...]] = ()

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.enabled = True
        self.hide_method_state = False
        self._plans_keys = frozenset(net.state_dict())
        self._loading_prefix = ""
        self.register_state_dict_post_hook(_save_with_plans_keys)
        self.register_load_state_dict_pre_hook(_load_plans_keys_into_net)
        self.register_load_state_dict_post_hook(_report_checkpoint_names)

    @property
    def decoder(self) -> nn.Module:
        """The plans network's decoder (nnU-Net sets ``decoder.deep_supervision`` on it)."""
        return self.net.decoder

    @property
    def encoder(self) -> nn.Module:
        """The plans network's encoder (AttributeError if the plans network has none)."""
        return self.net.encoder

    def is_method_key(self, key: str) -> bool:
        """True for a state-dict key (as saved) that a stock network of the same plans does not have."""
        return key not in self._plans_keys

    def plans_state_dict(self) -> dict[str, torch.Tensor]:
        """The entries a stock network of the same plans has: loads into it strictly."""
        return {k: v for k, v in self.state_dict().items() if not self.is_method_key(k)}

    def check_checkpoint(self, keys: set[str]) -> None:
        """Compare structural settings with the keys of an incoming state dict (as saved); raise ``ValueError``
        naming a mismatch. Called before every load; the base class checks nothing."""

    # forward ----------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Output:
        if self.training or not self.enabled:
            return self.net(x)
        blank = blank_patches(x)
        if not bool(blank.any()):
            return self.test_time_forward(x)
        return run_per_group(x, blank.tolist(),
                             lambda is_blank, xs: self.blank_forward(xs) if is_blank else self.test_time_forward(xs))

    def test_time_forward(self, x: torch.Tensor) -> Output:
        """The method's eval-mode forward of non-blank patches ``(B, C, *spatial)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement test_time_forward(x)")

    def blank_forward(self, x: torch.Tensor) -> Output:
        """The eval-mode forward of blank patches: the plans network's output (subclasses may change its form,
        e.g. to log-probabilities, never its content)."""
        return self.net(x)


def _save_with_plans_keys(module: PlansNetworkWrapper, state_dict: dict, prefix: str, _local_metadata) -> None:
    """State-dict post-hook: ``net.<key>`` -> ``<key>``, the plans network's entries first, then the method's."""
    inner = prefix + _NET + "."
    ours = [k for k in state_dict if k.startswith(prefix)]
    entries = {k: state_dict.pop(k) for k in ours}
    plans = {prefix + k[len(inner):]: v for k, v in entries.items() if k.startswith(inner)}
    method = {k: v for k, v in entries.items() if not k.startswith(inner)}
    clash = sorted(set(plans) & set(method))
    if clash:
        raise RuntimeError(f"{type(module).__name__}: entries {clash} exist both in the plans network and in the "
                           f"wrapper; rename the wrapper's attribute")
    for key, value in {**plans, **method}.items():
        if not (module.hide_method_state and module.is_method_key(key[len(prefix):])):
            state_dict[key] = value


def _load_plans_keys_into_net(module: PlansNetworkWrapper, state_dict: dict, prefix: str, _local_metadata, _strict,
                              _missing_keys, _unexpected_keys, _error_msgs) -> None:
    """Load pre-hook: check the structure, then ``<key>`` -> ``net.<key>`` for the plans network's entries.

    The ``state_dict`` here is ``load_state_dict``'s own copy, so renaming never touches the caller's mapping.
    Keys that already start with ``net.`` (the older layout) are left as they are.
    """
    module._loading_prefix = prefix
    ours = [k for k in state_dict if k.startswith(prefix)]
    module.check_checkpoint({k[len(prefix):].removeprefix(_NET + ".") for k in ours})
    net = module.net
    top = {n for n, _ in net.named_children()} | {n for n, _ in net.named_parameters(recurse=False)} | \
        {n for n, _ in net.named_buffers(recurse=False)}
    for key in ours:
        rest = key[len(prefix):]
        if rest.split(".", 1)[0] in top:
            state_dict[prefix + _NET + "." + rest] = state_dict.pop(key)


def _report_checkpoint_names(module: PlansNetworkWrapper, incompatible) -> None:
    """Load post-hook: forgive missing method entries that may be missing; report keys as a checkpoint has them."""
    prefix = module._loading_prefix
    inner = prefix + _NET + "."

    def saved_name(key: str) -> str:
        return prefix + key[len(inner):] if key.startswith(inner) else key

    missing = []
    for key in map(saved_name, incompatible.missing_keys):
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is not None and module.is_method_key(name) and (
                module.hide_method_state or name in module.optional_entries):
            continue
        missing.append(key)
    incompatible.missing_keys[:] = missing
    incompatible.unexpected_keys[:] = [saved_name(k) for k in incompatible.unexpected_keys]
