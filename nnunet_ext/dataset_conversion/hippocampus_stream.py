"""Hippocampus "shifting source" stream (ODEx paper): Decathlon Task04 + HarP + Dryad, one label set.

One nnU-Net raw dataset with labels 0 background, 1 hippocampus (head, body and tail), every case a crop
around one hippocampus (as the Decathlon task ships them), domain = source dataset. Expected inputs (the
exact HarP and Dryad layouts could not be confirmed from their distributors; these are the layouts the
ODEx authors' loaders read, see ``documentation/datasets.md``; every expectation is checked):

``decathlon``: unpacked ``Task04_Hippocampus`` (``imagesTr/hippocampus_NNN.nii.gz``, ``labelsTr/`` with
    1 anterior, 2 posterior -> merged to 1). No patient ids are published: each case is its own subject.
``harp``: MINC T1 images ``ADNI_<site>_S_<subject>_<n>...mnc`` and per-side NIfTI labels
    ``<ADNI_..._<n>>_L.nii`` / ``_R.nii`` anywhere below the folder (e.g. ``100/``, ``35/``,
    ``Labels_100_NIFTI/``, ``Labels_35_NIFTI/``). Labels lie on the MINC voxel grid and are written on the
    image's grid. Labels must hold {0, 1}; a label holding exactly two values {v, v + 1} (an intensity
    offset seen in the release) is shifted to {0, 1} and recorded as ``label_offset``. Subject:
    ``ADNI_<site>_S_<subject>``. MINC is read with SimpleITK.
``dryad``: folders ``sNN/`` with ``sNN_t1w_standard_defaced_MNI.nii.gz`` and
    ``sNN_hippolabels_t1w_standard_L_MNI.nii.gz`` / ``_R_MNI.nii.gz`` (subfield labels; every positive
    integer -> 1). Subject: ``sNN``.

Crops: the bounding box of one side's label widened by a quarter of its extent on each side (at least 2
voxels), clipped to the volume. Both sides of a subject share ``subject``.

Stream: per source, a seeded ``test_fraction`` of subjects goes to ``imagesTs``; the remaining subjects
are dealt to ``num_stages`` stages with mixing weights that slide linearly along ``order`` (stage 0 is
pure ``order[0]``, the last stage pure ``order[-1]``; weight of source ``i`` at stage ``k`` is
``max(0, 1 - |k (n - 1) / (S - 1) - i|)``). The ODEx paper's exact proportions are in its appendix, which
we do not have: this schedule is ours. The held-out test subjects of each source are dealt to stages
with the same weights, so stage ``k``'s ``test`` list samples stage ``k``'s population
(:func:`nnunet_ext.dataset_conversion.splits.deal_to_stages`; a subject never straddles stages or
splits). ``splits_final.json`` maps **fold k = stage k** (train = the stage's subjects minus a validation
fifth, val = that fifth), so ``nnUNetv2_train ID CONFIG k`` trains stage ``k``; ``stream.json``
(:mod:`nnunet_ext.streams`, ``format_version`` 1) lists stages, weights and ``train``/``val``/``test``
cases; ``domains.json`` records ``stage`` per case (training and test cases).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    strip_nifti_suffix,
    up_to_date,
    walk_files,
    write_dataset,
)
from nnunet_ext.dataset_conversion.msd import find_task_folder
from nnunet_ext.dataset_conversion.splits import deal_to_stages, holdout_subjects, stage_weights
from nnunet_ext.domains import DomainMetadata
from nnunet_ext.streams import FORMAT_VERSION as STREAM_FORMAT_VERSION
from nnunet_ext.utils.image_io import ImageReadError, load_nifti, nifti_array, read_image

logger = logging.getLogger(__name__)

SOURCES = ("harp", "dryad", "decathlon")
_HARP_IMAGE = re.compile(r"^(?P<key>(?P<subject>ADNI_\d+_S_\d+)_\d+)")
_HARP_LABEL = re.compile(r"^(?P<key>ADNI_\d+_S_\d+_\d+)_(?P<side>[LR])$")
_DRYAD_IMAGE = re.compile(r"^(?P<subject>s\d+)_t1w_standard_defaced_MNI$")
_DRYAD_LABEL = re.compile(r"^(?P<subject>s\d+)_hippolabels_t1w_standard_(?P<side>[LR])_MNI$")
_DESCRIPTIONS = {
    "decathlon": "Medical Segmentation Decathlon Task04 hippocampus (Vanderbilt; healthy and schizophrenia), "
                 "anterior+posterior merged",
    "harp": "EADC-ADNI harmonized hippocampal protocol (HarP) labels on ADNI T1 (healthy, MCI, Alzheimer's)",
    "dryad": "Kulaga-Yoskovitz et al. 3 T hippocampal subfield dataset (Dryad), T1w standard resolution, "
             "subfields merged",
}


# a volume source: () -> (array x,y,z, affine 4x4); raises ImageReadError naming the file
Volume = Callable[[], tuple[np.ndarray, np.ndarray]]


def _nifti_volume(path: Path) -> Volume:
    def read() -> tuple[np.ndarray, np.ndarray]:
        image = load_nifti(path)
        return nifti_array(image), image.affine

    return read


def _sitk_volume(path: Path) -> Volume:
    def read() -> tuple[np.ndarray, np.ndarray]:
        import SimpleITK as sitk

        image = read_image(path)
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
        affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin())
        return array, affine

    return read


def crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` widened by a quarter of its extent (>= 2 voxels) per side, clipped."""
    idx = np.nonzero(mask)
    box = []
    for axis, size in enumerate(mask.shape):
        lo, hi = int(idx[axis].min()), int(idx[axis].max()) + 1
        margin = max(2, (hi - lo) // 4)
        box.append(slice(max(0, lo - margin), min(size, hi + margin)))
    return tuple(box)


def _crop_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box]) + affine[:3, 3]
    return out


def _side_loader(image_path: Path, image: Volume, label: Volume, label_path: Path, merge: str) -> Callable:
    """Loader of one side: read image and label, check and merge label values, crop around the label."""

    def load(problems: Problems):
        try:
            array, affine = image()
            raw, _ = label()
        except ImageReadError as e:
            if e.path.suffix.lower() == ".mnc":
                problems.add(e.path, e.reason, "a readable MINC2 image",
                             "re-download it; convert MINC1 with 'mincconvert -2'")
            else:
                problems.add_unreadable(e)
            return None
        raw = np.asarray(raw)
        notes: dict[str, Any] = {}
        if raw.shape != array.shape:
            problems.add(label_path, f"shape {raw.shape}", f"the image's shape {array.shape}",
                         "use the label file that belongs to this image")
            return None
        values = sorted(np.unique(raw).tolist())
        if merge == "binary_or_offset" and len(values) == 2 and values[1] - values[0] == 1 and values[0] != 0:
            notes["label_offset"] = values[0]
            raw = raw - values[0]
        allowed = {0, 1} if merge in ("binary_or_offset",) else set(range(256))
        if merge == "decathlon":
            allowed = {0, 1, 2}
        out, bad = integer_labels(raw, allowed)
        if bad:
            expected = {"binary_or_offset": "0 and 1 (or two values v, v+1)", "decathlon": "0, 1 (anterior), 2",
                        "subfields": "non-negative integer subfield labels"}[merge]
            problems.add(label_path, bad, expected, "use the released label file")
            return None
        if not out.any():
            problems.add(label_path, "an empty label map", "a hippocampus label", "use the released label file")
            return None
        box = crop_box(out)
        affine, direction = direction_note(_crop_affine(affine, box))
        notes.update(direction)
        notes["crop_voxels"] = [[s.start, s.stop] for s in box]
        return [np.asarray(array[box])], (out[box] > 0).astype(np.uint8), affine, notes

    return load


def _scan_decathlon(folder: Path, problems: Problems) -> list[dict[str, Any]]:
    task = find_task_folder(folder)
    found = []
    images = {p.name: p for p in (task / "imagesTr").glob("*.nii.gz") if not p.name.startswith((".", "_"))}
    labels = {p.name: p for p in (task / "labelsTr").glob("*.nii.gz") if not p.name.startswith((".", "_"))}
    for name in sorted(set(images) ^ set(labels)):
        problems.add(images.get(name) or labels.get(name), "an image without label or a label without image",
                     "imagesTr and labelsTr with the same file names", "unpack the whole Task04 tarball")
    for name in sorted(set(images) & set(labels)):
        stem = name[: -len(".nii.gz")]
        found.append({"case": f"decathlon_{stem}", "subject": f"decathlon_{stem}", "side": None,
                      "image": images[name], "label": labels[name], "image_volume": _nifti_volume(images[name]),
                      "label_volume": _nifti_volume(labels[name]), "merge": "decathlon"})
    if not found:
        problems.add(task, "no labelled case", "imagesTr/*.nii.gz with labelsTr/*.nii.gz", "unpack Task04")
    return found


def _scan_pairs(folder: Path, problems: Problems, source: str) -> list[dict[str, Any]]:
    images: dict[str, list[Path]] = defaultdict(list)
    labels: dict[tuple[str, str], list[Path]] = defaultdict(list)
    subject_of = {}
    for path in walk_files(folder):
        stem = strip_nifti_suffix(path.name)
        if source == "harp":
            if path.suffix.lower() == ".mnc":
                m = _HARP_IMAGE.match(path.name)
                if m:
                    images[m["key"]].append(path)
                    subject_of[m["key"]] = m["subject"]
            elif stem is not None and (m := _HARP_LABEL.match(stem)):
                labels[(m["key"], m["side"])].append(path)
        elif stem is not None:
            if m := _DRYAD_IMAGE.match(stem):
                images[m["subject"]].append(path)
                subject_of[m["subject"]] = m["subject"]
            elif m := _DRYAD_LABEL.match(stem):
                labels[(m["subject"], m["side"])].append(path)
    example = {"harp": "ADNI_002_S_0295_1.mnc with ADNI_002_S_0295_1_L.nii and _R.nii",
               "dryad": "s01/s01_t1w_standard_defaced_MNI.nii.gz with s01_hippolabels_t1w_standard_L_MNI.nii.gz"}
    if not images:
        problems.add(folder, f"no {source} image", example[source], f"pass the unpacked {source} download")
    found = []
    for key in sorted(images):
        if len(images[key]) > 1:
            problems.add(key, "several images: " + ", ".join(map(str, images[key])), "one image per scan",
                         "delete the duplicate copy")
            continue
        for side in ("L", "R"):
            paths = labels.get((key, side), [])
            if len(paths) != 1:
                problems.add(images[key][0], f"{len(paths)} {side} label files {[str(p) for p in paths]}",
                             f"one label file for side {side}", "unpack the label archive completely; remove copies")
                continue
            reader = _sitk_volume if source == "harp" else _nifti_volume
            found.append({"case": f"{source}_{key}_{side}", "subject": f"{source}_{subject_of[key]}", "side": side,
                          "image": images[key][0], "label": paths[0], "image_volume": reader(images[key][0]),
                          "label_volume": _nifti_volume(paths[0]),
                          "merge": "binary_or_offset" if source == "harp" else "subfields"})
    for (key, side), paths in sorted(labels.items()):
        if key not in images:
            problems.add(paths[0], "a label without its image", f"the image of {key}", "unpack the images too")
    return found


def build_hippocampus_stream(
    dataset_id: int,
    raw_root: str | Path,
    decathlon: str | Path | None = None,
    harp: str | Path | None = None,
    dryad: str | Path | None = None,
    name: str = "HippocampusStream",
    order: Sequence[str] = SOURCES,
    num_stages: int = 6,
    test_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Build the shifting-source hippocampus stream into ``<raw_root>/Dataset{id}_{name}``.

    Args:
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``).
        decathlon: unpacked ``Task04_Hippocampus``.
        harp: folder with the HarP MINC images and NIfTI side labels.
        dryad: folder with the Dryad ``sNN`` subject folders.
        name: dataset name after ``DatasetXXX_``.
        order: order in which the stream shifts through the given sources.
        num_stages: number of stages (folds of ``splits_final.json``).
        test_fraction: per source, fraction of subjects held out for ``imagesTs``.
        seed: seed of the held-out selection and of the stage assignment.
        overwrite: replace an existing dataset written from other inputs or options.
        progress: called as ``progress(done, total, case_id)`` while writing.

    Returns:
        The dataset folder.

    Raises:
        ValueError: bad options or a ConversionError listing every problem of the inputs.
    """
    given = {s: Path(p) for s, p in (("decathlon", decathlon), ("harp", harp), ("dryad", dryad)) if p is not None}
    if not given:
        raise ValueError("pass at least one source folder (--decathlon, --harp, --dryad)")
    order = [s for s in order if s in given]
    if sorted(order) != sorted(given) or len(set(order)) != len(order):
        raise ValueError(f"order must list each given source once, got {list(order)} for sources {sorted(given)}")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an integer >= 1, got {num_stages!r}")
    if 1 < num_stages < len(order):
        raise ValueError(f"num_stages must be 1 or at least the number of sources ({len(order)}: {order}), got "
                         f"{num_stages}; with fewer stages a source in the middle of the order gets no stage")
    target = dataset_folder(raw_root, dataset_id, name)
    problems = Problems()
    items: dict[str, list[dict[str, Any]]] = {}
    for source in order:
        items[source] = (_scan_decathlon(given[source], problems) if source == "decathlon"
                         else _scan_pairs(given[source], problems, source))
    problems.raise_if_any("hippocampus stream inputs")

    options = {"order": order, "num_stages": num_stages, "test_fraction": test_fraction, "seed": seed, "name": name,
               "sources": {s: str(p.resolve()) for s, p in given.items()}}
    inputs = [it[k].resolve() for s in order for it in items[s] for k in ("image", "label")]
    digest = fingerprint("hippocampus_stream", options, inputs, Path("/"))
    if up_to_date(target, digest, overwrite):
        return target
    check_id_unused(target)

    rng = np.random.default_rng(seed)
    weights = stage_weights(len(order), num_stages)
    stage_of_subject: dict[str, int] = {}
    test_stage_of_subject: dict[str, int] = {}
    test_subjects: set[str] = set()
    for i, source in enumerate(order):
        subjects = sorted({it["subject"] for it in items[source]})
        held = holdout_subjects(subjects, test_fraction, seed)
        test_subjects |= held
        train = [subjects[j] for j in rng.permutation(len(subjects)) if subjects[j] not in held]
        test = [subjects[j] for j in rng.permutation(len(subjects)) if subjects[j] in held]
        for stage, group in enumerate(deal_to_stages(train, weights[:, i])):
            stage_of_subject.update(dict.fromkeys(group, stage))
        for stage, group in enumerate(deal_to_stages(test, weights[:, i])):
            test_stage_of_subject.update(dict.fromkeys(group, stage))

    meta = DomainMetadata()
    for source in order:
        meta.add_domain(source, _DESCRIPTIONS[source], simulated=False, role="stream source")
    cases = []
    for source in order:
        for it in items[source]:
            subject = it["subject"]
            split = "test" if subject in test_subjects else "train"
            extra = {"source": source, "side": it["side"], "image": str(it["image"]), "label": str(it["label"])}
            extra["stage"] = stage_of_subject[subject] if split == "train" else test_stage_of_subject[subject]
            cases.append(CaseOut(it["case"], split, source, subject,
                                 _side_loader(it["image"], it["image_volume"], it["label_volume"], it["label"], it["merge"]),
                                 extra))

    folds, stages = [], []
    for stage in range(num_stages):
        subjects = sorted({c.subject for c in cases if c.split == "train" and c.extra["stage"] == stage})
        val = set(holdout_subjects(subjects, 0.2, seed + stage)) if len(subjects) >= 2 else set()
        folds.append({"train": sorted(c.case_id for c in cases if c.split == "train" and c.extra["stage"] == stage
                                      and c.subject not in val),
                      "val": sorted(c.case_id for c in cases if c.subject in val)})
        test = sorted(c.case_id for c in cases if c.split == "test" and c.extra["stage"] == stage)
        stages.append({"stage": stage, "weights": dict(zip(order, weights[stage].round(4).tolist())),
                       "train": folds[-1]["train"], "val": folds[-1]["val"], "test": test})
    spec = DatasetSpec(
        target=target, channel_names={"0": "T1"}, labels={"background": 0, "hippocampus": 1}, meta=meta,
        description=("Hippocampus shifting-source stream (ODEx, Gonzalez et al., DART 2022) built by "
                     "nnunet_ext.dataset_conversion.hippocampus_stream from " + ", ".join(order) +
                     "; fold k of splits_final.json = stage k; see stream.json"),
        reference=("Gonzalez C, et al. Task-agnostic continual hippocampus segmentation for smooth population "
                   "shifts. DART 2022. Sources: Simpson et al. 2019 (Decathlon); Boccardi et al. 2015 (HarP); "
                   "Kulaga-Yoskovitz et al. 2015 (Dryad)"),
        licence="Decathlon: CC-BY-SA 4.0; HarP: ADNI data use agreement; Dryad: CC0",
        converter="hippocampus_stream", options=options, digest=digest, splits=folds,
        record={"held_out_subjects": sorted(test_subjects)},
        extra_files={"stream.json": {"format_version": STREAM_FORMAT_VERSION, "scenario": "shifting_source",
                                     "order": order, "num_stages": num_stages, "stages": stages,
                                     "schedule": "weight of source i at stage k: max(0, 1 - |k (n-1)/(S-1) - i|)"}},
    )
    return write_dataset(spec, cases, overwrite=True, progress=progress)
