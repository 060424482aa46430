"""M&Ms (MICCAI 2020 challenge) cine short-axis MRI -> nnU-Net raw dataset, one case per annotated frame.

Expected download (``OpenDataset``; sources in ``documentation/datasets.md``), anywhere below ``raw_dir``::

    raw_dir/Training/Labeled/A0S9V9/A0S9V9_sa.nii.gz       4D cine (x, y, z, t)
    raw_dir/Training/Labeled/A0S9V9/A0S9V9_sa_gt.nii.gz    4D labels, non-zero only at the ED and ES frames
    raw_dir/Training/Unlabeled/<code>/<code>_sa.nii.gz     (no labels: skipped and listed)
    raw_dir/Validation/<code>/...   raw_dir/Testing/<code>/...
    raw_dir/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv   (or any other version)

The metadata CSV gives, per ``External code``, the ``Vendor`` (A-D), the ``Centre`` and the 0-based
``ED`` and ``ES`` frame indices. Several versions circulate (``M&Ms Dataset Information``, ``201207_...``,
``211230_...``, with or without a leading index column, with or without ``VendorName``/``Pathology``
...): columns are found by name. Every CSV below ``raw_dir`` whose header has ``External code`` is read;
when several disagree about a patient, the conflict is reported (pass ``csv_path`` to choose one).
Images are found recursively by name, so the ``Training``, ``Validation`` and ``Testing`` releases,
doubled folders after unzipping and re-arranged folders all work.

Cases. Each annotated frame becomes one case ``<code>_frameTT`` (TT = 0-based frame index) with the
challenge's labels 0 background, 1 LV (left-ventricle cavity), 2 MYO (myocardium), 3 RV (right-ventricle
cavity). A patient whose ED equals ES gives one case (``phases: ["ED", "ES"]``); ED > ES is legal. Both
frames of a patient share ``subject`` and therefore always sit in the same fold and the same split.

Domains: ``vendor_A`` ... ``vendor_D`` (``domain_by="vendor"``, default) or ``vendor_A_centre_1`` ...
(``"vendor_centre"``); vendor and centre are recorded per case either way. The source domain (default
``vendor_B``, as in the AvaGrad paper) is split into training patients and held-out test patients; all
other domains go to ``imagesTs``/``labelsTs``.

Geometry: some released files have direction cosines that are not orthonormal, which SimpleITK (and so
nnU-Net's default reader) refuses; files are read with nibabel and the nearest orthonormal direction is
written (recorded per case as ``direction_repaired_max_change``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from nnunet_ext.dataset_conversion.common import (
    CaseOut,
    DatasetSpec,
    Problems,
    check_id_unused,
    dataset_folder,
    direction_note,
    fingerprint,
    integer_labels,
    up_to_date,
    walk_files,
    write_dataset,
)
from nnunet_ext.dataset_conversion.splits import holdout_subjects, requested_folds
from nnunet_ext.domains import DomainMetadata
from nnunet_ext.utils.image_io import ImageReadError, load_nifti, nifti_array

logger = logging.getLogger(__name__)

LABELS = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
#: vendor letter -> manufacturer (Campello et al., IEEE TMI 2021)
VENDOR_NAMES = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}
RELEASES = ("Training", "Validation", "Testing")
_REQUIRED = {"external code": "code", "vendor": "vendor", "centre": "centre", "ed": "ed", "es": "es"}
_ALIASES = {"center": "centre", "externalcode": "external code"}
_OPTIONAL = {"vendorname": "vendor_name", "pathology": "pathology"}
_IMAGE = re.compile(r"^(?P<code>[A-Za-z0-9]+)_sa(?P<gt>_gt)?\.nii(\.gz)?$")
DomainBy = Literal["vendor", "vendor_centre"]


@dataclass(frozen=True)
class PatientInfo:
    """One row of the metadata CSV."""

    code: str
    vendor: str
    centre: str
    ed: int
    es: int
    source: str
    vendor_name: str | None = None
    pathology: str | None = None


def _norm(header: str) -> str:
    key = re.sub(r"\s+", " ", header.strip().lower())
    return _ALIASES.get(key, key)


def read_metadata_csv(path: Path, problems: Problems) -> dict[str, PatientInfo]:
    """Read one M&Ms metadata CSV; problems (missing columns, bad numbers, conflicting rows) go to ``problems``.

    Returns:
        ``External code`` -> :class:`PatientInfo`.
    """
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else ",", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(text.splitlines(), dialect))
    if not rows:
        problems.add(path, "an empty file", "a header with External code, Vendor, Centre, ED, ES",
                     "use the CSV shipped with the dataset")
        return {}
    header = [_norm(h) for h in rows[0]]
    columns = {}
    for i, h in enumerate(header):
        if h in _REQUIRED:
            columns[_REQUIRED[h]] = i
        elif h.replace(" ", "") in _OPTIONAL:
            columns[_OPTIONAL[h.replace(" ", "")]] = i
    missing = [name for name, key in _REQUIRED.items() if key not in columns]
    if missing:
        problems.add(path, f"columns {rows[0]}", f"columns {[m.title() for m in missing]} as well",
                     "pass the M&Ms metadata CSV (--csv); an index column or extra columns are fine")
        return {}
    patients: dict[str, PatientInfo] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cell = {k: (row[i].strip() if i < len(row) else "") for k, i in columns.items()}
        frames = {}
        for key in ("ed", "es"):
            try:
                value = float(cell[key])
                if not value.is_integer():
                    raise ValueError
                frames[key] = int(value)
            except ValueError:
                frames[key] = None
        if not cell["code"] or not cell["vendor"] or None in frames.values():
            problems.add(f"{path}:{line}", f"row {row}", "External code, Vendor and integer ED, ES",
                         "fix or delete this row")
            continue
        info = PatientInfo(cell["code"], cell["vendor"].upper(), cell["centre"], frames["ed"], frames["es"],
                           str(path), cell.get("vendor_name") or None, cell.get("pathology") or None)
        previous = patients.get(info.code)
        if previous is not None and _key(previous) != _key(info):
            problems.add(f"{path}:{line}", f"a second row for {info.code} that disagrees ({_key(info)} vs "
                         f"{_key(previous)})", "one row per External code", "delete the wrong row")
            continue
        patients[info.code] = info
    return patients


def _key(p: PatientInfo) -> tuple[str, str, int, int]:
    return (p.vendor, p.centre, p.ed, p.es)


def _relative(path: Path, raw_dir: Path) -> str:
    """``path`` relative to ``raw_dir`` if below it, else absolute: the same file gives the same string
    however RAW_DIR and --csv are spelled (relative, absolute, trailing slash), so re-runs stay no-ops."""
    path, raw_dir = path.resolve(), raw_dir.resolve()
    return str(path.relative_to(raw_dir)) if path.is_relative_to(raw_dir) else str(path)


def _release(path: Path, raw_dir: Path) -> str:
    for part in path.relative_to(raw_dir).parts[:-1]:
        for release in RELEASES:
            if part.lower() == release.lower():
                return release
    return "unknown"


def convert_mnms(
    raw_dir: str | Path,
    dataset_id: int,
    raw_root: str | Path,
    name: str = "MNMs",
    csv_path: str | Path | None = None,
    source_domain: str = "vendor_B",
    domain_by: DomainBy = "vendor",
    test_fraction: float = 0.2,
    num_folds: int | None = None,
    seed: int = 0,
    allow_missing_images: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Convert an unpacked M&Ms download into ``<raw_root>/Dataset{id}_{name}``.

    Args:
        raw_dir: the unpacked ``OpenDataset`` (any of its releases), searched recursively.
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``).
        name: dataset name after ``DatasetXXX_``.
        csv_path: metadata CSV to use; default every CSV below ``raw_dir`` with an ``External code`` column.
        source_domain: training domain, e.g. ``"vendor_B"`` (or ``"vendor_B_centre_2"``).
        domain_by: ``"vendor"`` or ``"vendor_centre"``.
        test_fraction: fraction of source-domain patients held out for testing.
        num_folds: folds of ``splits_final.json``; None: 5, or one per training subject if fewer.
        seed: seed of the held-out selection and of the folds.
        allow_missing_images: skip CSV rows without an image (e.g. only ``Training`` downloaded) instead of
            reporting them; skipped patients are listed in ``conversion.json``.
        overwrite: replace an existing dataset written from other inputs or options.
        progress: called as ``progress(done, total, case_id)`` while writing.

    Returns:
        The dataset folder (unchanged if it is up to date).

    Raises:
        ValueError: bad options (e.g. more folds than training subjects), or a
            :class:`~nnunet_ext.dataset_conversion.common.ConversionError` listing every problem of the download.
        FileNotFoundError: ``raw_dir`` or ``csv_path`` does not exist.
        FileExistsError: the folder exists from other inputs and ``overwrite`` is False, or the id is taken.
    """
    if domain_by not in ("vendor", "vendor_centre"):
        raise ValueError(f"domain_by must be 'vendor' or 'vendor_centre', got {domain_by!r}")
    raw_dir = Path(raw_dir)
    target = dataset_folder(raw_root, dataset_id, name)
    files = walk_files(raw_dir)
    problems = Problems()

    if csv_path is not None:
        csv_files = [Path(csv_path)]
        if not csv_files[0].is_file():
            raise FileNotFoundError(f"metadata CSV {csv_path} does not exist; check --csv")
    else:
        csv_files = [p for p in files if p.suffix.lower() == ".csv" and "external code" in
                     p.read_text(encoding="utf-8-sig", errors="replace")[:2000].lower()]
    if not csv_files:
        xlsx = [str(p) for p in files if p.suffix.lower() in (".xlsx", ".xls")]
        raise ValueError(
            f"no M&Ms metadata CSV (a .csv with an 'External code' column) below {raw_dir}"
            + (f"; found spreadsheets {xlsx}: save one as CSV" if xlsx else "")
            + "; put the CSV shipped with the dataset there or pass --csv PATH"
        )
    patients: dict[str, PatientInfo] = {}
    for path in csv_files:
        for code, info in read_metadata_csv(path, problems).items():
            other = patients.get(code)
            if other is not None and _key(other) != _key(info):
                problems.add(code, f"{Path(info.source).name}: {_key(info)} but {Path(other.source).name}: "
                             f"{_key(other)} (vendor, centre, ED, ES)", "metadata CSVs that agree",
                             "pass the CSV version you trust with --csv")
                continue
            patients.setdefault(code, info)

    images: dict[str, list[Path]] = defaultdict(list)
    labels: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        match = _IMAGE.match(path.name)
        if match:
            (labels if match["gt"] else images)[match["code"]].append(path)

    skipped: dict[str, list[str]] = {"unlabeled": [], "missing_image": []}
    for code in sorted(set(images) | set(labels) | set(patients)):
        for kind, found in (("image", images.get(code, [])), ("ground truth", labels.get(code, []))):
            if len(found) > 1:
                problems.add(code, f"{len(found)} {kind} files: " + ", ".join(map(str, found)),
                             f"one {kind} file per patient (duplicate id)",
                             "delete the duplicate copy (e.g. a second unzip)")
        if code in labels and code not in images:
            problems.add(labels[code][0], "ground truth without its image", f"{code}_sa.nii.gz beside it",
                         "unpack the release completely")
        if code in images and code in labels and code not in patients:
            problems.add(images[code][0], f"no row for {code} in " + ", ".join(str(p) for p in csv_files),
                         "a metadata row with Vendor, Centre, ED and ES", "use the newest metadata CSV (--csv)")
        if code in patients and code not in images:
            if allow_missing_images:
                skipped["missing_image"].append(code)
            else:
                problems.add(f"{patients[code].source} row {code}", "no image file",
                             f"{code}_sa.nii.gz below {raw_dir}",
                             "download the missing release, or pass --allow-missing-images to skip such rows")
        if code in images and code not in labels:
            skipped["unlabeled"].append(code)  # never converted, so a missing CSV row does not matter
    problems.raise_if_any(f"M&Ms download {raw_dir}")

    labeled = sorted(c for c in images if c in labels and c in patients)
    frames_of: dict[str, dict[int, list[str]]] = {}
    spacing = {}
    for code in labeled:
        try:
            image, gt = load_nifti(images[code][0]), load_nifti(labels[code][0])
        except ImageReadError as e:
            problems.add_unreadable(e)
            continue
        info = patients[code]
        if len(image.shape) != 4:
            problems.add(images[code][0], f"shape {image.shape}", "a 4D cine volume (x, y, z, t)",
                         "replace it with the released *_sa.nii.gz")
            continue
        if tuple(gt.shape) != tuple(image.shape):
            problems.add(labels[code][0], f"shape {gt.shape}", f"the image's shape {image.shape}",
                         "replace it with the released *_sa_gt.nii.gz of this patient")
            continue
        if not np.allclose(gt.affine, image.affine, rtol=1e-3, atol=1e-3):
            problems.add(labels[code][0], "an affine different from its image's", "the image's grid",
                         "replace it with the released *_sa_gt.nii.gz of this patient")
            continue
        count = image.shape[3]
        bad = [f"{p}={f}" for p, f in (("ED", info.ed), ("ES", info.es)) if not 0 <= f < count]
        if bad:
            problems.add(f"{info.source} row {code}", f"frame indices {', '.join(bad)}",
                         f"0-based indices in 0..{count - 1} ({images[code][0].name} has {count} frames)",
                         "correct ED/ES in the CSV (indices are 0-based) or use another CSV version (--csv)")
            continue
        frames: dict[int, list[str]] = defaultdict(list)
        frames[info.ed].append("ED")
        frames[info.es].append("ES")
        frames_of[code] = dict(frames)
        spacing[code] = [round(float(s), 6) for s in image.header.get_zooms()[:3]]
    problems.raise_if_any(f"M&Ms download {raw_dir}")

    def domain(info: PatientInfo) -> str:
        return f"vendor_{info.vendor}" + (f"_centre_{info.centre}" if domain_by == "vendor_centre" else "")

    domains_used = sorted({domain(patients[c]) for c in frames_of})
    if source_domain not in domains_used:
        raise ValueError(f"source domain {source_domain!r} has no labelled patient here; choose one of "
                         f"{domains_used} (--source-domain)")
    options = {"source_domain": source_domain, "domain_by": domain_by, "test_fraction": test_fraction,
               "num_folds": num_folds, "seed": seed, "name": name, "allow_missing_images": allow_missing_images,
               "csv": [_relative(p, raw_dir) for p in csv_files]}
    inputs = [p for c in labeled for p in (images[c][0], labels[c][0])] + csv_files
    digest = fingerprint("mnms", options, inputs, raw_dir)
    if up_to_date(target, digest, overwrite):
        logger.info("%s is up to date", target)
        return target
    check_id_unused(target)

    meta = DomainMetadata()
    for name_ in domains_used:
        vendor = name_.split("_")[1]
        role = "source" if name_ == source_domain else "target"
        meta.add_domain(name_, f"M&Ms cine SA MRI, vendor {vendor} ({VENDOR_NAMES.get(vendor, 'unknown')})"
                        + (f", centre {name_.split('_')[-1]}" if domain_by == "vendor_centre" else "")
                        + f" ({role} domain)", simulated=False, vendor=vendor,
                        manufacturer=VENDOR_NAMES.get(vendor), role=role)
    source_patients = [c for c in frames_of if domain(patients[c]) == source_domain]
    held_out = holdout_subjects(source_patients, test_fraction, seed)
    cases = []
    for code, frames in frames_of.items():
        info = patients[code]
        split = "train" if domain(info) == source_domain and code not in held_out else "test"
        for frame, phases in sorted(frames.items()):
            extra = {"vendor": info.vendor, "centre": info.centre, "frame": frame, "phases": phases,
                     "release": _release(images[code][0], raw_dir), "image": str(images[code][0].relative_to(raw_dir)),
                     "spacing_mm": spacing[code]}
            if info.ed > info.es:
                extra["ed_after_es"] = True
            for key in ("vendor_name", "pathology"):
                if getattr(info, key):
                    extra[key] = getattr(info, key)
            cases.append(CaseOut(f"{code}_frame{frame:02d}", split, domain(info), code,
                                 _loader(images[code][0], labels[code][0], frame, phases), extra))
    train_cases = {c.case_id: c.subject for c in cases if c.split == "train"}
    spec = DatasetSpec(
        target=target, channel_names={"0": "cineMRI"}, labels=dict(LABELS), meta=meta,
        description=("M&Ms 2020 cine short-axis MRI converted by nnunet_ext.dataset_conversion.mnms; one case per "
                     f"annotated frame (ED/ES); source domain {source_domain}; domains in domains.json"),
        reference=("Campello VM, et al. Multi-Centre, Multi-Vendor and Multi-Disease Cardiac Segmentation: The M&Ms "
                   "Challenge. IEEE TMI 40(12):3543-3554, 2021. https://www.ub.edu/mnms/"),
        licence="M&Ms: see the challenge's data terms (https://www.ub.edu/mnms/)",
        converter="mnms", options=options, digest=digest,
        splits=requested_folds(train_cases, num_folds, seed),
        record={"raw_dir": str(raw_dir.resolve()), "skipped_unlabeled": skipped["unlabeled"],
                "skipped_missing_image": skipped["missing_image"], "held_out_subjects": sorted(held_out)},
    )
    return write_dataset(spec, cases, overwrite=True, progress=progress)


def _loader(image_path: Path, label_path: Path, frame: int, phases: list[str]):
    def load(problems: Problems):
        try:
            image, gt = load_nifti(image_path), load_nifti(label_path)
            image_frame, label_frame = nifti_array(image, frame), nifti_array(gt, frame)
        except ImageReadError as e:
            problems.add_unreadable(e)
            return None
        label, bad = integer_labels(label_frame, LABELS.values())
        where = f"{label_path} frame {frame} ({'/'.join(phases)})"
        if bad:
            problems.add(where, bad, "0 background, 1 LV, 2 MYO, 3 RV", "use the released ground truth file")
            return None
        if not label.any():
            problems.add(where, "no annotation in this frame", "the annotated ED/ES frame",
                         "check ED/ES in the CSV: indices are 0-based and must point at the annotated frames")
            return None
        affine, notes = direction_note(image.affine)
        return [image_frame], label, affine, notes

    return load
