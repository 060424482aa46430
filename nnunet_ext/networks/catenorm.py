"""The CateNorm U-Net: an nnU-Net plans network whose first encoder stages normalise with CateNorm.

:class:`CateNormUNet` builds the network the plans describe (``PlainConvUNet`` or ``ResidualEncoderUNet``,
built by nnU-Net's own ``get_network_from_plans``) and replaces every normalization layer of the chosen
encoder stages with :class:`~nnunet_ext.core.catenorm.CateNorm` (same statistics, eps and affine). It is a
:class:`~nnunet_ext.networks.wrapper.PlansNetworkWrapper` around that plans network, so every state-dict key
of the plain network is unchanged (a stock nnU-Net checkpoint's weights fit) and the CateNorm branches add keys
``...cond_shared.*``, ``...cond_gamma.*``, ``...cond_beta.*`` plus the buffers ``catenorm_active`` and
``catenorm_mask_mode``. All other weights are shared by the two passes.

Passes (``forward(x, branch=...)``):

``"plain"``     the ordinary network (paper Eq. 3, ``y_B``).
``"catenorm"``  the CateNorm pass conditioned on ``mask`` (paper Eq. 4, ``y_C``); without ``mask``, the mask
                is the detached softmax of a plain pass computed first.
``"auto"``      (what nnU-Net calls) training mode: plain. Eval mode: the two passes if the persistent buffer
                ``catenorm_active`` is set (the trainer sets it when stage two starts), else plain. So a
                checkpoint saved during warm-up predicts with the ordinary branch, one saved later with the
                paper's two-pass inference, and stock ``nnUNetv2_predict`` does this by itself.

Masks come from the highest-resolution output (deep supervision returns a list) and have
``num_classes`` channels.

Test-time state (the rule of :mod:`nnunet_ext.networks.wrapper`): ``catenorm_active`` and the mask resizing
``catenorm_mask_mode`` are saved buffers (checkpoints written before the mask mode was saved keep the build
default). The stages are structural: they come from the plans variant or the trainer class and must be known
before the weights load, so every load compares them with the stages the incoming state dict has CateNorm
entries for and refuses a mismatch by name.

Blank patches (:func:`~nnunet_ext.networks.wrapper.blank_patches`) in the two-pass inference get the plain
pass only: a mask predicted from no content cannot condition anything (documented deviation).

``hide_method_state`` (the wrapper's): while True, ``state_dict()`` leaves out the CateNorm-branch entries (and
the two buffers) and ``load_state_dict`` keeps the current values of entries it does not get. nnU-Net's
``-pretrained_weights`` (``load_pretrained_weights``) requires every key of the new network in the
checkpoint; the trainer sets the flag between ``initialize()`` and the start of training so that a stock
nnU-Net checkpoint warm-starts everything but the (new, paper: randomly initialised) CateNorm branch.
"""

from __future__ import annotations

import pydoc
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Literal

import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from nnunet_ext.core.catenorm import CateNorm, MaskMode
from nnunet_ext.networks.wrapper import PlansNetworkWrapper

#: dotted path that plans variants put into ``network_class_name``
CATENORM_UNET_PATH = "nnunet_ext.networks.catenorm.CateNormUNet"
#: plans networks this module knows how to equip (forward = decoder(encoder(x)))
SUPPORTED_BASES: tuple[str, ...] = (
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
)
#: the paper's default: CateNorm residual blocks 1-4 of a 5-stage encoder
PAPER_NUM_STAGES = 4
_CATENORM_KEYS = (".cond_shared.", ".cond_gamma.", ".cond_beta.")
_ACTIVE_KEY = "catenorm_active"
_MASK_MODE_KEY = "catenorm_mask_mode"
MASK_MODES: tuple[str, ...] = ("area", "nearest")
_STAGE_OF_KEY = re.compile(r"^encoder\.stages\.(\d+)\.")
_IMPORT_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")

Branch = Literal["auto", "plain", "catenorm"]


