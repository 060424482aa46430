"""Demo nnU-Net raw datasets built from real MRI that ships inside installed packages (nothing downloaded).

Two datasets, each written as ``$nnUNet_raw/DatasetXXX_Name/`` with ``dataset.json``, ``imagesTr``,
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

Preprocessing. Every volume is smoothed with a Gaussian of ``sigma = (new - old spacing) / 2`` mm per axis
(anti-aliasing) and resampled linearly with SimpleITK onto an isotropic grid covering the same field of
view (origin and direction kept, so the written NIfTIs are in the source's world coordinates). Images are
stored as float32 in the source's intensity units, labels as uint8.

Cases are axial slabs. The resampled volume is cut along its third voxel axis (inferior -> superior) into
slabs of ``slab_slices`` contiguous slices placed to cover the foreground; slabs without foreground are
dropped. ``num_test_slabs`` slabs spread evenly through the brain (never the first or last) are held out
for ``imagesTs``; the rest go to ``imagesTr``. Case ids name the slab's position, e.g. ``mni152_slab03``;
``domains.json`` also records ``slab`` and ``slices`` (first and end slice in the resampled volume).
**Train and test slabs come from the same brain** (``subject`` is the same for every case), so the
in-domain test set measures generalisation to other slices of one subject, not to other subjects.

Shifted test domains. For each severity (``mild``, ``moderate``, ``severe``; see :data:`SEVERITIES`) the
whole resampled image volume goes through one TorchIO "simulated scanner" (gamma contrast change,
polynomial bias field, ghosting and motion at the higher levels, Gaussian noise), then the held-out test
slabs are cut from it and written as domain ``<domain>_sim_<severity>`` (``simulated: true``,
``derived_from: <domain>``; the exact transform is stored under the domain's ``transform``). Bias field,
ghosting and motion are volume-level effects, hence applied before cutting. Labels are unchanged.

Determinism: every severity draws its artefact from ``torch.manual_seed(seed * len(SEVERITIES) + k)``
(``k`` = the severity's position in :data:`SEVERITIES`) inside :func:`torch.random.fork_rng`, so the
caller's random state is untouched, the same seed gives byte-identical files and a severity's artefact does
not depend on which other severities are requested. The real (source-domain) cases do not depend on the
seed.

>>> folder = build_demo_dataset("mni_tissue", 990, "/tmp/nnUNet_raw", profile="tiny")  # doctest: +SKIP
>>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
['dataset.json', 'domains.json', 'imagesTr', 'imagesTs', 'labelsTr', 'labelsTs']
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.utils.atomic import atomic_directory

logger = logging.getLogger(__name__)

DemoName = Literal["mni_tissue", "colin_skullstrip"]
ProfileName = Literal["demo", "tiny"]

#: folder of the Colin27 templates installed by Debian's ``mricron-data``
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")

_MNI_FILES = {
    kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")
}


@dataclass(frozen=True)
class DemoProfile:
    """Resolution and case layout of a demo dataset.

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

#: Simulated scanners, one TorchIO ``Compose`` per severity, applied in the listed order to the image
#: divided by the 99.5th percentile of its non-zero voxels (so parameters are relative to tissue
#: brightness; the result is scaled back). Each step is ``{"name": <torchio class>, **kwargs}``. Gamma and
#: noise ranges and the bias-field and motion bounds grow with severity; motion appears from ``moderate``,
#: ghosting (along in-plane axis 0 or 1, the phase-encoding direction of an axial acquisition) at
#: ``severe``. The bias field's polynomial has a constant term, i.e. a random global gain: raw intensity
#: differences therefore vary a lot between seeds, while after nnU-Net's per-case z-scoring the mean
#: absolute difference to the clean image grows mild < moderate < severe (checked for seeds 0-19).
SEVERITIES: dict[str, tuple[dict[str, Any], ...]] = {
    "mild": (
        {"name": "RandomGamma", "log_gamma": (0.05, 0.15)},
        {"name": "RandomBiasField", "coefficients": 0.2, "order": 3},
        {"name": "RandomNoise", "mean": 0.0, "std": (0.01, 0.02)},
    ),
    "moderate": (
        {"name": "RandomGamma", "log_gamma": (0.2, 0.3)},
        {"name": "RandomBiasField", "coefficients": 0.3, "order": 3},
        {"name": "RandomMotion", "degrees": 2.0, "translation": 2.0, "num_transforms": 2},
        {"name": "RandomNoise", "mean": 0.0, "std": (0.03, 0.05)},
    ),
    "severe": (
        {"name": "RandomGamma", "log_gamma": (0.35, 0.45)},
        {"name": "RandomBiasField", "coefficients": 0.5, "order": 3},
        {"name": "RandomMotion", "degrees": 4.0, "translation": 4.0, "num_transforms": 2},
        {"name": "RandomGhosting", "num_ghosts": (4, 8), "axes": (0, 1), "intensity": (0.4, 0.7)},
        {"name": "RandomNoise", "mean": 0.0, "std": (0.07, 0.1)},
    ),
}

