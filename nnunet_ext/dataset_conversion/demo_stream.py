"""Small embedded-data streams for the ODEx benchmark and tests, built offline from real MRI in packages.

Both are sized for a CPU: 3 mm isotropic voxels, axial slabs of 3 slices (about 66 x 78 in-plane for
MNI152, 60 x 72 for Colin27; nnU-Net's ``2d`` configuration), 4 stages (``num_stages``) with a handful of
cases each.
Cases are slabs cut as in :mod:`nnunet_ext.dataset_conversion.demo_data` (same resampling, same slab
placement, :data:`NUM_TEST_SLABS` held-out slabs spread through the brain per source). Every source is a
**single brain**, so streams are built with ``group_by="case"``: slabs, not subjects, are the units, and
train and test slabs of one stage come from the same brain (the in-stage test measures generalisation to
other slices, not to other subjects). Slabs at different heights show different anatomy, and one stage
holds only a few of them; dealt at random, stages would differ in anatomy as much as in the shift under
study. So ``transformed`` gives every stage every training slab (``repeat_units``: stages differ only in
the transform) and ``shifting_source`` spreads each stage's slabs of a source over the brain's height
(``stratify_by="slab"``).

``transformed`` (``DatasetXXX_DemoStreamTransformed``)
    The MNI152 2009a grey/white-matter task (labels as in ``mni_tissue``), run through
    :func:`~nnunet_ext.dataset_conversion.stream_scenarios.transformed_stream`: stage ``k`` of ``S`` = the
    slabs through TorchIO contrast stretching and a random affine of strength ``k / (S - 1)``.
``shifting_source`` (``DatasetXXX_DemoStreamShiftingSource``)
    Two real sources with one label set, brain mask (0 background, 1 brain): the MNI152 2009a T1 (brain
    only; brain = largest 6-connected component of ``T1 > 0``) and the Colin27 T1 *head* (brain = largest
    component of ``ch2bet > 0``, as ``colin_skullstrip``). Both masks are "non-zero voxels of the
    distributed brain-extracted image", but the two brain extractions were made by different tools and
    the MNI image has no skull while Colin27's has: the source shift is real (skull, contrast, a
    population average against one subject). Mixed by
    :func:`~nnunet_ext.dataset_conversion.stream_scenarios.shifting_source_stream` from pure MNI152 (stage 0)
    to pure Colin27 (the last stage). Needs Debian's ``mricron-data``.

>>> build_demo_stream("transformed", 950, "/tmp/nnUNet_raw")  # doctest: +SKIP
PosixPath('/tmp/nnUNet_raw/Dataset950_DemoStreamTransformed')
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import SimpleITK as sitk

from nnunet_ext.dataset_conversion import demo_data
from nnunet_ext.dataset_conversion.common import check_id_unused, dataset_folder
from nnunet_ext.dataset_conversion.stream_scenarios import shifting_source_stream, transformed_stream
from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.streams import read_stream, write_stream
from nnunet_ext.utils.atomic import atomic_directory
from nnunet_ext.utils.image_io import read_image

Scenario = Literal["transformed", "shifting_source"]
SPACING_MM = 3.0
SLAB_SLICES = 3
NUM_TEST_SLABS = 4
NUM_STAGES = 4
NAMES: dict[str, str] = {"transformed": "DemoStreamTransformed", "shifting_source": "DemoStreamShiftingSource"}


def _mni_brain(files: dict[str, Path], spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """MNI152 T1 and its brain mask (largest component of ``T1 > 0``, partial volume > 0.5)."""
    t1 = read_image(files["t1"], sitk.sitkFloat32)
    brain = sitk.RelabelComponent(sitk.ConnectedComponent(t1 > 0), sortByObjectSize=True) == 1
    image = demo_data._downsample(t1, spacing_mm)
    fraction = sitk.GetArrayFromImage(demo_data._downsample(brain, spacing_mm))
    return image, demo_data._label_like(fraction > 0.5, image)


def _write_slabs(tmp: Path, meta: DomainMetadata, domain: str, image: sitk.Image, label: sitk.Image) -> int:
    """Write one source's slabs (train and held-out test) into ``tmp``; returns the number of training slabs."""
    slabs = demo_data._slab_ranges(sitk.GetArrayViewFromImage(label), SLAB_SLICES)
    test = set(demo_data._test_positions(len(slabs), NUM_TEST_SLABS))
    for position, (number, z0, z1) in enumerate(slabs):
        split = "test" if position in test else "train"
        suffix = "Ts" if split == "test" else "Tr"
        case = f"{domain}_slab{number:02d}"
        demo_data._write_nifti(image[:, :, z0:z1], tmp / f"images{suffix}" / f"{case}_0000.nii.gz")
        demo_data._write_nifti(label[:, :, z0:z1], tmp / f"labels{suffix}" / f"{case}.nii.gz")
        meta.add_case(case, domain, split, subject=domain, slab=number, slices=[z0, z1])
    return len(slabs) - len(test)


