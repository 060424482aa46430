"""CC-359 conversion on a fixture with the official names, doubled folders, stray files and geometry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion.cc359 import DOMAINS, convert_cc359
from nnunet_ext.dataset_conversion.common import ConversionError
from nnunet_ext.domains import load_domains
from tests.dataset_conversion.layouts import (
    CC_SUBJECTS,
    cc_stem,
    make_cc359,
    save,
    snapshot,
)


@pytest.fixture
def download(tmp_path: Path) -> Path:
    return make_cc359(tmp_path / "CC359")


def test_converts_with_six_domains_source_split_and_geometry(download: Path, tmp_path: Path) -> None:
    before = snapshot(download)
    folder = convert_cc359(download, 501, tmp_path / "raw")
    assert snapshot(download) == before
    assert folder.name == "Dataset501_CC359"
    assert {p.name for p in folder.iterdir()} == {"dataset.json", "domains.json", "splits_final.json",
                                                  "conversion.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs"}
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "brain": 1} and dj["channel_names"] == {"0": "T1"}
    meta = load_domains(folder)
    assert set(meta.domains) == set(DOMAINS) and len(DOMAINS) == 6
    assert len(meta.cases) == len(CC_SUBJECTS)
    for sid, vendor, field, _, _ in CC_SUBJECTS:
        case = meta.cases[sid]
        assert case["domain"] == f"{vendor}_{field}" and case["subject"] == sid
        assert case["split"] == "train" or (folder / "labelsTs" / f"{sid}.nii.gz").is_file()
    train = meta.cases_of("ge_3", "train")
    assert 2 <= len(train) < 4 and all(meta.cases[c]["domain"] == "ge_3" for c in train)
    assert {p.name for p in (folder / "imagesTr").iterdir()} == {f"{c}_0000.nii.gz" for c in train}
    splits = json.loads((folder / "splits_final.json").read_text())
    assert all(set(f["train"]) | set(f["val"]) == set(train) for f in splits)
    # header geometry survives: anisotropic Siemens 3 T voxels, flipped Philips axis
    siemens = nib.load(str(folder / "imagesTs" / "CC0181_0000.nii.gz"))
    np.testing.assert_allclose(siemens.header.get_zooms()[:3], (1.33, 1.0, 1.0), rtol=1e-5)
    assert meta.cases["CC0181"]["spacing_mm"][0] == pytest.approx(1.33)
    philips_in = nib.load(str(download / "Original" / "Original" / f"{cc_stem(CC_SUBJECTS[5])}.nii.gz"))
    philips_out = nib.load(str(folder / "imagesTs" / "CC0001_0000.nii.gz"))
    np.testing.assert_allclose(philips_out.affine, philips_in.affine, atol=1e-5)
    # nnU-Net's SimpleITK reader accepts every file; image and label share a grid; labels are {0, 1}
    for label_path in sorted(folder.glob("labels*/*.nii.gz")):
        image_path = label_path.parent.parent / label_path.parent.name.replace("labels", "images") / \
            label_path.name.replace(".nii.gz", "_0000.nii.gz")
        image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
        assert image.GetSize() == label.GetSize()
        np.testing.assert_allclose(image.GetDirection(), label.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) == {0, 1}


def test_rerun_is_idempotent_and_other_options_need_overwrite(download: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    folder = convert_cc359(download, 502, raw)
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert convert_cc359(download, 502, raw) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamp
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_cc359(download, 502, raw, test_fraction=0.0)
    convert_cc359(download, 502, raw, test_fraction=0.0, overwrite=True)
    assert len(load_domains(folder).cases_of("ge_3", "train")) == 4
    with pytest.raises(FileExistsError, match="already used"):
        convert_cc359(download, 502, raw, name="Other")


def test_every_problem_is_listed_and_nothing_is_written(download: Path, tmp_path: Path) -> None:
    masks = download / "Silver-standard-machine-learning" / "Silver-standard"
    (masks / f"{cc_stem(CC_SUBJECTS[1])}_ss.nii.gz").unlink()                      # missing mask
    copy = download / "second_unzip" / f"{cc_stem(CC_SUBJECTS[2])}.nii.gz"        # duplicate id
    copy.parent.mkdir()
    shutil.copy(download / "Original" / "Original" / copy.name, copy)
    save(np.zeros((12, 14, 10, 2), np.int16), np.eye(4),                           # not 3D
         download / "Original" / "Original" / f"{cc_stem(CC_SUBJECTS[4])}.nii.gz")
    before = snapshot(download)
    with pytest.raises(ConversionError) as info:
        convert_cc359(download, 503, tmp_path / "raw")
    message = str(info.value)
    assert "CC0302" in message and "no silver mask" in message
    assert "CC0303" in message and "duplicate" in message
    assert snapshot(download) == before
    assert not (tmp_path / "raw" / "Dataset503_CC359").exists()
    # the header problems fixed, value problems are found too: unexpected label values
    shutil.rmtree(download / "second_unzip")
    make_cc359(download)
    bad = masks / f"{cc_stem(CC_SUBJECTS[6])}_ss.nii.gz"
    save(np.full((12, 14, 10), 2, np.uint8), nib.load(str(bad)).affine, bad)
    with pytest.raises(ConversionError, match=r"label values \{2\}"):
        convert_cc359(download, 503, tmp_path / "raw")
    assert not list((tmp_path / "raw").glob("Dataset503*")) and not list((tmp_path / "raw").glob(".Dataset503*"))


def test_non_3d_volume_is_reported(download: Path, tmp_path: Path) -> None:
    save(np.zeros((12, 14, 10, 2), np.int16), np.eye(4),
         download / "Original" / "Original" / f"{cc_stem(CC_SUBJECTS[4])}.nii.gz")
    with pytest.raises(ConversionError, match=r"shape \(12, 14, 10, 2\).*a 3D volume"):
        convert_cc359(download, 504, tmp_path / "raw")


def test_cli(download: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    assert main(["convert", "cc359", str(download), "505", "--raw-root", str(raw), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "Dataset505_CC359" in out and "ge_3" in out and "nnUNetv2_plan_and_preprocess -d 505" in out
    assert len(json.loads((raw / "Dataset505_CC359" / "splits_final.json").read_text())) == 2
    assert main(["convert", "cc359", str(tmp_path / "nowhere"), "506", "--raw-root", str(raw)]) == 2
    assert "does not exist" in capsys.readouterr().err