#: percentile of the non-zero voxels that the scanner parameters are relative to
_INTENSITY_REFERENCE_PERCENTILE = 99.5


@dataclass(frozen=True)
class _DemoSpec:
    """What distinguishes the demo datasets; the build itself is shared."""

    folder_suffix: str
    domain: str
    domain_description: str
    labels: dict[str, int]
    description: str
    reference: str
    licence: str
    source_files: Callable[[], dict[str, Path]]
    load: Callable[[dict[str, Path], float], tuple[sitk.Image, sitk.Image]]


def _mni_files() -> dict[str, Path]:
    """Paths of nilearn's MNI ICBM152 2009a T1/GM/WM files, found without importing nilearn.

    Raises:
        RuntimeError: nilearn is not installed or ships no such files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mni_tissue demo needs the MNI152 template shipped by nilearn: pip install nilearn")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {kind: data_dir / name for kind, name in _MNI_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"the installed nilearn lacks the MNI152 files {missing}; pip install --upgrade nilearn"
        )
    return files


def _colin_files() -> dict[str, Path]:
    """Paths of the Colin27 head and brain-extracted head from Debian's mricron-data.

    Raises:
        RuntimeError: mricron-data is not installed.
    """
    files = {"head": MRICRON_TEMPLATES / "ch2.nii.gz", "bet": MRICRON_TEMPLATES / "ch2bet.nii.gz"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"the colin_skullstrip demo needs {missing} from Debian's mricron-data: apt-get install mricron-data"
        )
    return files


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


def _to_grid(image: sitk.Image, reference: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` unchanged if it lies on ``reference``'s grid, else resampled onto it."""
    if _same_grid(image, reference):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def _downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Anti-aliased linear resampling onto an isotropic ``spacing_mm`` grid with the same field of view.

    The Gaussian has ``sigma = (spacing_mm - old spacing) / 2`` mm per axis. The new grid keeps the
    direction; its origin moves by half the spacing change so its voxels tile the old field of view.

    Args:
        image: scalar image with spacing below ``spacing_mm`` on every axis.
        spacing_mm: target spacing.

    Returns:
        A float32 image.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    old = np.asarray(image.GetSpacing())
    new = np.full(3, spacing_mm)
    smoothed = sitk.SmoothingRecursiveGaussian(image, ((new - old) / 2).tolist())
    size = np.maximum(1, np.round(np.asarray(image.GetSize()) * old / new)).astype(int)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ ((new - old) / 2)
    return sitk.Resample(
        smoothed,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        new.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _label_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(reference)
    return label


def _load_mni_tissue(files: dict[str, Path], spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """MNI152 T1 and its GM/WM label map (``1 + argmax(p_gm, p_wm)`` where the max exceeds 0.5)."""
    t1 = sitk.ReadImage(str(files["t1"]), sitk.sitkFloat32)
    probs = [
        _to_grid(sitk.ReadImage(str(files[kind]), sitk.sitkFloat32) / 255.0, t1, sitk.sitkLinear)
        for kind in ("gm", "wm")
    ]
    image = _downsample(t1, spacing_mm)
    p = np.stack([sitk.GetArrayFromImage(_downsample(prob, spacing_mm)) for prob in probs])
    label = np.where(p.max(axis=0) > 0.5, p.argmax(axis=0) + 1, 0)
    return image, _label_like(label, image)


def _load_colin_skullstrip(files: dict[str, Path], spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Colin27 head and its brain mask (largest component of ``ch2bet > 0``, partial volume > 0.5)."""
    head = sitk.ReadImage(str(files["head"]), sitk.sitkFloat32)
    bet = _to_grid(sitk.ReadImage(str(files["bet"])), head, sitk.sitkNearestNeighbor)
    brain = sitk.RelabelComponent(sitk.ConnectedComponent(bet > 0), sortByObjectSize=True) == 1
    image = _downsample(head, spacing_mm)
    fraction = sitk.GetArrayFromImage(_downsample(brain, spacing_mm))
    return image, _label_like(fraction > 0.5, image)


_SPECS: dict[str, _DemoSpec] = {
    "mni_tissue": _DemoSpec(
        folder_suffix="DemoMNITissue",
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
        reference=(
            "Fonov V, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average age-appropriate "
            "brain templates from birth to adulthood. NeuroImage 47:S102, 2009; Fonov V et al. Unbiased "
            "average age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327, 2011. "
            "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009"
        ),
        licence=(
            "MNI ICBM152 2009a: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
            "Neurological Institute, McGill University. Free to use, copy, modify and distribute for any purpose "
            "without fee, provided the copyright notice appears in all copies (attribution); provided 'as is' "
            "without warranty."
        ),
        source_files=_mni_files,
        load=_load_mni_tissue,
    ),
    "colin_skullstrip": _DemoSpec(
        folder_suffix="DemoColinSkullStrip",
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
        source_files=_colin_files,
        load=_load_colin_skullstrip,
    ),
}


def available_demo_datasets() -> dict[str, str | None]:
    """Which demo datasets can be built here.

    Returns:
        Dataset name -> ``None`` if its source files are installed, else the reason and the install command.
    """
    available: dict[str, str | None] = {}
    for name, spec in _SPECS.items():
        try:
            spec.source_files()
        except RuntimeError as e:
            available[name] = str(e)
        else:
            available[name] = None
    return available


def demo_dataset_folder(name: DemoName, dataset_id: int, raw_root: str | Path) -> Path:
    """The folder :func:`build_demo_dataset` writes, e.g. ``<raw_root>/Dataset990_DemoMNITissue``.

    Raises:
        ValueError: unknown ``name`` or ``dataset_id`` outside 1..999.
    """
    spec = _spec(name)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(
            f"dataset_id must be an integer in 1..999 (nnU-Net's three-digit dataset id), got {dataset_id!r}; "
            f"pass e.g. --id 990"
        )
    return Path(raw_root) / f"Dataset{dataset_id:03d}_{spec.folder_suffix}"


def _spec(name: str) -> _DemoSpec:
    if name not in _SPECS:
        raise ValueError(f"name must be one of {sorted(_SPECS)}, got {name!r}")
    return _SPECS[name]


def _check_arguments(seed: int, profile: str, severities: Sequence[str]) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
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


def _check_id_unused(target: Path) -> None:
    """nnU-Net finds datasets by id: refuse a second folder with ``target``'s id."""
    prefix = target.name.split("_", 1)[0]
    clashes = sorted(p for p in target.parent.glob(f"{prefix}_*") if p.name != target.name)
    if clashes:
        raise FileExistsError(
            f"dataset id {prefix[len('Dataset'):]} is already used by {clashes[0]}; nnU-Net needs unique ids. "
            f"Pass another --id or remove that folder."
        )


def _slab_ranges(label: np.ndarray, slab_slices: int) -> list[tuple[int, int, int]]:
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


def _test_positions(num_slabs: int, num_test: int) -> list[int]:
    """Positions of ``num_test`` held-out slabs spread evenly, never the first or the last slab."""
    return [int(p) for p in np.round(np.linspace(0, num_slabs - 1, num_test + 2))[1:-1]]


def _severity_seed(seed: int, severity: str) -> int:
    return seed * len(SEVERITIES) + list(SEVERITIES).index(severity)


def _transform_record(severity: str, seed: int) -> dict[str, Any]:
    """JSON description of the simulated scanner stored under the domain's ``transform``."""
    import torchio as tio

    return {
        "name": "Compose",
        "library": f"torchio {tio.__version__}",
        "severity": severity,
        "seed": _severity_seed(seed, severity),
        "intensity_reference": (
            f"parameters act on the image divided by the {_INTENSITY_REFERENCE_PERCENTILE}th percentile of its "
            f"non-zero voxels; the whole resampled volume is transformed, then the test slabs are cut"
        ),
        "transforms": [
            {k: list(v) if isinstance(v, tuple) else v for k, v in step.items()} for step in SEVERITIES[severity]
        ],
    }


def simulate_scanner(image: sitk.Image, severity: str, seed: int) -> sitk.Image:
    """Pass a volume through the simulated scanner of ``severity`` (see :data:`SEVERITIES`).

    Args:
        image: 3D scalar image (intensities >= 0 where there is signal).
        severity: a key of :data:`SEVERITIES`.
        seed: non-negative base seed; the artefact is drawn with ``seed * len(SEVERITIES) + k``.

    Returns:
        A float32 image on the grid of ``image``; ``image`` itself is not modified.

    Raises:
        ValueError: unknown ``severity``.
    """
    import torch
    import torchio as tio

    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    scale = float(np.percentile(array[array > 0], _INTENSITY_REFERENCE_PERCENTILE))
    data, affine = tio.io.sitk_to_nib(image)
    scanner = tio.Compose(
        [getattr(tio, step["name"])(**{k: v for k, v in step.items() if k != "name"}) for step in SEVERITIES[severity]]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_severity_seed(seed, severity))
        shifted = scanner(tio.ScalarImage(tensor=torch.as_tensor(data, dtype=torch.float32) / scale, affine=affine))
    out = sitk.GetImageFromArray((shifted.data[0].numpy().T * scale).astype(np.float32))
    out.CopyInformation(image)
    return out


def _write_nifti(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


def build_demo_dataset(
    name: DemoName,
    dataset_id: int,
    raw_root: str | Path,
    seed: int = 0,
    profile: ProfileName = "demo",
    severities: Sequence[str] = ("mild", "moderate", "severe"),
    overwrite: bool = False,
) -> Path:
    """Write a demo nnU-Net raw dataset with real and simulated-scanner test domains.

    The folder is assembled in a hidden temporary sibling and moved into place only when complete.

    Args:
        name: ``"mni_tissue"`` (grey/white matter, MNI152) or ``"colin_skullstrip"`` (brain mask, Colin27).
        dataset_id: nnU-Net dataset id, 1..999.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``); created if missing.
        seed: seed of the simulated-scanner artefacts (source-domain cases do not depend on it).
        profile: ``"demo"`` or ``"tiny"``, see :data:`PROFILES`.
        severities: keys of :data:`SEVERITIES`; one shifted test domain each. May be empty.
        overwrite: replace an existing dataset folder of the same name.

    Returns:
        The dataset folder ``<raw_root>/Dataset{dataset_id:03d}_DemoMNITissue`` or ``..._DemoColinSkullStrip``.

    Raises:
        ValueError: bad ``name``, ``dataset_id``, ``seed``, ``profile`` or ``severities``.
        FileExistsError: the folder exists and ``overwrite`` is False, or another dataset uses ``dataset_id``.
        RuntimeError: the source data is not installed (the message says how to install it).
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    target = demo_dataset_folder(name, dataset_id, raw_root)
    _check_arguments(seed, profile, severities)
    spec = _SPECS[name]
    files = spec.source_files()
    _check_id_unused(target)
    settings = PROFILES[profile]

    with atomic_directory(target, overwrite=overwrite) as tmp:
        image, label = spec.load(files, settings.spacing_mm)
        slabs = _slab_ranges(sitk.GetArrayViewFromImage(label), settings.slab_slices)
        test_positions = set(_test_positions(len(slabs), settings.num_test_slabs))
        shifted = {f"{spec.domain}_sim_{s}": simulate_scanner(image, s, seed) for s in severities}

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
                transform=_transform_record(severity, seed),
            )
        for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / folder).mkdir()

        num_training = 0
        for position, (number, z0, z1) in enumerate(slabs):
            split = "test" if position in test_positions else "train"
            suffix = "Ts" if split == "test" else "Tr"
            versions = {spec.domain: image} if split == "train" else {spec.domain: image, **shifted}
            for domain, volume in versions.items():
                case = f"{domain}_slab{number:02d}"
                _write_nifti(volume[:, :, z0:z1], tmp / f"images{suffix}" / f"{case}_0000.nii.gz")
                _write_nifti(label[:, :, z0:z1], tmp / f"labels{suffix}" / f"{case}.nii.gz")
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
