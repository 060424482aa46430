"""Tests of nnunet_ext.utils.preprocessed against nnU-Net's own dataset classes (both storage formats)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.training.dataloading.nnunet_dataset import (
    comp_blosc2_params,
    nnUNetDatasetBlosc2,
    nnUNetDatasetNumpy,
)

from nnunet_ext.utils.preprocessed import (
    case_identifiers,
    data_format,
    fold_training_cases,
    load_case_image,
    load_source_volumes,
)

CASES = ("case_a", "case_b", "case_c", "case_d", "case_e")


def write_preprocessed(data_folder: Path, dataset_class=nnUNetDatasetBlosc2, cases=CASES,
                       shape: tuple[int, ...] = (2, 1, 12, 10)) -> dict[str, np.ndarray]:
    """Cases written by nnU-Net's own ``save_case`` (2D data: ``(C, 1, Y, X)``); returns their images."""
    data_folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for case in cases:
        data = rng.normal(size=shape).astype(np.float32)
        seg = (data[:1] > 0).astype(np.int8)
        kwargs = {}
        if dataset_class is nnUNetDatasetBlosc2:
            blocks, chunks = comp_blosc2_params(data.shape, shape[-2:], data.itemsize)
            kwargs = {"blocks": blocks, "chunks": chunks}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset_class.save_case(data, seg, {"spacing": [1, 1, 1]}, str(data_folder / case), **kwargs)
        images[case] = data
    return images


@pytest.mark.parametrize("dataset_class", [nnUNetDatasetBlosc2, nnUNetDatasetNumpy])
def test_reads_what_nnunet_reads(tmp_path: Path, dataset_class) -> None:
    folder = tmp_path / "nnUNetPlans_2d"
    images = write_preprocessed(folder, dataset_class)
    assert data_format(folder) == ("blosc2" if dataset_class is nnUNetDatasetBlosc2 else "numpy")
    assert case_identifiers(folder) == sorted(dataset_class.get_identifiers(str(folder))) == list(CASES)
    ours = load_case_image(folder, "case_c")
    theirs = np.asarray(dataset_class(str(folder)).load_case("case_c")[0][:])
    assert ours.dtype == np.float32 and ours.shape == (2, 1, 12, 10)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, images["case_c"])


def test_unpacked_numpy_copy_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "nnUNetPlans_2d"
    write_preprocessed(folder, nnUNetDatasetNumpy, cases=("case_a",))
    unpacked = np.full((2, 1, 12, 10), 3.0, dtype=np.float32)
    np.save(folder / "case_a.npy", unpacked)  # nnU-Net prefers the unpacked copy when it exists
    np.testing.assert_array_equal(load_case_image(folder, "case_a"), unpacked)
    np.testing.assert_array_equal(load_case_image(folder, "case_a"),
                                  np.asarray(nnUNetDatasetNumpy(str(folder)).load_case("case_a")[0]))


def test_fold_all_is_every_case_and_numbered_folds_read_the_splits(tmp_path: Path) -> None:
    dataset = tmp_path / "Dataset001_X"
    write_preprocessed(dataset / "nnUNetPlans_2d")
    splits = [{"train": ["case_b", "case_a"], "val": ["case_c"]}, {"train": ["case_c"], "val": ["case_a", "case_b"]}]
    (dataset / "splits_final.json").write_text(json.dumps(splits))
    assert fold_training_cases(dataset, "nnUNetPlans_2d", "all") == list(CASES)  # not the splits' 3 cases
    assert fold_training_cases(dataset, "nnUNetPlans_2d", 0) == ["case_a", "case_b"]
    assert fold_training_cases(dataset, "nnUNetPlans_2d", "1") == ["case_c"]
    with pytest.raises(ValueError, match="has 2 folds, not fold 4"):
        fold_training_cases(dataset, "nnUNetPlans_2d", 4)
    with pytest.raises(ValueError, match="fold must be an integer >= 0 or 'all'"):
        fold_training_cases(dataset, "nnUNetPlans_2d", "x")
    (dataset / "splits_final.json").unlink()
    assert len(fold_training_cases(dataset, "nnUNetPlans_2d", "all")) == 5  # fold all never needs the splits
    with pytest.raises(FileNotFoundError, match="splits_final.json does not exist"):
        fold_training_cases(dataset, "nnUNetPlans_2d", 0)
    with pytest.raises(FileNotFoundError, match="nnUNetPlans_3d_fullres does not exist"):
        fold_training_cases(dataset, "nnUNetPlans_3d_fullres", "all")


def test_load_source_volumes_spreads_over_the_keys(tmp_path: Path) -> None:
    folder = tmp_path / "nnUNetPlans_2d"
    images = write_preprocessed(folder)
    picked = load_source_volumes(folder, list(CASES), max_cases=3)
    for volume, case in zip(picked, ("case_a", "case_c", "case_e")):
        np.testing.assert_array_equal(volume, images[case])
    assert len(load_source_volumes(folder, list(CASES), max_cases=50)) == 5
    with pytest.raises(ValueError, match="no training cases"):
        load_source_volumes(folder, [], 3)
    with pytest.raises(FileNotFoundError, match="case_z.b2nd does not exist"):
        load_source_volumes(folder, ["case_z"], 3)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; run nnUNetv2_plan_and_preprocess"):
        data_format(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no preprocessed cases"):
        case_identifiers(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    write_preprocessed(mixed, cases=("a",))
    np.savez(mixed / "b.npz", data=np.zeros(1))
    with pytest.raises(ValueError, match=r"cases in both formats \['blosc2', 'numpy'\]"):
        data_format(mixed)
