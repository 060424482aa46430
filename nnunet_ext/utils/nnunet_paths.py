"""nnU-Net's folders in one place: the three environment variables, dataset, model and fold folders.

nnU-Net v2 finds its data through ``$nnUNet_raw``, ``$nnUNet_preprocessed`` and ``$nnUNet_results``
(nnU-Net's ``documentation/set_environment_variables.md``). Every nnunet-ext command and benchmark reads
them through :func:`nnunet_folder`, so a missing variable always gives the same error with the ``export``
line that fixes it. Dataset names and model-folder names come from nnunetv2's own functions
(``maybe_convert_to_dataset_name``, ``get_output_folder``), so they cannot drift from what
``nnUNetv2_train`` writes::

    $nnUNet_results/Dataset501_Name/nnUNetTrainer__nnUNetPlans__2d/fold_0     numbered fold
    $nnUNet_results/Dataset501_Name/nnUNetTrainer__nnUNetPlans__2d/fold_all   nnUNetv2_train 501 2d all

Example:
    >>> fold_folder(Path("/r/Dataset501_X/nnUNetTrainer__nnUNetPlans__2d"), "all").name
    'fold_all'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

FolderKind = Literal["raw", "preprocessed", "results"]
Fold = int | Literal["all"]

#: folder kind -> environment variable nnU-Net reads it from
ENV_VARS: dict[str, str] = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_CONTENTS = {
    "raw": "raw datasets (DatasetXXX_Name/ with dataset.json, imagesTr, labelsTr)",
    "preprocessed": "preprocessed datasets (written by nnUNetv2_plan_and_preprocess)",
    "results": "trained models (written by nnUNetv2_train)",
}


def nnunet_folder(kind: FolderKind) -> Path:
    """The folder in ``$nnUNet_raw``, ``$nnUNet_preprocessed`` or ``$nnUNet_results``.

    Args:
        kind: ``"raw"``, ``"preprocessed"`` or ``"results"``.

    Returns:
        The folder the variable names (not checked to exist: a builder may create it).

    Raises:
        ValueError: ``kind`` is not one of the three, or the variable is unset or empty (the message
            names the variable and the ``export`` line).
    """
    if kind not in ENV_VARS:
        raise ValueError(f"kind must be one of {sorted(ENV_VARS)}, got {kind!r}")
    variable = ENV_VARS[kind]
    value = os.environ.get(variable)
    if not value:
        raise ValueError(
            f"{variable} is not set; export {variable}=DIR with DIR the folder of nnU-Net's {_CONTENTS[kind]} "
            "(nnU-Net: documentation/set_environment_variables.md)"
        )
    return Path(value)


def dataset_name(dataset: int | str) -> str:
    """``DatasetXXX_Name`` of a dataset id (``501``, ``"501"``) or name, as nnU-Net resolves it.

    An id is looked up with nnunetv2's ``maybe_convert_to_dataset_name`` among the ``DatasetXXX_*`` folders
    of the three nnU-Net folders; a name starting with ``Dataset`` is returned unchanged.

    Raises:
        TypeError: ``dataset`` is neither an int nor a str.
        ValueError: no folder, or more than one, holds that id, or ``dataset`` is neither an id nor a name.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if isinstance(dataset, bool) or not isinstance(dataset, (int, str)):
        raise TypeError(f"dataset must be an id (int) or a DatasetXXX_Name (str), got {type(dataset).__name__}")
    try:
        return str(maybe_convert_to_dataset_name(dataset))
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0].split(". ")[0].rstrip(".")  # nnU-Net's first sentence
        looked = ", ".join(f"{v}={os.environ.get(v)!r}" for v in ENV_VARS.values())
        raise ValueError(
            f"dataset {dataset!r} does not name one nnU-Net dataset ({reason}); nnU-Net looks for "
            f"DatasetXXX_* folders in {looked}. Pass the folder name DatasetXXX_Name, or export those variables"
        ) from None


