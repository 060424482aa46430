"""Shared machinery of the public-dataset converters (CC-359, M&Ms, Decathlon, hippocampus stream).

Every converter follows the same contract:

* it only *reads* the raw download (files are opened read-only; nothing is renamed, unpacked or touched);
* it scans and checks the whole download first and reports **every** problem at once in one
  :class:`ConversionError` (a ``ValueError``) naming each file or case, what was expected, what was found
  and how to fix it;
* it assembles the nnU-Net raw dataset in a hidden temporary sibling folder
  (:func:`nnunet_ext.utils.atomic.atomic_directory`) and moves it into place only when every case was
  written, so an error at case 300 of 359 leaves no half-written dataset behind;
* a re-run with the same inputs and options is a no-op (:func:`up_to_date` compares a fingerprint of the
  input files' paths, sizes and modification times and of the options, stored in ``conversion.json``);
  different inputs or options need ``overwrite=True``;
* a conversion that was killed (``kill -9``) leaves hidden temporaries; the next run into the same folder
  removes them (:func:`nnunet_ext.utils.atomic.remove_leftovers`);
* every image is read through :mod:`nnunet_ext.utils.image_io`, so a truncated or corrupt file becomes a
  listed problem naming the file, like any other;
* ``splits_final.json`` holds exactly the folds asked for, or the conversion refuses
  (:func:`nnunet_ext.dataset_conversion.splits.requested_folds`); ``conversion.json`` records
  ``num_folds_written``.

Written layout (nnU-Net raw format plus our metadata)::

    DatasetXXX_Name/
      dataset.json            nnU-Net's
      domains.json            domain, split and subject of every case (nnunet_ext.domains)
      splits_final.json       subject-grouped folds; nnUNetv2_plan_and_preprocess copies it into
                              $nnUNet_preprocessed/DatasetXXX_Name/ where nnUNetv2_train reads it
      conversion.json         converter, options, input fingerprint, skipped inputs, notes
      imagesTr/ labelsTr/     training cases (source domain)
      imagesTs/ labelsTs/     test cases (held-out source patients + every other domain)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_ext import __version__
from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.utils.atomic import atomic_directory, remove_leftovers, write_json_atomic
from nnunet_ext.utils.image_io import ImageReadError

logger = logging.getLogger(__name__)

CONVERSION_FILENAME = "conversion.json"
SPLITS_FILENAME = "splits_final.json"
#: folders and files of an unpacked download that are never data (macOS resource forks, OS litter)
IGNORED_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})
#: largest deviation from orthonormality of a direction matrix that is repaired silently (SimpleITK's own
#: tolerance is about 1e-6; larger deviations are repaired too, but recorded per case)
ORTHONORMAL_ATOL = 1e-6


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input.

    Attributes:
        where: the offending file or case.
        found: what was found.
        expected: what was expected.
        fix: what the user should do.
    """

    where: str
    found: str
    expected: str
    fix: str


class ConversionError(ValueError):
    """The raw download cannot be converted; :attr:`problems` lists every problem found."""

    def __init__(self, title: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"{title}: {len(self.problems)} problem(s); nothing was written."]
        for p in self.problems:
            lines.append(f"- {p.where}: found {p.found}; expected {p.expected}. Fix: {p.fix}")
        super().__init__("\n".join(lines))


class Problems:
    """Collects :class:`Problem` entries and raises them together."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, where: str | os.PathLike, found: str, expected: str, fix: str) -> None:
        self.items.append(Problem(str(where), found, expected, fix))

    def add_unreadable(self, error: ImageReadError) -> None:
        """Record a file :mod:`nnunet_ext.utils.image_io` could not read (truncated, corrupt, missing)."""
        self.add(error.path, error.reason, "a complete, readable image file", error.fix)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, title: str) -> None:
        if self.items:
            raise ConversionError(title, self.items)


def walk_files(root: Path) -> list[Path]:
    """Every regular file below ``root`` (sorted), skipping hidden files, ``._*`` forks and OS litter.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"raw folder {root} does not exist or is not a folder; pass the unpacked download")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES and not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if f not in IGNORED_NAMES and not f.startswith(".")]
    return sorted(found)


