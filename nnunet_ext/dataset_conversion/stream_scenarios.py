"""The ODEx paper's two stream scenarios, built from any nnU-Net raw dataset with ``domains.json``.

Both write a ``stream.json`` (:mod:`nnunet_ext.streams`) whose stages list ``train``, ``val`` and
``test`` case ids; the method is never told a case's stage or domain. The *units* that are dealt to
stages are subjects (``domains.json``'s ``subject``; ``group_by="subject"``, the default) or single
cases (``group_by="case"``, only for datasets whose cases are slabs of one volume, such as the demo
datasets, where "subject" would put everything in one unit). A unit never straddles stages or the
train/val/test lists; with ``group_by="subject"`` a subject with both training and test cases in the
input dataset is refused. A subject imaged in several of the stream's domains (a travelling subject; every
subject of the simulated ``brain_scanners`` demo is imaged on every scanner) is used in one of them only:
such subjects are visited in a seeded random order and each goes to the domain, among its own, that has
the fewest subjects of its split so far (ties: the earlier domain in the stream order); its cases in the
other domains are left out, so no anatomy repeats across stages.

**Shifting source** (:func:`shifting_source_stream`): the sources (domains) in ``order`` are mixed with
weights that slide linearly from pure ``order[0]`` at stage 0 to pure ``order[-1]`` at the last stage
(:func:`nnunet_ext.dataset_conversion.splits.stage_weights`: weight of source ``i`` at stage
``k`` is ``max(0, 1 - |k (n - 1) / (S - 1) - i|)``). Per source, its training units are shuffled (seeded)
and cut into stage groups in proportion to the source's weights over the stages
(:func:`nnunet_ext.dataset_conversion.splits.deal_to_stages`); its test units are dealt the same way, so a
stage's test cases sample that stage's population. Within a stage a seeded ``val_fraction`` of units
becomes ``val``. The paper's exact proportions are in its appendix, which we do not have; this schedule is
ours. With ``stratify_by`` (a numeric case field such as the demo slabs' ``slab`` position), a source's
units are not shuffled but spread so that each stage samples the field's whole range. Only ``stream.json``
is written (into the dataset folder, and into ``$nnUNet_preprocessed/DatasetXXX_Name/`` if that exists);
no input file changes.

**Transformed** (:func:`transformed_stream`): one source domain, progressively modified with TorchIO as
in the paper ("intensity rescaling up to a contrast stretching of (0.1, 0.9) and affine transformations of
up to a (0.8, 1.2) scaling range, 15 degrees rotation and 5 mm translation"). Stage ``k`` of ``S`` has
strength ``s = k / (S - 1)`` (stage 0 is the original data, copied unchanged) and the transform

1. per channel, contrast stretching: the ``(10 s)``-th and ``(100 - 10 s)``-th percentiles of the voxels
   above the image minimum are mapped to the channel's original minimum and maximum, values outside are
   clipped (``tio.RescaleIntensity``). At ``s = 1`` the 0.1 and 0.9 quantiles are stretched to the full
   range: our reading of the paper's "(0.1, 0.9)".
2. ``tio.RandomAffine`` with scales ``(1 - 0.2 s, 1 + 0.2 s)``, rotation ``±15 s`` degrees and translation
   ``±5 s`` mm, one random draw per case, applied to the label with nearest-neighbour interpolation.
   A *thin* axis (fewer than :data:`THIN_AXIS_VOXELS` voxels, e.g. a slab of a few slices for nnU-Net's 2d
   configuration) is neither scaled nor translated and the rotation is about that axis only, so slabs are
   not rotated out of their own plane.

The training units are dealt evenly (seeded) to the stages and each unit's cases are written through its
stage's transform (``repeat_units=True``: every stage gets every training unit, each stage through its own
transform, so stages differ only in the transform; meant for one volume cut into slabs); **every** test
case of the source is written through **every** stage's transform, as
stage ``k``'s test set (test cases of one subject therefore appear, transformed differently, in every
stage's test list; they are never trained on). Everything goes into a **new** dataset
``DatasetXXX_Name`` (case ids ``s<k>_<case>``; domains ``<source>_stage<k>``, ``simulated: true`` from
stage 1 on, with the stage's transform recorded in ``domains.json`` and in the stage's ``transform``
extra); the input dataset is only read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nnunet_ext.dataset_conversion.common import check_id_unused, dataset_folder
from nnunet_ext.dataset_conversion.splits import deal_stratified, deal_to_stages, holdout_subjects, stage_weights
from nnunet_ext.domains import DomainMetadata, load_domains, save_domains
from nnunet_ext.streams import STREAM_FILENAME, Stage, Stream, write_stream
from nnunet_ext.utils.atomic import atomic_directory
from nnunet_ext.utils.image_io import read_image

logger = logging.getLogger(__name__)

GroupBy = Literal["subject", "case"]
#: axes with fewer voxels than this are "thin" (slabs): no scaling, translation or out-of-plane rotation
THIN_AXIS_VOXELS = 16
#: the paper's strongest transform (strength 1)
MAX_CONTRAST_QUANTILE = 0.1
MAX_SCALE = 0.2
MAX_DEGREES = 15.0
MAX_TRANSLATION_MM = 5.0
SHIFTING_SCHEDULE = "weight of source i at stage k: max(0, 1 - |k (n-1)/(S-1) - i|)"


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass an nnU-Net raw dataset folder (DatasetXXX_Name)")
    return json.loads(path.read_text(encoding="utf-8"))


def _listed(folder: Path, sub: str, file_ending: str) -> list[str]:
    suffix = f"_0000{file_ending}"
    return sorted(p.name[: -len(suffix)] for p in (folder / sub).glob(f"*{suffix}")) if (folder / sub).is_dir() else []


def _units(meta: DomainMetadata, domains: Sequence[str], group_by: GroupBy, source: str, seed: int = 0
           ) -> dict[str, dict[str, dict[str, list[str]]]]:
    """domain -> split -> unit -> sorted cases; checks that units do not straddle splits, and keeps a unit found
    in several ``domains`` in one of them (see the module docstring)."""
    if group_by not in ("subject", "case"):
        raise ValueError(f"group_by must be 'subject' or 'case', got {group_by!r}")
    places: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # unit -> domain -> cases
    split_of: dict[str, tuple[str, str]] = {}
    for case, m in sorted(meta.cases.items()):
        if m["domain"] not in domains:
            continue
        unit = (m.get("subject") or case) if group_by == "subject" else case
        place = (m["domain"], m["split"])
        first = split_of.setdefault(unit, place)
        if first[1] != place[1]:
            raise ValueError(
                f"{source}: subject {unit!r} has cases in {first} and {place} (domain, split); a subject must "
                f"not straddle the train/test split. Fix 'subject' in domains.json, or pass group_by='case' "
                f"(--group-by case) if the cases are slabs of one volume, as in the demo datasets")
        places[unit][m["domain"]].append(case)
    kept = {u: next(iter(p)) for u, p in places.items() if len(p) == 1}
    count = {(d, split_of[u][1]): 0 for u in places for d in domains}
    for u, d in kept.items():
        count[(d, split_of[u][1])] += 1
    several = sorted(u for u, p in places.items() if len(p) > 1)
    for i in np.random.default_rng(seed).permutation(len(several)):
        u = several[i]
        d = min(places[u], key=lambda d: (count[(d, split_of[u][1])], domains.index(d)))
        kept[u] = d
        count[(d, split_of[u][1])] += 1
    out: dict[str, dict[str, dict[str, list[str]]]] = {d: {"train": defaultdict(list), "test": defaultdict(list)}
                                                       for d in domains}
    for u in places:  # in the order of each unit's first case, as the stages are built from it
        out[kept[u]][split_of[u][1]][u] = places[u][kept[u]]
    return out


def _shuffled(units: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    names = sorted(units)
    return [names[i] for i in rng.permutation(len(names))]


def _deal(units: dict[str, list[str]], share: Sequence[float], rng: np.random.Generator, meta: DomainMetadata,
          stratify_by: str | None, source: str) -> list[list[str]]:
    """Deal ``units`` (unit -> cases) to stages: shuffled and cut, or spread over ``stratify_by`` (a number
    every case has in ``domains.json``; a unit's value is the mean over its cases)."""
    if stratify_by is None:
        return deal_to_stages(_shuffled(units, rng), share)
    values = {}
    for unit, cases in units.items():
        found = [meta.cases[c].get(stratify_by) for c in cases]
        bad = [c for c, v in zip(cases, found)
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise ValueError(f"{source}: stratify_by={stratify_by!r} (--stratify-by) needs a finite number for every "
                             f"case, but case {bad[0]!r} has {meta.cases[bad[0]].get(stratify_by)!r}; set it in "
                             f"domains.json or choose another field")
        values[unit] = float(np.mean(found))
    ordered = sorted(units, key=lambda u: (values[u], u))
    return deal_stratified(ordered, share, int(rng.integers(2**31)))


def _val_split(units: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    return holdout_subjects(units, val_fraction, seed) if len(units) >= 2 else set()


def _copy_to_preprocessed(stream: Stream, dataset_name: str, preprocessed_root: str | os.PathLike | None) -> None:
    if preprocessed_root:
        folder = Path(preprocessed_root) / dataset_name
        if folder.is_dir():
            write_stream(stream, folder)


def _refuse_existing(folder: Path, overwrite: bool) -> None:
    if (folder / STREAM_FILENAME).exists() and not overwrite:
        raise FileExistsError(f"{folder / STREAM_FILENAME} already exists; pass overwrite=True (--overwrite) to "
                              f"replace it")


def shifting_source_stream(
    folder: str | os.PathLike,
    order: Sequence[str] | None = None,
    num_stages: int = 4,
    val_fraction: float = 0.2,
    seed: int = 0,
    group_by: GroupBy = "subject",
    overwrite: bool = False,
    preprocessed_root: str | os.PathLike | None = None,
    stratify_by: str | None = None,
) -> Stream:
    """Build and write the shifting-source stream of a raw dataset (see the module docstring).

    Args:
        folder: the raw dataset folder (``dataset.json``, ``domains.json``, ``imagesTr``, ``imagesTs``).
        order: source domains in the order the stream shifts through them; default every non-simulated
            domain with training cases, in the order of ``domains.json``.
        num_stages: number of stages (1, or at least the number of sources).
        val_fraction: per stage, fraction of units held out as ``val``.
        seed: seed of the stage and validation assignment.
        group_by: unit dealt to stages: ``"subject"`` or ``"case"``.
        overwrite: replace an existing ``stream.json``.
        preprocessed_root: ``$nnUNet_preprocessed``; the stream is copied into its dataset folder if that exists.
        stratify_by: a numeric ``domains.json`` case field (e.g. ``"slab"``); per source, each stage's units
            are spread over its range (:func:`~nnunet_ext.dataset_conversion.splits.deal_stratified`) instead
            of drawn at random, so stages do not differ in it by chance. Default: random dealing.

    Returns:
        The written stream.

    Raises:
        ValueError: bad arguments, a subject straddling splits, a stage without training or test cases.
        FileNotFoundError: missing ``dataset.json`` or ``domains.json``.
        FileExistsError: ``stream.json`` exists and ``overwrite`` is False.
    """
    folder = Path(folder)
    file_ending = _dataset_json(folder).get("file_ending", ".nii.gz")
    meta = load_domains(folder)
    _check_int(num_stages, "num_stages", 1)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if order is None:
        order = [d for d, info in meta.domains.items() if not info.get("simulated") and meta.cases_of(d, "train")]
    order = list(order)
    unknown = [d for d in order if not meta.cases_of(d, "train")]
    if not order or unknown or len(set(order)) != len(order):
        raise ValueError(f"order must name distinct domains with training cases, got {order} (without training "
                         f"cases or unknown: {unknown}); domains here: {list(meta.domains)}")
    if 1 < num_stages < len(order):
        raise ValueError(f"num_stages must be 1 or at least the number of sources ({len(order)}: {order}), got "
                         f"{num_stages}; with fewer stages a source in the middle of the order gets no stage")
    _refuse_existing(folder, overwrite)
    units = _units(meta, order, group_by, str(folder / "domains.json"), seed)
    weights = stage_weights(len(order), num_stages)
    rng = np.random.default_rng(seed)
    train_groups: list[list[str]] = [[] for _ in range(num_stages)]
    test_groups: list[list[str]] = [[] for _ in range(num_stages)]
    case_lists: dict[str, list[str]] = {}
    for i, domain in enumerate(order):
        for split, groups in (("train", train_groups), ("test", test_groups)):
            case_lists.update(units[domain][split])
            if units[domain][split]:
                dealt = _deal(units[domain][split], weights[:, i], rng, meta, stratify_by, str(folder / "domains.json"))
                for stage, group in enumerate(dealt):
                    groups[stage] += group
    stages = []
    for k in range(num_stages):
        val = _val_split(train_groups[k], val_fraction, seed + k)
        cases = {key: sorted(c for u in group for c in case_lists[u])
                 for key, group in (("train", [u for u in train_groups[k] if u not in val]), ("val", sorted(val)),
                                    ("test", test_groups[k]))}
        for key in ("train", "test"):
            if not cases[key]:
                raise ValueError(f"{folder.name}: stage {k} of {num_stages} would get no {key} cases; use fewer "
                                 f"stages or a dataset with more {key} subjects per source")
        weight = dict(zip(order, weights[k].round(4).tolist()))
        stages.append(Stage(k, tuple(cases["train"]), tuple(cases["val"]), tuple(cases["test"]), {"weights": weight}))
    stream = Stream(tuple(stages), "shifting_source",
                    {"order": order, "schedule": SHIFTING_SCHEDULE, "group_by": group_by, "stratify_by": stratify_by,
                     "val_fraction": val_fraction, "seed": seed}, folder / STREAM_FILENAME)
    stream.check_cases(_listed(folder, "imagesTr", file_ending), _listed(folder, "imagesTs", file_ending))
    write_stream(stream, folder)
    _copy_to_preprocessed(stream, folder.name, preprocessed_root)
    return stream


def stage_transform(strength: float) -> dict[str, Any]:
    """JSON record of the transformed scenario's transform at ``strength`` in [0, 1] (see the module docstring).

    Raises:
        ValueError: ``strength`` outside [0, 1].
    """
    if not (isinstance(strength, (int, float)) and 0 <= strength <= 1):
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if strength == 0:
        return {"strength": 0.0, "steps": []}
    q = 100 * MAX_CONTRAST_QUANTILE * strength
    return {"strength": float(strength), "steps": [
        {"name": "RescaleIntensity", "percentiles": [q, 100 - q], "out_min_max": "the channel's own (min, max)",
         "masking": "voxels above the channel minimum", "per_channel": True},
        {"name": "RandomAffine", "scales": [1 - MAX_SCALE * strength, 1 + MAX_SCALE * strength],
         "degrees": MAX_DEGREES * strength, "translation_mm": MAX_TRANSLATION_MM * strength,
         "thin_axes": f"axes with fewer than {THIN_AXIS_VOXELS} voxels: no scaling or translation, rotation "
                      f"about them only", "label_interpolation": "nearest"},
    ]}


def _ranges(value: float, base: float, thin: list[bool], about_thin: bool) -> tuple[float, ...]:
    """TorchIO 6-tuple ``(a_min, a_max, ...)`` per axis: ``base ± value``, or ``base`` where excluded."""
    out: list[float] = []
    for is_thin in thin:
        active = (is_thin if about_thin else not is_thin) if any(thin) else True
        out += [base - value, base + value] if active else [base, base]
    return tuple(out)


def apply_stage_transform(channels: Sequence[Any], label: Any, record: dict[str, Any], seed: int
                          ) -> tuple[list[Any], Any]:
    """Apply a :func:`stage_transform` record to one case (SimpleITK images on one grid).

    Args:
        channels: the case's image channels.
        label: its label map.
        record: a :func:`stage_transform` record.
        seed: seed of the case's random affine (``torch.manual_seed`` inside ``fork_rng``).

    Returns:
        The transformed channels (float32) and label (uint8) on the input grid.
    """
    import SimpleITK as sitk
    import torch
    import torchio as tio

    if not record["steps"]:
        return list(channels), label
    intensity, affine_step = record["steps"]
    images = {}
    for c, image in enumerate(channels):
        data, affine = tio.io.sitk_to_nib(sitk.Cast(image, sitk.sitkFloat32))
        images[f"ch{c}"] = tio.ScalarImage(tensor=torch.as_tensor(data), affine=affine)
    data, affine = tio.io.sitk_to_nib(sitk.Cast(label, sitk.sitkUInt8))
    subject = tio.Subject(label=tio.LabelMap(tensor=torch.as_tensor(data), affine=affine), **images)
    steps = []
    for name, image in images.items():
        lo, hi = float(image.data.min()), float(image.data.max())
        steps.append(tio.RescaleIntensity(out_min_max=(lo, hi), percentiles=tuple(intensity["percentiles"]),
                                          masking_method=lambda x: x > x.min(), include=[name]))
    thin = [n < THIN_AXIS_VOXELS for n in subject.spatial_shape]
    scale = (affine_step["scales"][1] - affine_step["scales"][0]) / 2
    steps.append(tio.RandomAffine(scales=_ranges(scale, 1.0, thin, False),
                                  degrees=_ranges(affine_step["degrees"], 0.0, thin, True),
                                  translation=_ranges(affine_step["translation_mm"], 0.0, thin, False),
                                  default_pad_value="minimum"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = tio.Compose(steps)(subject)
    result = []
    for name, image in zip(images, channels):
        converted = tio.io.nib_to_sitk(out[name].data.float(), out[name].affine)
        converted.CopyInformation(image)
        result.append(converted)
    new_label = sitk.Cast(tio.io.nib_to_sitk(out["label"].data, out["label"].affine), sitk.sitkUInt8)
    new_label.CopyInformation(label)
    return result, new_label


def _case_seed(seed: int, stage: int, index: int) -> int:
    return (seed * 1000 + stage) * 100_000 + index


def transformed_stream(
    folder: str | os.PathLike,
    dataset_id: int,
    raw_root: str | os.PathLike | None = None,
    name: str | None = None,
    domain: str | None = None,
    num_stages: int = 4,
    val_fraction: float = 0.2,
    seed: int = 0,
    group_by: GroupBy = "subject",
    overwrite: bool = False,
    preprocessed_root: str | os.PathLike | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    stratify_by: str | None = None,
    repeat_units: bool = False,
    test_units: int | None = None,
) -> Path:
    """Write the transformed-scenario stream of one source domain as a new raw dataset.

    Args:
        folder: the input raw dataset folder (only read).
        dataset_id: id of the new dataset, 1..999.
        raw_root: where to write the new dataset; default the input's parent folder.
        name: new dataset name after ``DatasetXXX_``; default ``<input name>Transformed``.
        domain: the source domain; default the only non-simulated domain with training cases.
        num_stages: number of stages (>= 1).
        val_fraction: per stage, fraction of training units held out as ``val``.
        seed: seed of the stage assignment, validation split and random affines.
        group_by: unit dealt to stages: ``"subject"`` or ``"case"``.
        overwrite: replace an existing dataset folder of that name.
        preprocessed_root: ``$nnUNet_preprocessed`` (the stream is copied there if the dataset is preprocessed).
        progress: called as ``progress(done, total, case_id)`` while writing.
        stratify_by: a numeric ``domains.json`` case field; each stage's units are spread over its range
            (see :func:`shifting_source_stream`). Default: random dealing.
        repeat_units: every stage gets **every** training unit, through its own stage transform (one seeded
            ``val`` set for all stages), instead of a share of them. For a source that is one volume cut into
            slabs: dealt slabs would make the stages differ in anatomy as well as in the transform.
        test_units: use only this many of the domain's test units (a seeded choice; every stage gets the same
            ones through its own transform). Default: all. Evaluation predicts every test case after every
            stage, so this sets the evaluation cost.

    Returns:
        The new dataset folder.

    Raises:
        ValueError: bad arguments, no or several candidate domains, a subject straddling splits, missing
            image or label files, a stage without training cases.
        FileExistsError: the dataset exists and ``overwrite`` is False, or another dataset uses the id.
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = Path(folder)
    if repeat_units and stratify_by is not None:
        raise ValueError("stratify_by (--stratify-by) has no effect with repeat_units (--repeat-units): every stage "
                         "gets every unit; pass one of them")
    dj = _dataset_json(folder)
    meta = load_domains(folder)
    _check_int(num_stages, "num_stages", 1)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if domain is None:
        candidates = [d for d, i in meta.domains.items() if not i.get("simulated") and meta.cases_of(d, "train")]
        if len(candidates) != 1:
            raise ValueError(f"{folder.name} has {len(candidates)} real domains with training cases ({candidates}); "
                             f"pass domain= (--domain) to choose the source")
        domain = candidates[0]
    if not meta.cases_of(domain, "train"):
        raise ValueError(f"domain {domain!r} has no training cases in {folder.name}; domains: {list(meta.domains)}")
    base = folder.name.split("_", 1)[1] if folder.name.startswith("Dataset") and "_" in folder.name else folder.name
    target = dataset_folder(raw_root if raw_root is not None else folder.parent, dataset_id, name or f"{base}Transformed")
    if target.resolve() == folder.resolve():
        raise ValueError(f"the new dataset {target} would replace the input; pass another id or name")
    check_id_unused(target)
    units = _units(meta, [domain], group_by, str(folder / "domains.json"))[domain]
    if not units["test"]:
        raise ValueError(f"domain {domain!r} has no test cases in {folder.name}; every stage needs test cases")
    if test_units is not None:
        _check_int(test_units, "test_units", 1)
        if test_units < len(units["test"]):
            chosen = np.random.default_rng([seed, 1]).choice(sorted(units["test"]), test_units, replace=False)
            units["test"] = {u: units["test"][u] for u in sorted(chosen)}
    file_ending = dj.get("file_ending", ".nii.gz")
    num_channels = len(dj.get("channel_names", {"0": ""}))

    def files(case: str, split: str) -> tuple[list[Path], Path]:
        suffix = "Tr" if split == "train" else "Ts"
        return ([folder / f"images{suffix}" / f"{case}_{c:04d}{file_ending}" for c in range(num_channels)],
                folder / f"labels{suffix}" / f"{case}{file_ending}")

    wanted = [(c, s) for s in ("train", "test") for cases in units[s].values() for c in cases]
    missing = [str(p) for c, s in wanted for p in (*files(c, s)[0], files(c, s)[1]) if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} input file(s) missing, e.g. {missing[:3]}; the transformed scenario needs "
                         f"every image and label (labelsTs too) of domain {domain!r}")

    rng = np.random.default_rng(seed)
    shared_val: set[str] | None = None  # repeat_units: one val set for every stage
    if repeat_units:
        groups = [sorted(units["train"]) for _ in range(num_stages)]
        shared_val = _val_split(groups[0], val_fraction, seed)
    else:
        groups = _deal(units["train"], np.ones(num_stages), rng, meta, stratify_by, str(folder / "domains.json"))
    if not all(groups):
        raise ValueError(f"{len(units['train'])} training units cannot fill {num_stages} stages; use fewer stages")
    records = [stage_transform(k / (num_stages - 1) if num_stages > 1 else 0.0) for k in range(num_stages)]
    test_cases = sorted(c for cases in units["test"].values() for c in cases)
    jobs = []  # (stage, split, case, unit/subject)
    for k, group in enumerate(groups):
        jobs += [(k, "train", c, u) for u in group for c in units["train"][u]]
        jobs += [(k, "test", c, u) for u, cases in units["test"].items() for c in cases]

    new_meta = DomainMetadata()
    for k, record in enumerate(records):
        new_meta.add_domain(f"{domain}_stage{k}", f"{domain} through the transformed scenario's stage {k} transform "
                            f"(strength {record['strength']:.3g}; TorchIO)", simulated=k > 0,
                            derived_from=domain, transform=record)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        for index, (k, split, case, unit) in enumerate(jobs):
            images, label = files(case, split)
            new_case = f"s{k}_{case}"
            suffix = "Tr" if split == "train" else "Ts"
            case_seed = _case_seed(seed, k, index)
            if records[k]["steps"]:
                channels, new_label = apply_stage_transform(
                    [read_image(p) for p in images], read_image(label), records[k], case_seed)
                for c, image in enumerate(channels):
                    sitk.WriteImage(image, str(tmp / f"images{suffix}" / f"{new_case}_{c:04d}{file_ending}"),
                                    useCompression=True)
                sitk.WriteImage(new_label, str(tmp / f"labels{suffix}" / f"{new_case}{file_ending}"),
                                useCompression=True)
            else:
                for p in (*images, label):
                    read_image(p)  # copied unchanged, but a truncated input must not pass unnoticed
                for c, p in enumerate(images):
                    shutil.copyfile(p, tmp / f"images{suffix}" / f"{new_case}_{c:04d}{file_ending}")
                shutil.copyfile(label, tmp / f"labels{suffix}" / f"{new_case}{file_ending}")
            subject = meta.cases[case].get("subject", case)
            new_meta.add_case(new_case, f"{domain}_stage{k}", split, subject=subject, source_case=case, stage=k,
                              transform_seed=case_seed if records[k]["steps"] else None)
            if progress is not None:
                progress(index + 1, len(jobs), new_case)
        stages = []
        for k, group in enumerate(groups):
            val = shared_val if shared_val is not None else _val_split(group, val_fraction, seed + k)
            stages.append(Stage(
                k,
                tuple(sorted(f"s{k}_{c}" for u in group if u not in val for c in units["train"][u])),
                tuple(sorted(f"s{k}_{c}" for u in sorted(val) for c in units["train"][u])),
                tuple(f"s{k}_{c}" for c in test_cases),
                {"transform": records[k]},
            ))
        stream = Stream(tuple(stages), "transformed",
                        {"dataset": target.name, "source_dataset": folder.name, "source_domain": domain,
                         "group_by": group_by, "stratify_by": stratify_by, "repeat_units": repeat_units,
                         "test_units": test_units, "val_fraction": val_fraction, "seed": seed},
                        target / STREAM_FILENAME)
        num_training = sum(split == "train" for _, split, _, _ in jobs)
        generate_dataset_json(
            str(tmp), channel_names=dict(dj.get("channel_names", {"0": "image"})), labels=dict(dj["labels"]),
            num_training_cases=num_training, file_ending=file_ending, dataset_name=target.name,
            description=(f"Transformed stream (ODEx scenario) of domain {domain} of {folder.name}, built by "
                         f"nnunet_ext.dataset_conversion.stream_scenarios: stage k = the source through a TorchIO "
                         f"transform of strength k/(S-1); see stream.json and domains.json"),
            reference=dj.get("reference", ""), license=dj.get("licence", dj.get("license", "")),
            converted_by="nnunet_ext.dataset_conversion.stream_scenarios", numTest=len(jobs) - num_training,
        )
        save_domains(new_meta, tmp)
        write_stream(stream, tmp)
    logger.info("wrote %s: %d stages, %d cases", target, num_stages, len(jobs))
    _copy_to_preprocessed(Stream(stream.stages, stream.scenario, stream.extra), target.name, preprocessed_root)
    return target
