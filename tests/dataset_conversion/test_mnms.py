"""M&Ms conversion on a fixture with the official release folders, 4D files, CSV versions and quirks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.dataset_conversion.common import ConversionError
from nnunet_ext.dataset_conversion.mnms import convert_mnms
from nnunet_ext.domains import load_domains
from tests.dataset_conversion.layouts import (
    MNMS_FRAMES,
    MNMS_NON_ORTHONORMAL,
    MNMS_PATIENTS,
    make_mnms,
    mnms_csv,
    mnms_gt_frame,
    save,
    snapshot,
)

CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"


@pytest.fixture
def download(tmp_path: Path) -> Path:
    make_mnms(tmp_path / "MnM")
    return tmp_path / "MnM"


def csv_of(download: Path) -> Path:
    return download / "OpenDataset" / "OpenDataset" / CSV_NAME


def test_one_case_per_annotated_frame_with_vendor_domains(download: Path, tmp_path: Path) -> None:
    before = snapshot(download)
    folder = convert_mnms(download, 114, tmp_path / "raw")
    assert snapshot(download) == before
    meta = load_domains(folder)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    assert set(meta.domains) == {"vendor_A", "vendor_B", "vendor_C", "vendor_D"}
    labelled = {c: p for c, p in MNMS_PATIENTS.items() if p[5]}
    expected = {f"{c}_frame{f:02d}" for c, p in labelled.items() for f in {p[3], p[4]}}
    assert set(meta.cases) == expected                         # ED == ES gives one case, not a lost one
    assert meta.cases["C0K1P0_frame03"]["phases"] == ["ED", "ES"]
    assert meta.cases["C2L5P7_frame06"]["phases"] == ["ED"] and meta.cases["C2L5P7_frame06"]["ed_after_es"]
    for case, m in meta.cases.items():
        code = case.split("_")[0]
        assert m["subject"] == code and m["vendor"] == MNMS_PATIENTS[code][1]
        assert m["centre"] == MNMS_PATIENTS[code][2] and m["domain"] == f"vendor_{m['vendor']}"
        assert m["release"] == MNMS_PATIENTS[code][0].split("/")[0]
        assert m["vendor_name"] in {"Siemens", "Philips", "GE", "Canon"}
    # both frames of a patient always share a split; only vendor B trains
    for code in labelled:
        assert len({m["split"] for c, m in meta.cases.items() if c.startswith(code)}) == 1
    assert {m["domain"] for m in meta.cases.values() if m["split"] == "train"} == {"vendor_B"}
    record = json.loads((folder / "conversion.json").read_text())
    assert record["skipped_unlabeled"] == ["A3H5R1"]
    # labels of a frame are exactly the 4D ground truth at that frame, on the image grid
    frame = nib.load(str(folder / "labelsTr" / "A0S9V9_frame04.nii.gz")) if \
        (folder / "labelsTr" / "A0S9V9_frame04.nii.gz").exists() else \
        nib.load(str(folder / "labelsTs" / "A0S9V9_frame04.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(frame.dataobj), mnms_gt_frame((16, 18, 3), 1))
    np.testing.assert_allclose(frame.header.get_zooms(), (1.25, 1.25, 10.0))


def test_non_orthonormal_direction_is_repaired(download: Path, tmp_path: Path) -> None:
    skewed = next(download.rglob(f"{MNMS_NON_ORTHONORMAL}_sa.nii.gz"))
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(skewed))
    folder = convert_mnms(download, 115, tmp_path / "raw")
    meta = load_domains(folder)
    cases = [c for c in meta.cases if c.startswith(MNMS_NON_ORTHONORMAL)]
    assert cases and all(meta.cases[c]["direction_repaired_max_change"] > 0.01 for c in cases)
    for path in folder.glob(f"*/{MNMS_NON_ORTHONORMAL}_*.nii.gz"):
        sitk.ReadImage(str(path))  # nnU-Net's reader accepts the written files


def test_patients_never_straddle_folds(download: Path, tmp_path: Path) -> None:
    folder = convert_mnms(download, 116, tmp_path / "raw", test_fraction=0.0, num_folds=3)
    meta = load_domains(folder)
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 3
    for fold in splits:
        train = {meta.cases[c]["subject"] for c in fold["train"]}
        assert not train & {meta.cases[c]["subject"] for c in fold["val"]}
        assert set(fold["train"]) | set(fold["val"]) == set(meta.cases_of("vendor_B", "train"))


@pytest.mark.parametrize("variant", ["training", "211230"])
def test_csv_versions_and_vendor_centre_domains(download: Path, tmp_path: Path, variant: str) -> None:
    csv_of(download).write_text(mnms_csv(variant=variant))
    folder = convert_mnms(download, 117, tmp_path / "raw", domain_by="vendor_centre", source_domain="vendor_B_centre_2",
                          test_fraction=0.0)
    assert "vendor_B_centre_3" in load_domains(folder).domains


def test_conflicting_csv_versions_are_reported(download: Path, tmp_path: Path) -> None:
    patients = dict(MNMS_PATIENTS)
    patients["A0S9V9"] = ("Training/Labeled", "B", "2", 1, 4, True)
    (download / "M&Ms Dataset Information.csv").write_text(mnms_csv(patients, "training"))
    with pytest.raises(ConversionError, match=r"A0S9V9.*--csv"):
        convert_mnms(download, 118, tmp_path / "raw")
    folder = convert_mnms(download, 118, tmp_path / "raw", csv_path=csv_of(download))
    assert folder.is_dir()


def test_bad_input_lists_every_problem_and_writes_nothing(download: Path, tmp_path: Path) -> None:
    patients = dict(MNMS_PATIENTS)
    patients["A1D0Q7"] = ("Training/Labeled", "B", "2", 0, MNMS_FRAMES, True)   # ES out of range
    patients["Z9Z9Z9"] = ("Testing", "A", "1", 0, 4, True)                     # CSV row without an image
    csv_of(download).write_text(mnms_csv(patients))
    gt = next(download.rglob("A2C0I1_sa_gt.nii.gz"))                            # unexpected label values
    bad = np.asanyarray(nib.load(str(gt)).dataobj).copy()
    bad[0, 0, 0, 0] = 7
    save(bad, nib.load(str(gt)).affine, gt)
    stray = download / "Testing" / "X1X1X1" / "X1X1X1_sa.nii.gz"                # labelled image without a CSV row
    save(np.zeros((4, 4, 2, 3), np.float32), np.eye(4), stray)
    save(np.zeros((4, 4, 2, 3), np.uint8), np.eye(4), stray.with_name("X1X1X1_sa_gt.nii.gz"))
    before = snapshot(download)
    with pytest.raises(ConversionError) as info:
        convert_mnms(download, 119, tmp_path / "raw")
    message = str(info.value)
    assert "Z9Z9Z9" in message and "--allow-missing-images" in message
    assert "X1X1X1" in message and "no row" in message
    assert snapshot(download) == before
    stray.with_name("X1X1X1_sa_gt.nii.gz").unlink()   # an unlabelled image needs no row: skipped
    with pytest.raises(ConversionError) as info:
        convert_mnms(download, 119, tmp_path / "raw", allow_missing_images=True)
    assert "ES=8" in str(info.value) and "0..7" in str(info.value)
    patients["A1D0Q7"] = MNMS_PATIENTS["A1D0Q7"]
    csv_of(download).write_text(mnms_csv(patients))
    with pytest.raises(ConversionError, match=r"A2C0I1_sa_gt.nii.gz frame 0 \(ED\): found label values \{7\}"):
        convert_mnms(download, 119, tmp_path / "raw", allow_missing_images=True)
    assert not list((tmp_path / "raw").glob("*Dataset119*"))


def test_empty_annotated_frame_points_at_one_based_indices(download: Path, tmp_path: Path) -> None:
    patients = {c: (r, v, ce, ed + 1, es + 1, lab) for c, (r, v, ce, ed, es, lab) in MNMS_PATIENTS.items()
                if ed + 1 < MNMS_FRAMES and es + 1 < MNMS_FRAMES}
    csv_of(download).write_text(mnms_csv(patients))
    with pytest.raises(ConversionError, match=r"A0S9V9_sa_gt.nii.gz frame 1 \(ED\): found no annotation.*0-based"):
        convert_mnms(download, 120, tmp_path / "raw", allow_missing_images=True)


def test_non_4d_image_and_duplicate_ids(download: Path, tmp_path: Path) -> None:
    image = next(download.rglob("A0S9V9_sa.nii.gz"))
    save(np.zeros((16, 18, 3), np.float32), np.eye(4), image)
    copy = download / "copy" / "B0I2Z0_sa.nii.gz"
    save(np.zeros((16, 18, 3, 8), np.float32), np.eye(4), copy)
    with pytest.raises(ConversionError) as info:
        convert_mnms(download, 121, tmp_path / "raw")
    assert "B0I2Z0" in str(info.value) and "duplicate" in str(info.value)
    copy.unlink()
    with pytest.raises(ConversionError, match=r"shape \(16, 18, 3\).*4D"):
        convert_mnms(download, 121, tmp_path / "raw")


def test_rerun_is_a_no_op_however_raw_dir_is_spelled(download: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    unlabelled = download / "Training" / "Unlabeled" / "X2X2X2" / "X2X2X2_sa.nii.gz"   # no CSV row: skipped
    save(np.zeros((4, 4, 2, 3), np.float32), np.eye(4), unlabelled)
    monkeypatch.chdir(tmp_path)
    folder = convert_mnms(Path("MnM"), 122, Path("raw"))
    assert "X2X2X2" in json.loads((folder / "conversion.json").read_text())["skipped_unlabeled"]
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert convert_mnms(download, 122, tmp_path / "raw", csv_path=csv_of(download)).resolve() == folder.resolve()
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamp
