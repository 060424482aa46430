"""Medical Segmentation Decathlon task -> nnU-Net raw dataset, through nnunetv2's own converter.

Expected download: one unpacked task tarball, e.g. ``Task04_Hippocampus/`` with ``dataset.json``
(``modality``, ``labels`` as ``{"0": "background", ...}``, ``training``, ``test``), ``imagesTr/``,
``labelsTr/`` and ``imagesTs/`` holding ``<name>_NNN.nii.gz`` (4D for multi-modal tasks). The tarballs
also hold AppleDouble ``._*`` files, which are ignored (as nnunetv2 does). A doubled folder after
unpacking (``Task04_Hippocampus/Task04_Hippocampus``) is accepted.

The conversion itself is :func:`nnunetv2.dataset_conversion.convert_MSD_dataset.convert_msd_dataset`
(it splits 4D images into ``_000X`` channels and rewrites ``dataset.json``). That function writes into
``nnunetv2.paths.nnUNet_raw`` directly (on 2.8.1 an ``os.PathLike`` read from the environment at use time)
and asserts on problems; we therefore check the task first (every problem listed at once), point
``nnUNet_raw`` of that module at a temporary folder for the duration of the call, and move the result into
place atomically, adding ``domains.json`` (one domain, ``msd_<Name>``), subject-grouped
``splits_final.json`` (one subject per case: the Decathlon gives no patient ids) and ``conversion.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from unittest import mock


from nnunet_ext import __version__
from nnunet_ext.dataset_conversion.common import (
    CONVERSION_FILENAME,
    SPLITS_FILENAME,
    Problems,
    check_id_unused,
    dataset_folder,
    fingerprint,
    label_values,
    readable_by_others,
    up_to_date,
)
from nnunet_ext.dataset_conversion.splits import requested_folds
from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.utils.atomic import atomic_directory, write_json_atomic
from nnunet_ext.utils.image_io import ImageReadError, load_nifti, nifti_array

logger = logging.getLogger(__name__)

_TASK = re.compile(r"^Task(?P<number>\d+)_(?P<name>[A-Za-z0-9-]+)$")


def find_task_folder(task_dir: str | Path) -> Path:
    """The folder holding the task's ``dataset.json`` (``task_dir`` or its single ``Task*`` child).

    Raises:
        FileNotFoundError: ``task_dir`` does not exist or holds no ``dataset.json``.
    """
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise FileNotFoundError(f"{task_dir} does not exist; pass the unpacked TaskXX_Name folder")
    if (task_dir / "dataset.json").is_file():
        return task_dir
    children = [p for p in task_dir.iterdir() if p.is_dir() and _TASK.match(p.name) and (p / "dataset.json").is_file()]
    if len(children) == 1:
        return children[0]
    raise FileNotFoundError(f"no dataset.json in {task_dir}; pass the unpacked Decathlon folder TaskXX_Name "
                            f"(holding dataset.json, imagesTr, labelsTr, imagesTs)")


def _visible_niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith((".", "_")))


def check_msd_task(task: Path) -> dict:
    """Check an unpacked Decathlon task; returns its ``dataset.json``.

    Raises:
        ConversionError: listing every problem (folder name, missing folders, unpaired files, truncated or
            unreadable files, label values not in ``dataset.json``, label maps that are not 3D).
    """
    problems = Problems()
    if not _TASK.match(task.name):
        problems.add(task, f"folder name {task.name!r}", "TaskNN_Name (e.g. Task04_Hippocampus)",
                     "keep the name the tarball unpacks to; nnunetv2's converter reads id and name from it")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        if not (task / sub).is_dir():
            problems.add(task / sub, "nothing", f"the folder {sub}", "unpack the whole tarball")
    try:
        dataset = json.loads((task / "dataset.json").read_text(encoding="utf-8"))
    except ValueError as e:
        problems.add(task / "dataset.json", f"invalid JSON ({e})", "the Decathlon dataset.json", "re-download")
        dataset = {}
    for key in ("labels", "modality"):
        if key not in dataset:
            problems.add(task / "dataset.json", f"keys {sorted(dataset)}", f"a {key!r} entry",
                         "this must be an original Decathlon dataset.json, not an nnU-Net one")
    problems.raise_if_any(f"Decathlon task {task}")
    defined = {int(v) for v in dataset["labels"]}
    images = {p.name for p in _visible_niftis(task / "imagesTr")}
    labels = {p.name for p in _visible_niftis(task / "labelsTr")}
    for name in sorted(images - labels):
        problems.add(task / "imagesTr" / name, "no label", f"labelsTr/{name}", "unpack the whole tarball")
    for name in sorted(labels - images):
        problems.add(task / "labelsTr" / name, "no image", f"imagesTr/{name}", "unpack the whole tarball")
    for path in [p for sub in ("imagesTr", "imagesTs") for p in _visible_niftis(task / sub)]:
        try:
            load_nifti(path)  # nnunetv2's converter reads the images; a truncated one must not get that far
        except ImageReadError as e:
            problems.add_unreadable(e)
    for name in sorted(labels & images):
        try:
            label = load_nifti(task / "labelsTr" / name)
            if len(label.shape) != 3:
                problems.add(task / "labelsTr" / name, f"shape {label.shape}", "a 3D label map", "re-download")
                continue
            values = label_values(nifti_array(label))
        except ImageReadError as e:
            problems.add_unreadable(e)
            continue
        bad = sorted(v for v in values if not float(v).is_integer() or int(v) not in defined)
        if bad:
            problems.add(task / "labelsTr" / name, f"label values {bad}",
                         f"values defined in dataset.json {sorted(defined)}", "re-download this label map")
    if not images:
        problems.add(task / "imagesTr", "no *.nii.gz", "training images", "unpack the whole tarball")
    problems.raise_if_any(f"Decathlon task {task}")
    return dataset


def convert_msd(
    task_dir: str | Path,
    dataset_id: int,
    raw_root: str | Path,
    num_processes: int = 1,
    num_folds: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Convert an unpacked Decathlon task with nnunetv2's converter into ``<raw_root>/Dataset{id}_{Name}``.

    Args:
        task_dir: unpacked ``TaskNN_Name`` folder.
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``).
        num_processes: worker processes of nnunetv2's converter.
        num_folds: folds of ``splits_final.json``; None: 5, or one per training case if fewer.
        seed: seed of the folds.
        overwrite: replace an existing dataset written from other inputs or options.
        progress: unused (nnunetv2's converter reports nothing); accepted for a uniform CLI.

    Returns:
        The dataset folder.

    Raises:
        ValueError / ConversionError: bad task folder (every problem listed), or more folds than training cases.
        FileExistsError: the folder exists from other inputs and ``overwrite`` is False, or the id is taken.
    """
    from nnunetv2.dataset_conversion import convert_MSD_dataset as msd_module

    task = find_task_folder(task_dir)
    dataset = check_msd_task(task)
    name = _TASK.match(task.name)["name"]
    target = dataset_folder(raw_root, dataset_id, name)
    options = {"num_folds": num_folds, "seed": seed}
    inputs = [task / "dataset.json"] + [p for sub in ("imagesTr", "labelsTr", "imagesTs")
                                        for p in _visible_niftis(task / sub)]
    digest = fingerprint("msd", options, inputs, task)
    if up_to_date(target, digest, overwrite):
        logger.info("%s is up to date", target)
        return target
    check_id_unused(target)
    expected_train = sorted(p.name[: -len(".nii.gz")] for p in _visible_niftis(task / "labelsTr"))
    folds = requested_folds({c: c for c in expected_train}, num_folds, seed)  # refuse before converting

    with atomic_directory(target, overwrite=True) as tmp:
        readable_by_others(tmp)
        staging = tmp / "staging"
        staging.mkdir()
        with mock.patch.object(msd_module, "nnUNet_raw", os.fspath(staging)), \
                mock.patch.object(msd_module, "find_candidate_datasets", lambda _id: []):
            msd_module.convert_msd_dataset(os.fspath(task), overwrite_target_id=dataset_id,
                                           num_processes=num_processes)
        produced = staging / target.name
        for child in produced.iterdir():
            os.replace(child, tmp / child.name)
        produced.rmdir()
        staging.rmdir()
        (tmp / "labelsTs").mkdir(exist_ok=True)

        domain = f"msd_{name}"
        meta = DomainMetadata()
        meta.add_domain(domain, f"Medical Segmentation Decathlon {task.name}: {dataset.get('description', '')}".strip(),
                        simulated=False, role="source")
        train = sorted(p.name[: -len(".nii.gz")] for p in (tmp / "labelsTr").glob("*.nii.gz"))
        if train != expected_train:
            raise RuntimeError(f"nnunetv2's converter wrote the training cases {train}, not the task's "
                               f"{expected_train}; report this to nnunet-ext with your nnunetv2 version")
        test = sorted({p.name[: -len("_0000.nii.gz")] for p in (tmp / "imagesTs").glob("*_0000.nii.gz")})
        for case in train:
            meta.add_case(case, domain, "train", subject=case)
        for case in test:
            meta.add_case(case, domain, "test", subject=case, labelled=False)
        save_domains(meta, tmp)
        write_json_atomic(tmp / SPLITS_FILENAME, folds)
        write_json_atomic(tmp / CONVERSION_FILENAME, {
            "converter": "msd (nnunetv2.dataset_conversion.convert_MSD_dataset.convert_msd_dataset)",
            "nnunet_ext_version": __version__, "options": options, "fingerprint": digest,
            "num_folds_written": len(folds),
            "task_dir": str(task.resolve()),
            "note": "imagesTs of the Decathlon has no public labels; labelsTs stays empty",
        })
    return target