def default_stages(n_stages: int) -> tuple[int, ...]:
    """The paper's placement for an encoder of ``n_stages``: the first four stages, never the bottleneck."""
    return tuple(range(min(PAPER_NUM_STAGES, n_stages - 1)))


def is_catenorm_key(key: str) -> bool:
    """True for state-dict entries that belong to the CateNorm branch (not in a plain nnU-Net network)."""
    return key.endswith((_ACTIVE_KEY, _MASK_MODE_KEY)) or any(k in key for k in _CATENORM_KEYS)


def _base_name(name: str) -> str:
    for full in SUPPORTED_BASES:
        if name == full or name == full.rsplit(".", 1)[1]:
            return full
    raise NotImplementedError(
        f"CateNorm supports the plans networks {list(SUPPORTED_BASES)}; the plans name {name!r}. Use nnU-Net's "
        f"default (nnUNetPlans) or residual-encoder (nnUNetResEncUNet*Plans) plans.")


class CateNormUNet(PlansNetworkWrapper):
    """A plans U-Net with CateNorm in ``catenorm_stages`` of the encoder and two-pass inference.

    Args:
        input_channels: image channels.
        num_classes: segmentation outputs (also the mask channels).
        base_network_class_name: the plans network (one of :data:`SUPPORTED_BASES`).
        catenorm_stages: encoder stage indices (0 = highest resolution) that get CateNorm; None: the paper's
            :func:`default_stages`. The ResEnc stem (a single conv before stage 0) keeps its plain norm.
        catenorm_hidden_ratio: channels of the first conditioning conv / the layer's channels (paper 0.5).
        catenorm_mask_mode: mask resizing (:func:`~nnunet_ext.core.catenorm.resize_mask`).
        deep_supervision: as the plans network.
        **base_arch_kwargs: the plans network's ``arch_kwargs`` (classes or dotted paths).

    Raises:
        NotImplementedError: the base network or its normalization is not supported.
        ValueError: a stage index is out of range or repeated; on load, the state dict has CateNorm entries for
            other stages.
    """

    optional_entries = (_MASK_MODE_KEY,)  # checkpoints written before the mask mode was saved

    def __init__(self, input_channels: int, num_classes: int, base_network_class_name: str,
                 catenorm_stages: Sequence[int] | None = None, catenorm_hidden_ratio: float = 0.5,
                 catenorm_mask_mode: MaskMode = "area", deep_supervision: bool = False, **base_arch_kwargs: Any):
        base_cls = pydoc.locate(_base_name(base_network_class_name))
        for key in _IMPORT_KEYS:  # plans hold dotted paths; nnU-Net resolves them before calling us
            if isinstance(base_arch_kwargs.get(key), str):
                base_arch_kwargs[key] = pydoc.locate(base_arch_kwargs[key])
        base = base_cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                        **base_arch_kwargs)
        base.apply(base.initialize)  # nnU-Net's initialisation of the plain network (get_network_from_plans)
        super().__init__(base)
        n_stages = len(self.encoder.stages)
        stages = default_stages(n_stages) if catenorm_stages is None else tuple(int(s) for s in catenorm_stages)
        if not stages or len(set(stages)) != len(stages) or not all(0 <= s < n_stages for s in stages):
            raise ValueError(f"catenorm_stages must be distinct indices in [0, {n_stages}) for this {n_stages}-stage "
                             f"encoder, got {catenorm_stages!r}")
        if not catenorm_hidden_ratio > 0:
            raise ValueError(f"catenorm_hidden_ratio must be > 0, got {catenorm_hidden_ratio!r}")
        if catenorm_mask_mode not in MASK_MODES:
            raise ValueError(f"catenorm_mask_mode must be one of {MASK_MODES}, got {catenorm_mask_mode!r}")
        self.catenorm_stages, self.hidden_ratio, self.num_classes = stages, float(catenorm_hidden_ratio), num_classes
        spatial_dims = convert_conv_op_to_dim(self.encoder.conv_op)
        for s in stages:
            _equip(self.encoder.stages[s], num_classes, spatial_dims, self.hidden_ratio, catenorm_mask_mode)
        self.register_buffer(_ACTIVE_KEY, torch.tensor(False))
        self.register_buffer(_MASK_MODE_KEY, torch.tensor(MASK_MODES.index(catenorm_mask_mode)))
        self.register_load_state_dict_post_hook(_mask_mode_to_layers)

    # ------------------------------------------------------------------ layers and state
    def catenorm_layers(self) -> list[CateNorm]:
        return [m for m in self.modules() if isinstance(m, CateNorm)]

    def conditioning_parameters(self) -> Iterator[nn.Parameter]:
        """The CateNorm branch parameters (paper theta_NC); everything else is shared with the plain network."""
        for layer in self.catenorm_layers():
            yield from layer.conditioning_parameters()

    @property
    def is_catenorm_active(self) -> bool:
        return bool(getattr(self, _ACTIVE_KEY))

    def activate_catenorm(self, init_from_plain: bool = True) -> None:
        """Start stage two: eval-mode ``forward`` does two passes from now on (saved with the weights)."""
        if init_from_plain:
            for layer in self.catenorm_layers():
                layer.init_from_plain()
        getattr(self, _ACTIVE_KEY).fill_(True)

    @property
    def mask_mode(self) -> str:
        """Mask resizing of every CateNorm layer (saved as ``catenorm_mask_mode``)."""
        return MASK_MODES[int(getattr(self, _MASK_MODE_KEY))]

    @mask_mode.setter
    def mask_mode(self, mode: MaskMode) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
        getattr(self, _MASK_MODE_KEY).fill_(MASK_MODES.index(mode))
        for layer in self.catenorm_layers():
            layer.mask_mode = mode

    def check_checkpoint(self, keys: set[str]) -> None:
        """Refuse a state dict whose CateNorm entries belong to other encoder stages than this network's."""
        saved = sorted({int(m.group(1)) for k in keys if any(c in k for c in _CATENORM_KEYS)
                        and (m := _STAGE_OF_KEY.match(k))})
        if saved and saved != sorted(self.catenorm_stages):
            raise ValueError(
                f"the state dict has CateNorm in encoder stages {saved} but this network was built with "
                f"catenorm_stages {sorted(self.catenorm_stages)}. The stages come from the plans (nnext plans "
                f"catenorm) or the trainer class attribute catenorm_stages: predict with the plans and the trainer "
                f"the model was trained with")

    # ------------------------------------------------------------------ passes
    @staticmethod
    def mask_from_output(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Detached softmax of the highest-resolution output (the paper's class mask y_B)."""
        logits = output[0] if isinstance(output, (list, tuple)) else output
        return torch.softmax(logits.detach().float(), dim=1)

    def forward(self, x: torch.Tensor, branch: Branch = "auto", mask: torch.Tensor | None = None):
        if branch not in ("auto", "plain", "catenorm"):
            raise ValueError(f"branch must be 'auto', 'plain' or 'catenorm', got {branch!r}")
        if branch == "auto":  # training: plain; eval: the wrapper's test-time forward (blank patches: plain)
            return super().forward(x)
        if branch == "plain":
            return self.net(x)
        if mask is None:
            with torch.no_grad():
                mask = self.mask_from_output(self.net(x))
        with ExitStack() as stack:
            for layer in self.catenorm_layers():
                stack.enter_context(layer.conditioned_on(mask))
            return self.net(x)

    def test_time_forward(self, x: torch.Tensor):
        """Eval mode: the two passes once ``catenorm_active`` is set, else the plain pass."""
        return self.forward(x, branch="catenorm") if self.is_catenorm_active else self.net(x)

    def compute_conv_feature_map_size(self, input_size):
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)


def _equip(stage: nn.Module, num_classes: int, spatial_dims: int, hidden_ratio: float, mask_mode: MaskMode) -> None:
    """Replace every InstanceNorm / BatchNorm inside ``stage`` (all aliases of one layer by one CateNorm)."""
    replacements: dict[int, CateNorm] = {}
    for parent in list(stage.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CateNorm) or not isinstance(child, (_InstanceNorm, _BatchNorm)):
                continue
            if id(child) not in replacements:
                replacements[id(child)] = _catenorm_like(child, num_classes, spatial_dims, hidden_ratio, mask_mode)
            setattr(parent, name, replacements[id(child)])
    if not replacements:
        raise NotImplementedError(
            f"CateNorm found no InstanceNorm/BatchNorm layer in encoder stage {stage.__class__.__name__}; the plans' "
            f"norm_op must be torch.nn.InstanceNormNd or BatchNormNd")


def _catenorm_like(norm: nn.Module, num_classes: int, spatial_dims: int, hidden_ratio: float,
                   mask_mode: MaskMode) -> CateNorm:
    if isinstance(norm, _InstanceNorm):
        if norm.track_running_stats:
            raise NotImplementedError("CateNorm: InstanceNorm with track_running_stats=True is not supported")
        statistics = "instance"
    else:
        if not norm.track_running_stats:
            raise NotImplementedError("CateNorm: BatchNorm with track_running_stats=False is not supported")
        statistics = "batch"
    layer = CateNorm(norm.num_features, norm.eps, norm.affine, num_classes=num_classes, spatial_dims=spatial_dims,
                     hidden_channels=max(1, round(norm.num_features * hidden_ratio)), statistics=statistics,
                     momentum=norm.momentum if norm.momentum is not None else 0.1, mask_mode=mask_mode)
    with torch.no_grad():
        if norm.affine:
            layer.weight.copy_(norm.weight)
            layer.bias.copy_(norm.bias)
        if statistics == "batch":
            layer.running_mean.copy_(norm.running_mean)
            layer.running_var.copy_(norm.running_var)
    return layer.to(next(iter(norm.parameters()), torch.empty(0)).device)


def catenorm_arch_kwargs(arch_class_name: str, arch_kwargs: dict[str, Any],
                         catenorm_stages: Sequence[int] | None = None, hidden_ratio: float = 0.5,
                         mask_mode: MaskMode = "area") -> dict[str, Any]:
    """``arch_kwargs`` of a plans configuration turned into :class:`CateNormUNet`'s (the plain keys stay on top,
    because nnU-Net reads e.g. ``strides`` from there for deep supervision)."""
    return {**arch_kwargs, "base_network_class_name": _base_name(arch_class_name),
            "catenorm_stages": None if catenorm_stages is None else [int(s) for s in catenorm_stages],
            "catenorm_hidden_ratio": float(hidden_ratio), "catenorm_mask_mode": mask_mode}


def build_catenorm_unet(arch_class_name: str, arch_kwargs: dict[str, Any], arch_kwargs_req_import: Sequence[str],
                        input_channels: int, num_classes: int, catenorm_stages: Sequence[int] | None = None,
                        hidden_ratio: float = 0.5, mask_mode: MaskMode = "area",
                        deep_supervision: bool = False) -> CateNormUNet:
    """A :class:`CateNormUNet` from a plans configuration's architecture entries (via nnU-Net's own builder).

    If the plans already name :data:`CATENORM_UNET_PATH` (a plans variant written by ``nnext plans catenorm``),
    its settings come from the plans and the keyword arguments here are ignored.
    """
    if arch_class_name != CATENORM_UNET_PATH:
        arch_kwargs = catenorm_arch_kwargs(arch_class_name, arch_kwargs, catenorm_stages, hidden_ratio, mask_mode)
    return get_network_from_plans(CATENORM_UNET_PATH, arch_kwargs, list(arch_kwargs_req_import), input_channels,
                                  num_classes, allow_init=True, deep_supervision=deep_supervision)


def _mask_mode_to_layers(module: CateNormUNet, _incompatible) -> None:
    """Load post-hook: the loaded ``catenorm_mask_mode`` reaches every CateNorm layer."""
    for layer in module.catenorm_layers():
        layer.mask_mode = module.mask_mode
