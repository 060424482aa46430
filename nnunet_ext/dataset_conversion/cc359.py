"""Calgary-Campinas-359 (CC-359) skull stripping -> nnU-Net raw dataset with 6 scanner domains.

Expected download (see ``documentation/datasets.md`` for the sources): the unpacked ``Original.zip``
and one mask archive, e.g. ``Silver-standard-machine-learning.zip``, anywhere below ``raw_dir``::

    raw_dir/Original/Original/CC0001_philips_15_55_M.nii.gz              (T1 volume)
    raw_dir/Silver-standard-machine-learning/Silver-standard/CC0001_philips_15_55_M_ss.nii.gz   (mask)

File names are ``CC<4 digits>_<vendor>_<field>_<age>_<sex>`` with vendor ``ge``/``philips``/``siemens`` and
field ``15`` (1.5 T) or ``3`` (3 T); masks add ``_ss`` (silver standard, default) or ``_staple``. Folders
are searched recursively, so doubled folders after unzipping (``Original/Original``) and any nesting
work; hidden files, ``__MACOSX`` and non-NIfTI files are ignored. Each subject was scanned once, so the
subject id is the ``CC`` number.

Labels: 0 background, 1 brain. Domain: ``<vendor>_<field>`` (``ge_15``, ``ge_3``, ``philips_15``,
``philips_3``, ``siemens_15``, ``siemens_3``). The source domain (default ``ge_3``, as in the AvaGrad paper)
is split into training patients (``imagesTr``) and held-out test patients (``imagesTs``, fraction
``test_fraction``); every other domain goes to ``imagesTs``/``labelsTs``. ``splits_final.json`` holds
subject-grouped folds of the training patients.

Images keep their header geometry (affine, hence anisotropic spacing such as Siemens' 1.33 mm axis, which
file names do not tell) and data type; direction cosines that are not orthonormal are repaired (recorded
per case). Masks must lie on their image's grid and hold only 0 and 1.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

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
    same_geometry,
    strip_nifti_suffix,
    up_to_date,
    walk_files,
    write_dataset,
)
from nnunet_ext.dataset_conversion.splits import holdout_subjects, requested_folds
from nnunet_ext.domains import DomainMetadata
from nnunet_ext.utils.image_io import ImageReadError, load_nifti, nifti_array

logger = logging.getLogger(__name__)

VENDORS = {"ge": "GE", "philips": "Philips", "siemens": "Siemens"}
FIELDS = {"15": 1.5, "3": 3.0}
#: domain name -> (vendor, field strength in T)
DOMAINS: dict[str, tuple[str, float]] = {f"{v}_{f}": (VENDORS[v], t) for v in VENDORS for f, t in FIELDS.items()}
#: mask kind -> file-name suffix
MASK_SUFFIXES = {"silver": "_ss", "staple": "_staple"}
_NAME = re.compile(r"^(?P<id>CC\d{4})_(?P<vendor>ge|philips|siemens)_(?P<field>15|3)_(?P<age>\d+)_(?P<sex>[MF])"
                   r"(?P<suffix>_[A-Za-z]+)?$", re.IGNORECASE)


def convert_cc359(
    raw_dir: str | Path,
    dataset_id: int,
    raw_root: str | Path,
    name: str = "CC359",
    source_domain: str = "ge_3",
    mask: str = "silver",
    test_fraction: float = 0.2,
    num_folds: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Convert an unpacked CC-359 download into ``<raw_root>/Dataset{id}_{name}``.

    Args:
        raw_dir: folder holding the unpacked ``Original`` and mask archives (searched recursively).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``).
        name: dataset name after ``DatasetXXX_``.
        source_domain: training domain, one of :data:`DOMAINS`.
        mask: ``"silver"`` (``*_ss``) or ``"staple"`` (``*_staple``).
        test_fraction: fraction of source-domain subjects held out for testing.
        num_folds: folds of ``splits_final.json``; None: 5, or one per training subject if fewer.
        seed: seed of the held-out selection and of the folds.
        overwrite: replace an existing dataset written from other inputs or options.
        progress: called as ``progress(done, total, case_id)`` while writing.

    Returns:
        The dataset folder (unchanged if it is up to date).

    Raises:
        ValueError: bad options (e.g. more folds than training subjects), or a
            :class:`~nnunet_ext.dataset_conversion.common.ConversionError` listing every problem of the download.
        FileNotFoundError: ``raw_dir`` does not exist.
        FileExistsError: the folder exists from other inputs and ``overwrite`` is False, or the id is taken.
    """
    if source_domain not in DOMAINS:
        raise ValueError(f"source domain must be one of {list(DOMAINS)}, got {source_domain!r}")
    if mask not in MASK_SUFFIXES:
        raise ValueError(f"mask must be one of {list(MASK_SUFFIXES)}, got {mask!r}")
    raw_dir = Path(raw_dir)
    target = dataset_folder(raw_root, dataset_id, name)
    suffix = MASK_SUFFIXES[mask]

    images: dict[str, list[tuple[Path, re.Match]]] = defaultdict(list)
    masks: dict[str, list[tuple[Path, re.Match]]] = defaultdict(list)
    ignored: list[str] = []
    for path in walk_files(raw_dir):
        stem = strip_nifti_suffix(path.name)
        match = _NAME.match(stem) if stem is not None else None
        if match is None:
            if stem is not None:
                ignored.append(str(path.relative_to(raw_dir)))
            continue
        key = match["id"].upper()
        if match["suffix"] is None:
            images[key].append((path, match))
        elif match["suffix"].lower() == suffix:
            masks[key].append((path, match))

    problems = Problems()
    if not images:
        problems.add(raw_dir, "no file named like CC0001_philips_15_55_M.nii.gz", "the unpacked Original.zip",
                     "unpack Original.zip (and the mask archive) below RAW_DIR")
    for key in sorted(set(images) | set(masks)):
        for kind, found in (("image", images.get(key, [])), (f"{mask} mask", masks.get(key, []))):
            if len(found) > 1:
                problems.add(key, f"{len(found)} {kind}s: " + ", ".join(str(p) for p, _ in found),
                             f"one {kind} per subject", "delete the duplicate copies (e.g. a second unzip)")
        if key in images and key not in masks:
            problems.add(images[key][0][0], f"no {mask} mask", f"{images[key][0][1].group(0)}{suffix}.nii.gz",
                         "unpack the mask archive below RAW_DIR, or choose the mask kind you have (--mask)")
        if key in masks and key not in images:
            problems.add(masks[key][0][0], "a mask without its image", f"{key}_..._.nii.gz from Original.zip",
                         "unpack Original.zip completely below RAW_DIR")
        if key in images and key in masks:
            image_stem = images[key][0][1].group(0)
            mask_stem = masks[key][0][1].group(0)[: -len(suffix)]
            if image_stem.lower() != mask_stem.lower():
                problems.add(masks[key][0][0], f"mask for {mask_stem}", f"mask for the image {image_stem}",
                             "the vendor/field/age/sex parts of the names must agree; re-download the mask")
    problems.raise_if_any(f"CC-359 download {raw_dir}")

    pairs = {key: (images[key][0], masks[key][0]) for key in sorted(images)}
    headers = {}
    for key, ((image_path, _), (mask_path, _)) in pairs.items():
        try:
            image, label = load_nifti(image_path), load_nifti(mask_path)
        except ImageReadError as e:
            problems.add_unreadable(e)
            continue
        if len(image.shape) != 3:
            problems.add(image_path, f"shape {image.shape}", "a 3D volume", "replace it with the original 3D T1 file")
        elif not same_geometry(image, label):
            problems.add(mask_path, f"shape {label.shape}, affine {np.round(label.affine, 3).tolist()}",
                         f"the grid of {image_path.name}: shape {image.shape}, affine "
                         f"{np.round(image.affine, 3).tolist()}", "use the mask that belongs to this image")
        headers[key] = image
    problems.raise_if_any(f"CC-359 download {raw_dir}")

    options = {"source_domain": source_domain, "mask": mask, "test_fraction": test_fraction,
               "num_folds": num_folds, "seed": seed, "name": name}
    inputs = [p for (p, _), (q, _) in pairs.values() for p in (p, q)]
    digest = fingerprint("cc359", options, inputs, raw_dir)
    if up_to_date(target, digest, overwrite):
        logger.info("%s is up to date", target)
        return target
    check_id_unused(target)

    domain_of = {key: f"{m['vendor'].lower()}_{m['field']}" for key, ((_, m), _) in pairs.items()}
    held_out = holdout_subjects([k for k in pairs if domain_of[k] == source_domain], test_fraction, seed)
    meta = DomainMetadata()
    for domain, (vendor, tesla) in DOMAINS.items():
        role = "source" if domain == source_domain else "target"
        meta.add_domain(domain, f"CC-359 T1, {vendor} {tesla:g} T scanners ({role} domain)", simulated=False,
                        vendor=vendor, field_strength_T=tesla, role=role)
    if not any(domain_of[k] == source_domain for k in pairs):
        raise ValueError(f"no subject of the source domain {source_domain!r} in {raw_dir}; choose another "
                         f"--source-domain from {sorted(set(domain_of.values()))}")

    cases = []
    for key, ((image_path, match), (mask_path, _)) in pairs.items():
        domain = domain_of[key]
        split = "train" if domain == source_domain and key not in held_out else "test"
        cases.append(CaseOut(
            case_id=key, split=split, domain=domain, subject=key,
            load=_loader(image_path, mask_path),
            extra={"vendor": VENDORS[match["vendor"].lower()], "field_strength_T": FIELDS[match["field"]],
                   "age": int(match["age"]), "sex": match["sex"].upper(),
                   "image": str(image_path.relative_to(raw_dir)), "mask": str(mask_path.relative_to(raw_dir)),
                   "spacing_mm": [round(float(s), 6) for s in headers[key].header.get_zooms()[:3]]},
        ))
    train_cases = {c.case_id: c.subject for c in cases if c.split == "train"}
    spec = DatasetSpec(
        target=target, channel_names={"0": "T1"}, labels={"background": 0, "brain": 1}, meta=meta,
        description=("Calgary-Campinas-359 skull stripping converted by nnunet_ext.dataset_conversion.cc359; "
                     f"{mask} masks; source domain {source_domain}; domain of each case in domains.json"),
        reference=("Souza R, et al. An open, multi-vendor, multi-field-strength brain MR dataset and analysis of "
                   "publicly available skull stripping methods agreement. NeuroImage 170:482-494, 2018. "
                   "https://sites.google.com/view/calgary-campinas-dataset/home"),
        licence="CC-359: see the dataset's terms of use (https://sites.google.com/view/calgary-campinas-dataset)",
        converter="cc359", options=options, digest=digest,
        splits=requested_folds(train_cases, num_folds, seed),
        record={"raw_dir": str(raw_dir.resolve()), "ignored_files": ignored, "held_out_subjects": sorted(held_out)},
    )
    return write_dataset(spec, cases, overwrite=True, progress=progress)


def _loader(image_path: Path, mask_path: Path):
    def load(problems: Problems):
        try:
            image, mask = load_nifti(image_path), load_nifti(mask_path)
            image_array, mask_array = nifti_array(image), nifti_array(mask)
        except ImageReadError as e:
            problems.add_unreadable(e)
            return None
        label, bad = integer_labels(mask_array, {0, 1})
        if bad:
            problems.add(mask_path, bad, "only 0 (background) and 1 (brain)", "use the binary brain mask file")
            return None
        if not label.any():
            problems.add(mask_path, "an empty mask", "a brain mask with foreground", "re-download this mask")
            return None
        affine, notes = direction_note(image.affine)
        return [image_array], label, affine, notes

    return load
