"""Read nnU-Net's preprocessed training data: the cases of a fold and their images.

A preprocessed dataset ``$nnUNet_preprocessed/DatasetXXX_Name/`` holds ``splits_final.json`` and one data
folder per configuration (its ``data_identifier``, e.g. ``nnUNetPlans_2d``) with one image per case in the
format ``nnUNetv2_plan_and_preprocess`` wrote:

- ``CASE.b2nd`` (+ ``CASE_seg.b2nd``, ``CASE.pkl``): blosc2 arrays, nnU-Net >= 2.6;
- ``CASE.npz`` (+ an unpacked ``CASE.npy``, ``CASE.pkl``): numpy archives, earlier versions.

This module reads them the way nnU-Net's dataset classes do (``nnunet_dataset.py`` of nnunetv2's training
package, which only trainers may import; ``tests/test_preprocessed.py`` checks both agree), so the CLI can use
the training cases of a model without a trainer. Training cases follow ``nnUNetTrainer.do_split``: fold
``all`` trains on every case of the data folder (``splits_final.json`` is not read), fold ``k`` on
``splits_final.json[k]["train"]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_ext.utils.nnunet_paths import parse_fold

SPLITS_FILENAME = "splits_final.json"
#: image file suffix -> nnU-Net dataset format
FORMATS = {".b2nd": "blosc2", ".npz": "numpy"}


def data_format(data_folder: str | os.PathLike) -> str:
    """``"blosc2"`` or ``"numpy"``: the format of a preprocessed data folder, inferred as nnU-Net does.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it holds no preprocessed case, or cases of both formats.
    """
    folder = Path(data_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"preprocessed data folder {folder} does not exist; run nnUNetv2_plan_and_preprocess")
    found = {FORMATS[p.suffix] for p in folder.iterdir() if p.suffix in FORMATS}
    if len(found) != 1:
        raise ValueError(
            f"{folder} holds {'no preprocessed cases' if not found else 'cases in both formats ' + str(sorted(found))}"
            " (expected CASE.b2nd or CASE.npz files); rerun nnUNetv2_plan_and_preprocess for this configuration"
        )
    return found.pop()


def case_identifiers(data_folder: str | os.PathLike) -> list[str]:
    """Sorted identifiers of every case in a preprocessed data folder (``DatasetXXX/nnUNetPlans_2d``).

    Raises:
        FileNotFoundError, ValueError: see :func:`data_format`.
    """
    folder = Path(data_folder)
    suffix = {v: k for k, v in FORMATS.items()}[data_format(folder)]
    return sorted(
        p.name[: -len(suffix)] for p in folder.iterdir() if p.suffix == suffix and not p.name.endswith(f"_seg{suffix}")
    )


def fold_training_cases(preprocessed_dataset_folder: str | os.PathLike, data_identifier: str,
                        fold: int | str) -> list[str]:
    """The cases ``nnUNetv2_train DATASET CONFIGURATION FOLD`` trains on, sorted.

    Args:
        preprocessed_dataset_folder: ``$nnUNet_preprocessed/DatasetXXX_Name``.
        data_identifier: the configuration's data folder name (``plans["configurations"][c]["data_identifier"]``).
        fold: ``0``, ``"0"``, ... or ``"all"`` (every case of the data folder, as nnU-Net does).

    Raises:
        FileNotFoundError: the data folder, or for a numbered fold ``splits_final.json``, does not exist.
        ValueError: a bad fold, a fold ``splits_final.json`` does not have, or see :func:`data_format`.
    """
    dataset = Path(preprocessed_dataset_folder)
    fold = parse_fold(fold)
    if fold == "all":
        return case_identifiers(dataset / data_identifier)
    splits_file = dataset / SPLITS_FILENAME
    if not splits_file.is_file():
        raise FileNotFoundError(f"{splits_file} does not exist; nnUNetv2_train writes it when fold {fold} is trained")
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    if not isinstance(splits, list) or fold >= len(splits) or "train" not in splits[fold]:
        count = len(splits) if isinstance(splits, list) else 0
        raise ValueError(f"{splits_file} has {count} folds, not fold {fold}; pass a fold it defines")
    return sorted(splits[fold]["train"])


def load_case_image(data_folder: str | os.PathLike, identifier: str) -> np.ndarray:
    """The preprocessed image of one case as a float32 ``(C, Z, Y, X)`` array (``(C, 1, Y, X)`` for 2D data).

    Raises:
        FileNotFoundError: the case is not in the folder.
        FileNotFoundError, ValueError: see :func:`data_format`.
    """
    return _read_image(Path(data_folder), identifier, data_format(data_folder))


def load_source_volumes(data_folder: str | os.PathLike, keys: Sequence[str], max_cases: int) -> list[np.ndarray]:
    """Up to ``max_cases`` preprocessed cases (evenly spaced over ``keys``) as float32 ``(C, Z, Y, X)`` arrays.

    Raises:
        ValueError: ``keys`` is empty or ``max_cases < 1``.
        FileNotFoundError, ValueError: see :func:`load_case_image`.
    """
    if not keys:
        raise ValueError(f"no training cases to build a style bank from in {data_folder}")
    if max_cases < 1:
        raise ValueError(f"max_cases must be >= 1, got {max_cases}")
    fmt = data_format(data_folder)
    picks = sorted(set(np.linspace(0, len(keys) - 1, min(max_cases, len(keys))).round().astype(int).tolist()))
    return [_read_image(Path(data_folder), keys[i], fmt) for i in picks]


def _read_image(folder: Path, identifier: str, fmt: str) -> np.ndarray:
    if fmt == "blosc2":
        import blosc2

        path = folder / f"{identifier}.b2nd"
        if not path.is_file():
            raise FileNotFoundError(f"preprocessed case {path} does not exist")
        return np.asarray(blosc2.open(urlpath=str(path), mode="r")[:], dtype=np.float32)
    unpacked, packed = folder / f"{identifier}.npy", folder / f"{identifier}.npz"
    if unpacked.is_file():  # nnU-Net's unpacked copy of the archive's data
        return np.asarray(np.load(unpacked), dtype=np.float32)
    if not packed.is_file():
        raise FileNotFoundError(f"preprocessed case {packed} does not exist")
    with np.load(packed) as archive:
        return np.asarray(archive["data"], dtype=np.float32)
