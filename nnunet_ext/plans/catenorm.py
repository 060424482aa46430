"""A CateNorm plans variant: every configuration's network becomes ``CateNormUNet`` by dotted path.

nnU-Net cannot discover external planners, but it builds whatever network class a plans file names. The
variant keeps every plain ``arch_kwargs`` entry (nnU-Net reads ``strides`` from there) and adds
``base_network_class_name`` and the CateNorm settings; the preprocessed data (``data_identifier``) is shared
with the source plans, so nothing is preprocessed again.

With the variant, :class:`~nnunet_ext.trainers.catenorm.nnUNetTrainerCateNorm` (and its subclasses) take the
CateNorm placement from the plans instead of their class attributes, so any placement can be trained without a
new trainer class::

    nnext plans catenorm -d 501 --stages 0 1 -o nnUNetPlans_CateNormS01
    nnUNetv2_train 501 2d 0 -tr nnUNetTrainerCateNorm -p nnUNetPlans_CateNormS01

A stock trainer given the variant builds the network but trains only its ordinary branch (and predicts with
it): the two-update training lives in the trainer.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunet_ext.core.catenorm import MaskMode
from nnunet_ext.networks.catenorm import CATENORM_UNET_PATH, catenorm_arch_kwargs
from nnunet_ext.utils.atomic import write_json_atomic


def catenorm_plans(plans: dict[str, Any], plans_name: str, stages: Sequence[int] | None = None,
                   hidden_ratio: float = 0.5, mask_mode: MaskMode = "area") -> dict[str, Any]:
    """A copy of ``plans`` named ``plans_name`` whose configurations build ``CateNormUNet``.

    Configurations without their own ``architecture`` (e.g. a cascade stage inheriting one) are left as they
    are and inherit the converted one.

    Raises:
        ValueError: no configuration has an architecture, or one already is a CateNorm plan.
        NotImplementedError: a configuration's network is not supported (names it).
    """
    out = copy.deepcopy(plans)
    out["plans_name"] = plans_name
    converted = 0
    for name, cfg in out.get("configurations", {}).items():
        arch = cfg.get("architecture")
        if arch is None:
            continue
        if arch["network_class_name"] == CATENORM_UNET_PATH:
            raise ValueError(f"configuration {name!r} already builds {CATENORM_UNET_PATH}; start from the plain plans")
        arch["arch_kwargs"] = catenorm_arch_kwargs(arch["network_class_name"], arch["arch_kwargs"], stages,
                                                   hidden_ratio, mask_mode)
        arch["network_class_name"] = CATENORM_UNET_PATH
        converted += 1
    if not converted:
        raise ValueError("the plans have no configuration with an 'architecture' entry (nnU-Net >= 2.3 plans needed)")
    return out


def write_catenorm_plans(preprocessed_dataset_dir: str | Path, source_plans: str = "nnUNetPlans",
                         target_plans: str = "nnUNetPlans_CateNorm", stages: Sequence[int] | None = None,
                         hidden_ratio: float = 0.5, mask_mode: MaskMode = "area", overwrite: bool = False) -> Path:
    """Write ``<target_plans>.json`` beside ``<source_plans>.json`` in ``$nnUNet_preprocessed/DatasetXXX_NAME``.

    Raises:
        FileNotFoundError: the source plans are missing (run nnUNetv2_plan_and_preprocess first).
        FileExistsError: the target exists and ``overwrite`` is False.
        ValueError: source and target names are equal.
    """
    folder = Path(preprocessed_dataset_dir)
    src, dst = folder / f"{source_plans}.json", folder / f"{target_plans}.json"
    if source_plans == target_plans:
        raise ValueError(f"target plans name must differ from the source ({source_plans!r})")
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found; run nnUNetv2_plan_and_preprocess first or pass the right -p")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    plans = json.loads(src.read_text(encoding="utf-8"))
    write_json_atomic(dst, catenorm_plans(plans, target_plans, stages, hidden_ratio, mask_mode))
    return dst