def strip_nifti_suffix(name: str) -> str | None:
    """``name`` without ``.nii.gz`` / ``.nii``, or None if it is not a NIfTI file name."""
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def orthonormalize(affine: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest affine whose direction cosines are orthonormal, with the same voxel sizes and origin.

    The 3x3 part ``M = R @ diag(s)`` is split into column norms ``s`` (voxel sizes) and ``R``; ``R`` is
    replaced by the nearest orthogonal matrix ``U @ V.T`` of its SVD ``R = U S V.T``. SimpleITK (and so
    nnU-Net's default reader) refuses NIfTI headers whose direction is not orthonormal.

    Args:
        affine: 4x4 voxel-to-world matrix.

    Returns:
        The repaired affine and the largest absolute change of a direction-cosine entry.
    """
    affine = np.asarray(affine, dtype=np.float64)
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing == 0):
        raise ValueError(f"affine has a zero voxel size (column norms {spacing.tolist()})")
    r = m / spacing
    u, _, vt = np.linalg.svd(r)
    r_fixed = u @ vt
    fixed = affine.copy()
    fixed[:3, :3] = r_fixed * spacing
    return fixed, float(np.max(np.abs(r_fixed - r)))


def direction_note(affine: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`orthonormalize` ``affine``; the note records a repair larger than :data:`ORTHONORMAL_ATOL`."""
    fixed, change = orthonormalize(affine)
    return fixed, ({"direction_repaired_max_change": round(change, 8)} if change > ORTHONORMAL_ATOL else {})


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type | np.dtype | None = None) -> None:
    """Write ``array`` (nibabel axis order x, y, z) with ``affine`` as both qform and sform (code 1)."""
    import nibabel as nib

    data = np.asarray(array if dtype is None else array.astype(dtype, copy=False))
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.set_data_dtype(data.dtype)
    nib.save(image, str(path))


def readable_by_others(folder: Path) -> None:
    """Give ``folder`` the permissions the umask allows (a ``mkdtemp`` folder is 0700, i.e. private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def same_geometry(a: Any, b: Any, rtol: float = 1e-3, atol: float = 1e-3) -> bool:
    """Whether two nibabel images have the same spatial shape and (nearly) the same affine."""
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, rtol=rtol, atol=atol)


def label_values(array: np.ndarray) -> set[float]:
    return set(np.unique(array).tolist())


def integer_labels(array: np.ndarray, allowed: Iterable[int]) -> tuple[np.ndarray | None, str | None]:
    """``array`` as uint8 if all its values are integers in ``allowed``; else ``(None, description)``."""
    values = label_values(array)
    allowed = set(allowed)
    bad = sorted(v for v in values if not float(v).is_integer() or int(v) not in allowed)
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
        return None, f"label values {{{shown}}}"
    return np.asarray(array).astype(np.uint8), None


def dataset_folder(raw_root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``<raw_root>/Dataset{id:03d}_{name}``; checks the id and the name.

    Raises:
        ValueError: ``dataset_id`` outside 1..999 or ``name`` not usable in a folder name.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(f"DATASET_ID must be an integer in 1..999 (nnU-Net's dataset id), got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise ValueError(f"dataset name must be letters, digits and '-', got {name!r}; pass e.g. --name CC359")
    return Path(os.fspath(raw_root)) / f"Dataset{dataset_id:03d}_{name}"


def check_id_unused(target: Path) -> None:
    """nnU-Net finds datasets by id: refuse a second folder with ``target``'s id.

    Raises:
        FileExistsError: another ``DatasetXXX_*`` folder has the same id.
    """
    prefix = target.name.split("_", 1)[0]
    clashes = sorted(p for p in target.parent.glob(f"{prefix}_*") if p.name != target.name and p.is_dir())
    if clashes:
        raise FileExistsError(
            f"dataset id {prefix[len('Dataset'):]} is already used by {clashes[0]}; nnU-Net needs unique ids. "
            f"Pass another DATASET_ID or remove that folder."
        )


def fingerprint(converter: str, options: dict[str, Any], inputs: Iterable[Path], root: Path) -> str:
    """SHA-256 over the converter, its options and each input's relative path, size and mtime."""
    h = hashlib.sha256()
    h.update(json.dumps({"converter": converter, "options": options, "version": __version__},
                        sort_keys=True, default=str).encode())
    for path in sorted(set(inputs)):
        st = path.stat()
        name = path.relative_to(root) if path.is_relative_to(root) else path.resolve()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def up_to_date(target: Path, digest: str, overwrite: bool) -> bool:
    """True if ``target`` was written from the same inputs and options (so there is nothing to do).

    Leftovers of an earlier conversion into ``target`` that was killed are removed first
    (:func:`nnunet_ext.utils.atomic.remove_leftovers`), also when there is nothing else to do.

    Raises:
        FileExistsError: ``target`` exists, differs (or was not written by us) and ``overwrite`` is False;
            or a leftover cannot be attributed to a finished process (the message names it).
    """
    remove_leftovers(target)
    if not target.exists():
        return False
    record = target / CONVERSION_FILENAME
    try:
        previous = json.loads(record.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        previous = None
    if previous == digest:
        return True
    if overwrite:
        return False
    reason = "was written from other inputs or options" if previous else f"has no {CONVERSION_FILENAME}"
    raise FileExistsError(f"{target} already exists and {reason}; pass --overwrite to replace it")


@dataclass
class CaseOut:
    """One case to write.

    Attributes:
        case_id: nnU-Net case id (file stem).
        split: ``"train"`` (imagesTr) or ``"test"`` (imagesTs).
        domain: domain name (must be added to the metadata).
        subject: patient id; cases of one subject never straddle folds.
        load: returns ``(channels, label, affine, notes)``: a list of image arrays (x, y, z), the uint8
            label array, the 4x4 affine and extra keys for ``domains.json`` learnt while reading (e.g. a
            repaired direction); may append to ``problems`` and return None instead.
        extra: extra keys stored with the case in ``domains.json``.
    """

    case_id: str
    split: str
    domain: str
    subject: str
    load: Callable[[Problems], tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, Any]] | None]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """Everything :func:`write_dataset` needs besides the cases."""

    target: Path
    channel_names: dict[str, str]
    labels: dict[str, int]
    meta: DomainMetadata
    description: str
    reference: str
    licence: str
    converter: str
    options: dict[str, Any]
    digest: str
    splits: list[dict[str, list[str]]] | None
    record: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Any] = field(default_factory=dict)


