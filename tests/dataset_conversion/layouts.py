"""Tiny synthetic downloads that reproduce the official layouts (names, folders, CSV headers, dimensions,
label values, geometry quirks) of CC-359, M&Ms, a Decathlon task, HarP and Dryad. Sources of each layout:
documentation/datasets.md. Nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Path -> (sha256, mtime_ns) of every file below ``root`` (to prove raw data is never modified)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def save(array: np.ndarray, affine: np.ndarray, path: Path, qform: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    if qform:
        image.set_qform(affine, code=1)
    else:
        image.set_qform(None, code=0)
    nib.save(image, str(path))
    return path


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def stray_files(root: Path, near: Path) -> None:
    """What unzipping on a Mac and downloading leave behind."""
    (root / "__MACOSX" / near.parent.name).mkdir(parents=True, exist_ok=True)
    (root / "__MACOSX" / near.parent.name / f"._{near.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (near.parent / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.txt").write_text("downloaded from the dataset website\n")


# ---------------------------------------------------------------------------------------------- CC-359

#: (id, vendor, field, age, sex); 4 GE 3 T subjects (the default source domain) and one of each other domain
CC_SUBJECTS = [("CC0301", "ge", "3", 55, "M"), ("CC0302", "ge", "3", 60, "F"), ("CC0303", "ge", "3", 48, "M"),
               ("CC0304", "ge", "3", 51, "F"), ("CC0241", "ge", "15", 57, "F"), ("CC0001", "philips", "15", 55, "M"),
               ("CC0061", "philips", "3", 52, "F"), ("CC0121", "siemens", "15", 58, "F"),
               ("CC0181", "siemens", "3", 63, "F")]
#: per domain: voxel sizes of the first three axes (Siemens 3 T: 1.33 mm, Philips 1.5 T: 0.889 mm in-plane)
CC_SPACING = {"siemens_3": (1.33, 1.0, 1.0), "philips_15": (1.0, 0.889, 0.889)}


def cc_stem(subject: tuple) -> str:
    sid, vendor, field, age, sex = subject
    return f"{sid}_{vendor}_{field}_{age}_{sex}"


def make_cc359(root: Path, subjects: list[tuple] = CC_SUBJECTS) -> Path:
    """``Original.zip`` and ``Silver-standard-machine-learning.zip`` unpacked with their doubled folders."""
    for i, subject in enumerate(subjects):
        domain = f"{subject[1]}_{subject[2]}"
        spacing = CC_SPACING.get(domain, (1.0, 1.0, 1.0))
        affine = np.diag([*spacing, 1.0])
        if subject[1] == "philips":  # sagittal acquisitions stored with a flipped first axis
            affine[0, 0] = -spacing[0]
            affine[0, 3] = 20.0
        shape = (12, 14, 10)
        brain = ball(shape, (6, 7, 5), 4)
        rng = np.random.default_rng(i)
        image = (rng.normal(100, 10, shape) + 300 * brain).astype(np.int16)
        save(image, affine, root / "Original" / "Original" / f"{cc_stem(subject)}.nii.gz")
        mask = brain.astype(np.float32 if i % 2 else np.uint8)  # masks come as float 0./1. or as integers
        save(mask, affine, root / "Silver-standard-machine-learning" / "Silver-standard" / f"{cc_stem(subject)}_ss.nii.gz")
    (root / "Original.zip").write_bytes(b"PK\x03\x04 not unpacked again")
    stray_files(root, root / "Original" / "Original" / f"{cc_stem(subjects[0])}.nii.gz")
    return root


# ---------------------------------------------------------------------------------------------- M&Ms

#: code -> (release folder, vendor, centre, ED, ES, labelled)
MNMS_PATIENTS = {
    "A0S9V9": ("Training/Labeled", "B", "2", 0, 4, True),
    "A1D0Q7": ("Training/Labeled", "B", "2", 0, 5, True),
    "A1E9Q1": ("Training/Labeled", "B", "3", 1, 5, True),
    "A1O8Z3": ("Training/Labeled", "B", "3", 0, 4, True),
    "A2C0I1": ("Training/Labeled", "A", "1", 0, 3, True),
    "A3H5R1": ("Training/Unlabeled", "C", "4", 0, 4, False),
    "B0I2Z0": ("Validation", "C", "4", 0, 4, True),
    "C0K1P0": ("Testing", "D", "5", 3, 3, True),   # ED == ES
    "C2L5P7": ("Testing", "A", "1", 6, 2, True),   # ED > ES
}
MNMS_FRAMES = 8
MNMS_NON_ORTHONORMAL = "A1E9Q1"
MNMS_VENDOR_NAMES = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}


def mnms_csv(patients: dict = MNMS_PATIENTS, variant: str = "211230") -> str:
    """The metadata CSV; ``211230``: pandas export with an unnamed index column and the diagnosis columns;
    ``training``: the first release's five columns."""
    if variant == "training":
        rows = ["External code,Vendor,Centre,ED,ES"]
        rows += [f"{c},{v},{ce},{ed},{es}" for c, (_, v, ce, ed, es, _) in patients.items()]
    else:
        rows = [",External code,VendorName,Vendor,Centre,ED,ES,Pathology,Sex,Age,Height,Weight"]
        rows += [f"{i},{c},{MNMS_VENDOR_NAMES[v]},{v},{ce},{ed},{es},NOR,M,50,175.0,70.0"
                 for i, (c, (_, v, ce, ed, es, _)) in enumerate(patients.items())]
    return "\n".join(rows) + "\n"