def _slab_dataset(target: Path, sources: list[tuple[str, str, Callable[[], tuple[sitk.Image, sitk.Image]]]],
                  labels: dict[str, int], description: str, reference: str, licence: str) -> DomainMetadata:
    """Fill the (temporary) folder ``target`` with the slabs of every ``(domain, description, load)`` source."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (target / sub).mkdir(parents=True)
    meta = DomainMetadata()
    num_training = 0
    for domain, domain_description, load in sources:
        meta.add_domain(domain, domain_description, simulated=False, spacing_mm=SPACING_MM, role="stream source")
        num_training += _write_slabs(target, meta, domain, *load())
    generate_dataset_json(str(target), channel_names={"0": "T1"}, labels=labels, num_training_cases=num_training,
                          file_ending=".nii.gz", dataset_name=target.name, description=description,
                          reference=reference, license=licence, converted_by="nnunet_ext.dataset_conversion.demo_stream",
                          numTest=len(meta.cases) - num_training)
    save_domains(meta, target)
    return meta


def build_demo_stream(
    scenario: Scenario,
    dataset_id: int,
    raw_root: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    preprocessed_root: str | Path | None = None,
    num_stages: int = NUM_STAGES,
) -> Path:
    """Write a demo stream dataset (see the module docstring) with its ``stream.json``.

    Args:
        scenario: ``"transformed"`` or ``"shifting_source"``.
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: ``$nnUNet_raw``.
        seed: seed of the stage assignment (and of the random affines of ``transformed``).
        overwrite: replace an existing dataset folder of the same name.
        preprocessed_root: ``$nnUNet_preprocessed``; the stream is copied there if the dataset is preprocessed.
        num_stages: number of stages (default 4; the ODEx paper's streams have 5). In ``shifting_source`` the
            stages share the slabs, so more stages means fewer training slabs per stage.

    Returns:
        The dataset folder.

    Raises:
        ValueError: unknown ``scenario`` or bad ``dataset_id``/``seed``.
        RuntimeError: the source data is not installed (says how to install it).
        FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses the id.
    """
    if scenario not in NAMES:
        raise ValueError(f"scenario must be one of {sorted(NAMES)}, got {scenario!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    raw_root = Path(raw_root)
    target = dataset_folder(raw_root, dataset_id, NAMES[scenario])
    check_id_unused(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    mni = demo_data._SPECS["mni_tissue"]
    if scenario == "transformed":
        files = demo_data._mni_files()
        raw_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".demo_stream_source.", dir=raw_root))
        try:
            source = scratch / "DemoMNITissueSlabs"
            _slab_dataset(source, [("mni152", mni.domain_description,
                                    lambda: demo_data._load_mni_tissue(files, SPACING_MM))],
                          dict(mni.labels), mni.description, mni.reference, mni.licence)
            return transformed_stream(source, dataset_id, raw_root, name=NAMES[scenario], domain="mni152",
                                      num_stages=num_stages, seed=seed, group_by="case", overwrite=overwrite,
                                      preprocessed_root=preprocessed_root, repeat_units=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    colin = demo_data._SPECS["colin_skullstrip"]
    mni_files, colin_files = demo_data._mni_files(), demo_data._colin_files()
    with atomic_directory(target, overwrite=overwrite) as tmp:
        _slab_dataset(
            tmp,
            [("mni152", "MNI ICBM 2009a T1 template, brain only; brain = largest component of T1 > 0",
              lambda: _mni_brain(mni_files, SPACING_MM)),
             ("colin27", "Colin27 T1 head; brain = largest component of ch2bet > 0",
              lambda: demo_data._load_colin_skullstrip(colin_files, SPACING_MM))],
            {"background": 0, "brain": 1},
            "Demo shifting-source stream (ODEx scenario) built by nnunet_ext.dataset_conversion.demo_stream: brain "
            "masks of axial slabs of the MNI152 2009a T1 (brain only) and the Colin27 T1 head, mixed from pure "
            f"MNI152 to pure Colin27 over {num_stages} stages; see stream.json",
            f"{mni.reference} {colin.reference}", f"{mni.licence} {colin.licence}",
        )
        shifting_source_stream(tmp, ["mni152", "colin27"], num_stages, seed=seed, group_by="case", stratify_by="slab")
    if preprocessed_root is not None and (Path(preprocessed_root) / target.name).is_dir():
        write_stream(read_stream(target), Path(preprocessed_root) / target.name)
    return target
