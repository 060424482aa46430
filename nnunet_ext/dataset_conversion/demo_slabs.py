"""Writing the slab demo datasets: one real brain cut into axial slabs, plus simulated-scanner test domains.

Each dataset is written as ``$nnUNet_raw/DatasetXXX_Name/`` with ``dataset.json``, ``imagesTr``,
``labelsTr``, ``imagesTs``, ``labelsTs`` and ``domains.json`` (see :mod:`nnunet_ext.domains`):

``mni_tissue`` (``DatasetXXX_DemoMNITissue``), domain ``mni152``
    Image: the MNI ICBM 2009a nonlinear symmetric T1 template (brain only) that nilearn ships in
    ``nilearn/datasets/data/``. Labels from the grey- and white-matter probability maps of the same
    template, computed *after* resampling the maps to the target grid so labels and image agree:
    ``label = 1 + argmax(p_gm, p_wm)`` where ``max(p_gm, p_wm) > 0.5``, else ``0``
    (0 background incl. CSF, 1 grey matter, 2 white matter).
``colin_skullstrip`` (``DatasetXXX_DemoColinSkullStrip``), domain ``colin27``
    Image: the Colin27 T1 head ``ch2.nii.gz`` from Debian's ``mricron-data``. Label: brain = the largest
    6-connected component of ``ch2bet.nii.gz > 0`` (resampled to the head's grid with nearest neighbour
    if the grids differ), resampled like the image and thresholded at a partial-volume fraction of 0.5
    (0 background, 1 brain).

Preprocessing (:mod:`nnunet_ext.dataset_conversion.demo_sources`): every volume is smoothed with a
Gaussian of ``sigma = (new - old spacing) / 2`` mm per axis (anti-aliasing) and resampled linearly with
SimpleITK onto an isotropic grid covering the same field of view (origin and direction kept, so the written
NIfTIs are in the source's world coordinates). Images are stored as float32 in the source's intensity units,
labels as uint8.

Cases are axial slabs. The resampled volume is cut along its third voxel axis (inferior -> superior) into
slabs of ``slab_slices`` contiguous slices placed to cover the foreground; slabs without foreground are
dropped. ``num_test_slabs`` slabs spread evenly through the brain (never the first or last) are held out
for ``imagesTs``; the rest go to ``imagesTr``. Case ids name the slab's position, e.g. ``mni152_slab03``;
``domains.json`` also records ``slab`` and ``slices`` (first and end slice in the resampled volume).
**Train and test slabs come from the same brain** (``subject`` is the same for every case), so the
in-domain test set measures generalisation to other slices of one subject, not to other subjects.

Shifted test domains. For each severity (``mild``, ``moderate``, ``severe``; see
:data:`~nnunet_ext.dataset_conversion.demo_artefacts.SEVERITIES`) the whole resampled image volume goes
through one TorchIO "simulated scanner" (:func:`~nnunet_ext.dataset_conversion.demo_artefacts.simulate_scanner`),
then the held-out test slabs are cut from it and written as domain ``<domain>_sim_<severity>``
(``simulated: true``, ``derived_from: <domain>``; the exact transform is stored under the domain's
``transform``). Bias field, ghosting and motion are volume-level effects, hence applied before cutting.
Labels are unchanged. The same seed gives byte-identical files; the real (source-domain) cases do not
depend on the seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_ext.dataset_conversion import demo_sources
from nnunet_ext.dataset_conversion.common import check_id_unused
from nnunet_ext.dataset_conversion.demo_artefacts import SEVERITIES, simulate_scanner, transform_record
from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.utils.atomic import atomic_directory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoProfile:
    """Resolution and case layout of a slab demo dataset.

    Attributes:
        spacing_mm: isotropic voxel spacing of the written images, in mm.
        slab_slices: contiguous axial slices per case.
        num_test_slabs: slabs held out for ``imagesTs`` (and copied into every shifted domain).
    """

    spacing_mm: float
    slab_slices: int
    num_test_slabs: int


#: ``demo``: fast nnU-Net 2d iterations on CPU; ``tiny``: end-to-end tests (in-plane <= 64 x 64 voxels).
PROFILES: dict[str, DemoProfile] = {
    "demo": DemoProfile(spacing_mm=2.0, slab_slices=6, num_test_slabs=3),
    "tiny": DemoProfile(spacing_mm=4.0, slab_slices=5, num_test_slabs=2),
}


@dataclass(frozen=True)
class SlabSpec:
    """What distinguishes the slab demo datasets; the build itself is shared."""

    name: str
    domain: str
    domain_description: str
    labels: dict[str, int]
    description: str
    reference: str
    licence: str
    source_files: Callable[[], dict[str, Path]]
    load: Callable[[dict[str, Path], float], tuple[sitk.Image, sitk.Image]]


SLAB_SPECS: dict[str, SlabSpec] = {
    "mni_tissue": SlabSpec(
        name="mni_tissue",
        domain="mni152",
        domain_description="MNI ICBM 2009a nonlinear symmetric T1 template, brain only (real MRI average)",
        labels={"background": 0, "grey matter": 1, "white matter": 2},
        description=(
            "Demo brain-tissue segmentation built by nnunet_ext.dataset_conversion.demo_data from the MNI "
            "ICBM 2009a nonlinear symmetric T1 template and its grey/white-matter probability maps, as shipped "
            "by nilearn (nilearn/datasets/data). Label = 1 + argmax(p_gm, p_wm) where max(p_gm, p_wm) > 0.5, "
            "else 0. Cases are axial slabs of one template brain: train and test slabs come from the same "
            "brain. Domains mni152_sim_* are the test slabs through simulated scanners (TorchIO); see "
            "domains.json."
        ),
        reference=demo_sources.MNI_REFERENCE,
        licence=demo_sources.MNI_LICENCE,
        source_files=demo_sources.mni_files,
        load=demo_sources.load_mni_tissue,
    ),
    "colin_skullstrip": SlabSpec(
        name="colin_skullstrip",
        domain="colin27",
        domain_description="Colin27 T1 head, average of 27 scans of one subject (real MRI)",
        labels={"background": 0, "brain": 1},
        description=(
            "Demo skull stripping built by nnunet_ext.dataset_conversion.demo_data from the Colin27 T1 head "
            "(ch2.nii.gz) of Debian's mricron-data; brain = largest connected component of ch2bet.nii.gz > 0. "
            "Cases are axial slabs of one head: train and test slabs come from the same subject. Domains "
            "colin27_sim_* are the test slabs through simulated scanners (TorchIO); see domains.json."
        ),
        reference=(
            "Holmes CJ, Hoge R, Collins L, Woods R, Toga AW, Evans AC. Enhancement of MR images using "
            "registration for signal averaging. J Comput Assist Tomogr 22(2):324-333, 1998. Files from MRIcron "
            "(Chris Rorden), Debian package mricron-data."
        ),
        licence=(
            "Colin27: Copyright (C) McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
            "University; free use with attribution. Redistributed in MRIcron / Debian mricron-data "
            "(BSD-3-clause, see /usr/share/doc/mricron-data/copyright)."
        ),
        source_files=demo_sources.colin_files,
        load=demo_sources.load_colin_skullstrip,
    ),
}


def check_seed(seed: int) -> None:
    """Raise ``ValueError`` unless ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def check_profile(profile: str, profiles: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``profile`` is one of ``profiles``."""
    if profile not in profiles:
        raise ValueError(f"profile must be one of {sorted(profiles)}, got {profile!r}")


def _check_severities(severities: Sequence[str]) -> None:
    if isinstance(severities, str):
        raise ValueError(
            f"severities must be a sequence of names such as ('mild', 'severe'), got the string {severities!r}; "
            f"wrap it: ({severities!r},)"
        )
    unknown = [s for s in severities if s not in SEVERITIES]
    if unknown:
        raise ValueError(f"unknown severities {unknown}; valid severities are {list(SEVERITIES)}")
    if len(set(severities)) != len(severities):
        raise ValueError(f"severities contains duplicates: {list(severities)}; name each severity once")


def slab_ranges(label: np.ndarray, slab_slices: int) -> list[tuple[int, int, int]]:
    """Axial slabs covering the foreground of ``label`` (shape ``(z, y, x)``).

    Returns:
        ``(slab number, first slice, end slice)`` of every slab that contains foreground.
    """
    depth = label.shape[0]
    fg = np.flatnonzero(label.any(axis=(1, 2)))
    extent = int(fg[-1] + 1 - fg[0])
    count = min(math.ceil(extent / slab_slices), depth // slab_slices)
    start = int(np.clip(fg[0] - (count * slab_slices - extent) // 2, 0, depth - count * slab_slices))
    slabs = [(i, start + i * slab_slices, start + (i + 1) * slab_slices) for i in range(count)]
    return [(i, z0, z1) for i, z0, z1 in slabs if label[z0:z1].any()]


def held_out_positions(num_slabs: int, num_test: int) -> list[int]:
    """Positions of ``num_test`` held-out slabs spread evenly, never the first or the last slab."""
    return [int(p) for p in np.round(np.linspace(0, num_slabs - 1, num_test + 2))[1:-1]]


def write_nifti(image: sitk.Image, path: Path) -> None:
    """Write ``image`` with SimpleITK (gzip-compressed; byte-identical for identical images)."""
    sitk.WriteImage(image, str(path), useCompression=True)


def write_slab_dataset(
    name: str,
    target: Path,
    *,
    seed: int = 0,
    profile: str = "demo",
    severities: Sequence[str] = tuple(SEVERITIES),
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the slab demo dataset ``name`` into the folder ``target`` (see the module docstring).

    The folder is assembled in a hidden temporary sibling and moved into place only when complete.

    Args:
        name: a key of :data:`SLAB_SPECS`.
        target: the dataset folder ``<raw_root>/DatasetXXX_<Name>``.
        seed: seed of the simulated-scanner artefacts (source-domain cases do not depend on it).
        profile: a key of :data:`PROFILES`.
        severities: keys of :data:`~nnunet_ext.dataset_conversion.demo_artefacts.SEVERITIES`; one shifted
            test domain each. May be empty.
        overwrite: replace an existing dataset folder of the same name.
        progress: called with a short message at each step.

    Returns:
        ``target``.

    Raises:
        ValueError: bad ``seed``, ``profile`` or ``severities``.
        FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses the id.
        RuntimeError: the source data is not installed (the message says how to install it).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    check_seed(seed)
    check_profile(profile, PROFILES)
    _check_severities(severities)
    spec = SLAB_SPECS[name]
    files = spec.source_files()
    check_id_unused(target, "--id")
    settings = PROFILES[profile]
    report = progress or (lambda message: None)

    with atomic_directory(target, overwrite=overwrite) as tmp:
        report(f"resampling {spec.domain} to {settings.spacing_mm:g} mm")
        image, label = spec.load(files, settings.spacing_mm)
        slabs = slab_ranges(sitk.GetArrayViewFromImage(label), settings.slab_slices)
        held_out = set(held_out_positions(len(slabs), settings.num_test_slabs))
        shifted = {}
        for severity in severities:
            report(f"simulated scanner '{severity}' (TorchIO)")
            shifted[f"{spec.domain}_sim_{severity}"] = simulate_scanner(image, severity, seed)

        meta = DomainMetadata()
        meta.add_domain(
            spec.domain,
            spec.domain_description,
            simulated=False,
            source=[str(p) for p in files.values()],
            spacing_mm=settings.spacing_mm,
        )
        for severity, domain in zip(severities, shifted):
            meta.add_domain(
                domain,
                f"{spec.domain} test slabs through a simulated '{severity}' scanner (TorchIO)",
                simulated=True,
                derived_from=spec.domain,
                transform=transform_record(severity, seed),
            )
        for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / folder).mkdir()

        report(f"writing {len(slabs)} slabs")
        num_training = 0
        for position, (number, z0, z1) in enumerate(slabs):
            split = "test" if position in held_out else "train"
            suffix = "Ts" if split == "test" else "Tr"
            versions = {spec.domain: image} if split == "train" else {spec.domain: image, **shifted}
            for domain, volume in versions.items():
                case = f"{domain}_slab{number:02d}"
                write_nifti(volume[:, :, z0:z1], tmp / f"images{suffix}" / f"{case}_0000.nii.gz")
                write_nifti(label[:, :, z0:z1], tmp / f"labels{suffix}" / f"{case}.nii.gz")
                meta.add_case(case, domain, split, subject=spec.domain, slab=number, slices=[z0, z1])
            num_training += split == "train"

        generate_dataset_json(
            str(tmp),
            channel_names={"0": "T1"},
            labels=dict(spec.labels),
            num_training_cases=num_training,
            file_ending=".nii.gz",
            dataset_name=target.name,
            description=spec.description,
            reference=spec.reference,
            license=spec.licence,
            converted_by="nnunet_ext.dataset_conversion.demo_data",
            numTest=len(meta.cases) - num_training,
            demo={"name": name, "profile": profile, "seed": seed, "spacing_mm": settings.spacing_mm,
                  "slab_slices": settings.slab_slices, "severities": list(severities)},
        )
        save_domains(meta, tmp)
    logger.info("wrote %s: %d training and %d test cases", target, num_training, len(meta.cases) - num_training)
    return target