def mnms_gt_frame(shape: tuple[int, int, int], shift: int) -> np.ndarray:
    frame = np.zeros(shape, np.uint8)
    centre = (shape[0] / 2 + shift, shape[1] / 2)
    for z in range(shape[2]):
        disc = ball(shape[:2], centre, 3.5)
        frame[..., z][ball(shape[:2], centre, 2.5)] = 1
        frame[..., z][disc & (frame[..., z] == 0)] = 2
        frame[..., z][ball(shape[:2], (centre[0], centre[1] + 5), 1.5)] = 3
    return frame


def make_mnms(root: Path, patients: dict = MNMS_PATIENTS, csv_variant: str = "211230") -> Path:
    """``OpenDataset`` unpacked into a doubled folder, with the metadata CSV beside the releases."""
    base = root / "OpenDataset" / "OpenDataset"
    for i, (code, (release, _, _, ed, es, labelled)) in enumerate(patients.items()):
        shape = (16, 18, 3)
        affine = np.diag([1.25, 1.25, 10.0, 1.0])  # anisotropic: 10 mm between short-axis slices
        folder = base / release / code
        rng = np.random.default_rng(i)
        image = rng.normal(50, 5, (*shape, MNMS_FRAMES)).astype(np.float32)
        gt = np.zeros((*shape, MNMS_FRAMES), np.uint8)
        for frame, shift in ((ed, 0), (es, 1)):
            gt[..., frame] = mnms_gt_frame(shape, shift)
            image[..., frame] += 100 * (gt[..., frame] > 0)
        if code == MNMS_NON_ORTHONORMAL:  # skewed direction cosines that SimpleITK refuses, no qform
            affine = affine.copy()
            affine[0, 1] = 0.05
            save(image, affine, folder / f"{code}_sa.nii.gz", qform=False)
            if labelled:
                save(gt, affine, folder / f"{code}_sa_gt.nii.gz", qform=False)
            continue
        save(image, affine, folder / f"{code}_sa.nii.gz")
        if labelled:
            save(gt, affine, folder / f"{code}_sa_gt.nii.gz")
    (base / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(mnms_csv(patients, csv_variant))
    stray_files(root, base / "Training" / "Labeled" / "A0S9V9" / "A0S9V9_sa.nii.gz")
    return base


# ---------------------------------------------------------------------------------------------- Decathlon

def make_task04(root: Path, num_train: int = 4, num_test: int = 1) -> Path:
    """``Task04_Hippocampus`` as the tarball unpacks, including AppleDouble ``._`` files."""
    task = root / "Task04_Hippocampus"
    training = []
    for i in range(1, num_train + num_test + 1):
        shape = (9 + i % 2, 12, 10)
        rng = np.random.default_rng(i)
        label = np.zeros(shape, np.uint8)
        label[ball(shape, (4, 4, 5), 2.5)] = 1
        label[ball(shape, (4, 8, 5), 2.5)] = 2
        image = (rng.normal(80, 5, shape) + 50 * (label > 0)).astype(np.float32)
        name = f"hippocampus_{i:03d}.nii.gz"
        folder = "imagesTr" if i <= num_train else "imagesTs"
        save(image, np.diag([1.0, 1.0, 1.0, 1.0]), task / folder / name)
        if i <= num_train:
            save(label, np.eye(4), task / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        (task / folder / f"._{name}").write_bytes(b"\x00\x05\x16\x07")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "description": "Left and right hippocampus segmentation",
        "reference": " Vanderbilt University Medical Center", "licence": "CC-BY-SA 4.0", "release": "1.0 04/05/2018",
        "tensorImageSize": "3D", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": num_train, "numTest": num_test, "training": training,
        "test": [f"./imagesTs/hippocampus_{i:03d}.nii.gz" for i in range(num_train + 1, num_train + num_test + 1)],
    }, indent=4))
    return task


