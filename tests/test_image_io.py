"""Image reading: truncated, header-cut, empty and missing files give an error naming the file and the fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.utils.image_io import (
    ImageReadError,
    load_nifti,
    nifti_array,
    read_array,
    read_image,
)

ARRAY = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)  # z, y, x (SimpleITK order)
SUFFIXES = [".nii.gz", ".nii", ".mha", ".nrrd"]


def write(path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(ARRAY), str(path), useCompression=compress)
    return path


def cut(path: Path, keep: int) -> Path:
    """A copy of ``path`` keeping its first ``keep`` bytes (negative: dropping the last ``-keep``)."""
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[:keep])
    return out


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_intact_files_read_back(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(read_array(path), ARRAY)
    assert read_image(path, sitk.sitkFloat64).GetPixelID() == sitk.sitkFloat64


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("where", ["voxels", "header", "empty"])
def test_truncated_file_names_the_file_and_the_fix(tmp_path: Path, suffix: str, where: str) -> None:
    path = write(tmp_path / f"x{suffix}", compress=suffix == ".nrrd")
    keep = {"voxels": -64, "header": 60, "empty": 0}[where]
    bad = cut(path, keep)
    with pytest.raises(ImageReadError) as info:
        read_image(bad)
    assert isinstance(info.value, ValueError)
    assert info.value.path == bad
    assert str(bad) in str(info.value) and "Fix: re-download" in str(info.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_with_cut_voxels_is_refused_although_simpleitk_alone_zero_fills_it(tmp_path: Path, suffix: str) -> None:
    bad = cut(write(tmp_path / f"x{suffix}"), -64)
    assert sitk.ReadImage(str(bad)).GetSize() == ARRAY.shape[::-1]  # the silent failure this module guards against
    with pytest.raises(ImageReadError, match="truncated|cut off"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="truncated|cut off"):
        load_nifti(bad)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    with pytest.raises(ImageReadError, match="not a file"):
        load_nifti(tmp_path)


def test_nibabel_reader_frames_and_multi_member_gzip(tmp_path: Path) -> None:
    cine = np.arange(4 * 5 * 3 * 6, dtype=np.int16).reshape(4, 5, 3, 6)
    path = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(cine, np.eye(4)), str(path))
    image = load_nifti(path)
    np.testing.assert_array_equal(nifti_array(image, 2), cine[..., 2])
    np.testing.assert_array_equal(nifti_array(image), cine)
    # a valid gzip file of two members (e.g. written by concatenating streams): the trailer holds only the
    # last member's size, so the completeness check must fall back to decompressing
    raw = gzip.decompress(path.read_bytes())
    two = tmp_path / "two_members.nii.gz"
    two.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(nifti_array(load_nifti(two)), cine)
    with pytest.raises(ImageReadError, match="cut off"):
        load_nifti(cut(two, -10))


def test_non_nifti_file_given_to_the_nibabel_reader(tmp_path: Path) -> None:
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image"))
    with pytest.raises(ImageReadError, match=r"x\.nii\.gz.*not a NIfTI file"):
        load_nifti(path)