def dataset_folder(kind: FolderKind, dataset: int | str) -> Path:
    """``$nnUNet_<kind>/DatasetXXX_Name`` of a dataset id or name (not checked to exist).

    Raises:
        ValueError: see :func:`nnunet_folder` and :func:`dataset_name`.
    """
    root = nnunet_folder(kind)
    return root / dataset_name(dataset)


def model_folder(
    dataset: int | str,
    trainer: str,
    plans: str = "nnUNetPlans",
    configuration: str = "2d",
    *,
    results_root: str | os.PathLike | None = None,
) -> Path:
    """The model folder ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS`` writes.

    Args:
        dataset: dataset id or ``DatasetXXX_Name``.
        trainer: trainer class name.
        plans: plans identifier.
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``, ...).
        results_root: results folder to use instead of ``$nnUNet_results`` (e.g. a benchmark's own); an id
            is still resolved through nnU-Net's variables, so pass the dataset name with it.

    Returns:
        ``<results>/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION`` (nnunetv2's ``get_output_folder``).

    Raises:
        ValueError: a name is empty or contains ``__`` (nnU-Net splits folder names at it), or see
            :func:`nnunet_folder` and :func:`dataset_name`.
    """
    from nnunetv2.utilities.file_path_utilities import (
        convert_trainer_plans_config_to_identifier,
        get_output_folder,
    )

    for argument, value in (("trainer", trainer), ("plans", plans), ("configuration", configuration)):
        if not isinstance(value, str) or not value or "__" in value:
            raise ValueError(f"{argument} must be a non-empty name without '__' (nnU-Net's separator), got {value!r}")
    name = dataset_name(dataset)
    if results_root is not None:
        return Path(results_root) / name / convert_trainer_plans_config_to_identifier(trainer, plans, configuration)
    nnunet_folder("results")  # our error when unset, before nnunetv2's
    return Path(get_output_folder(name, trainer, plans, configuration))


def parse_fold(fold: int | str) -> Fold:
    """A fold as nnU-Net names it: an integer >= 0 or ``"all"`` (train on every case, validate on them too).

    Raises:
        ValueError: anything else (``"x"``, ``-1``, ``True``).
    """
    if isinstance(fold, str) and fold.strip() == "all":
        return "all"
    if isinstance(fold, str) and fold.strip().isdigit():
        return int(fold)
    if isinstance(fold, int) and not isinstance(fold, bool) and fold >= 0:
        return fold
    raise ValueError(f"fold must be an integer >= 0 or 'all' (nnU-Net's fold names), got {fold!r}")


def fold_folder(model_folder: str | os.PathLike, fold: int | str) -> Path:
    """``MODEL_FOLDER/fold_F`` for a numbered fold or ``"all"``.

    Raises:
        ValueError: see :func:`parse_fold`.
    """
    return Path(model_folder) / f"fold_{parse_fold(fold)}"


def trained_folds(model_folder: str | os.PathLike, checkpoint: str) -> dict[str, Path]:
    """Fold name (``"0"``, ``"all"``) -> ``fold_F/checkpoint`` of every fold of a model folder that has it.

    Numbered folds come first in numeric order, then ``"all"``; folder names that are not nnU-Net folds
    (``fold_x``) are left out.
    """
    found: dict[Fold, Path] = {}
    for path in Path(model_folder).glob(f"fold_*/{checkpoint}"):
        try:
            fold = parse_fold(path.parent.name[len("fold_"):])
        except ValueError:
            continue
        found[fold] = path
    order = sorted(found, key=lambda f: (f == "all", f if isinstance(f, int) else 0))
    return {str(f): found[f] for f in order}


def case_image_files(images: str | os.PathLike, cases: list[str], file_ending: str) -> dict[str, list[str]]:
    """Per case id, its channel files ``<case>_XXXX<file_ending>`` in ``images`` (sorted; empty if none), in the
    list-of-lists form nnU-Net's predictor takes."""
    images = Path(images)
    return {c: sorted(str(f) for f in images.glob(f"{c}_[0-9][0-9][0-9][0-9]{file_ending}")) for c in cases}