# ---------------------------------------------------------------------------------------------- HarP, Dryad

HIPPO_SHAPE = (22, 14, 12)


def _two_hippocampi(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    left = ball(HIPPO_SHAPE, (6, 7, 6), 2.5)
    right = ball(HIPPO_SHAPE, (15, 7, 6), 2.5)
    image = (rng.normal(60, 5, HIPPO_SHAPE) + 40 * (left | right)).astype(np.float32)
    return image, left, right


def make_harp(root: Path, keys: tuple[str, ...] = ("ADNI_002_S_0295_1", "ADNI_002_S_0413_2", "ADNI_011_S_0002_3"),
              offset_key: str | None = "ADNI_002_S_0413_2") -> Path:
    """MINC images in ``100/`` and per-side NIfTI labels in ``Labels_100_NIFTI/``; one label with the
    {v, v+1} intensity offset seen in the release."""
    for i, key in enumerate(keys):
        image, left, right = _two_hippocampi(i)
        itk = sitk.GetImageFromArray(image.transpose(2, 1, 0))
        itk.SetSpacing((1.0, 1.0, 1.2))
        (root / "100").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(itk, str(root / "100" / f"{key}.mnc"))
        for side, mask in (("L", left), ("R", right)):
            values = mask.astype(np.float32)
            if key == offset_key:
                values = values + np.float32(26896.988)
            save(values, np.eye(4), root / "Labels_100_NIFTI" / f"{key}_{side}.nii")
    return root


def make_dryad(root: Path, subjects: tuple[str, ...] = ("s01", "s02", "s03")) -> Path:
    """``sNN`` folders with the standard-resolution T1w image and subfield labels per side."""
    for i, subject in enumerate(subjects):
        image, left, right = _two_hippocampi(10 + i)
        affine = np.diag([0.8, 0.8, 0.8, 1.0])
        save(image, affine, root / subject / f"{subject}_t1w_standard_defaced_MNI.nii.gz")
        for side, mask in (("L", left), ("R", right)):
            labels = mask.astype(np.uint8) * (1 + (np.indices(HIPPO_SHAPE)[1] % 3)).astype(np.uint8)  # subfields 1-3
            save(labels, affine, root / subject / f"{subject}_hippolabels_t1w_standard_{side}_MNI.nii.gz")
    return root