def write_dataset(spec: DatasetSpec, cases: Sequence[CaseOut], overwrite: bool,
                  progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write ``cases`` and the metadata into ``spec.target`` atomically.

    Voxel-level problems reported by the cases' ``load`` are collected over all cases; if there are any,
    a :class:`ConversionError` lists them and the temporary folder is discarded.

    Returns:
        ``spec.target``.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    problems = Problems()
    with atomic_directory(spec.target, overwrite=overwrite) as tmp:
        readable_by_others(tmp)
        for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / folder).mkdir()
        for number, case in enumerate(cases, start=1):
            if progress is not None:
                progress(number, len(cases), case.case_id)
            loaded = case.load(problems)
            if loaded is None:
                continue
            channels, label, affine, notes = loaded
            suffix = "Tr" if case.split == "train" else "Ts"
            for c, channel in enumerate(channels):
                write_nifti(channel, affine, tmp / f"images{suffix}" / f"{case.case_id}_{c:04d}.nii.gz")
            write_nifti(label, affine, tmp / f"labels{suffix}" / f"{case.case_id}.nii.gz", np.uint8)
            spec.meta.add_case(case.case_id, case.domain, case.split, subject=case.subject, **case.extra, **notes)
        problems.raise_if_any(f"cannot convert into {spec.target.name}")
        num_training = sum(c.split == "train" for c in cases)
        generate_dataset_json(
            str(tmp),
            channel_names=dict(spec.channel_names),
            labels=dict(spec.labels),
            num_training_cases=num_training,
            file_ending=".nii.gz",
            dataset_name=spec.target.name,
            description=spec.description,
            reference=spec.reference,
            license=spec.licence,
            converted_by=f"nnunet_ext {__version__} ({spec.converter})",
            numTest=len(cases) - num_training,
        )
        save_domains(spec.meta, tmp)
        if spec.splits is not None:
            write_json_atomic(tmp / SPLITS_FILENAME, spec.splits)
        for filename, content in spec.extra_files.items():
            write_json_atomic(tmp / filename, content)
        write_json_atomic(tmp / CONVERSION_FILENAME, {
            "converter": spec.converter,
            "nnunet_ext_version": __version__,
            "options": spec.options,
            "fingerprint": spec.digest,
            **({"num_folds_written": len(spec.splits)} if spec.splits is not None else {}),
            **spec.record,
        })
    logger.info("wrote %s (%d cases)", spec.target, len(cases))
    return spec.target
