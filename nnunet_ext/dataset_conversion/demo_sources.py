"""Sources of the demo datasets: real MRI templates shipped by installed packages, their loading and resampling.

Nothing is downloaded. Two sources:

* nilearn's copy of the MNI ICBM152 2009a nonlinear symmetric template (``nilearn/datasets/data/``): the T1
  (brain only) and the grey- and white-matter probability maps (uint8, 0..255) on one 1 mm grid. The files
  are found without importing nilearn (:func:`mni_files`).
* Debian's ``mricron-data`` (:data:`MRICRON_TEMPLATES`): the Colin27 T1 head ``ch2.nii.gz`` and its
  brain-extracted version ``ch2bet.nii.gz`` (:func:`colin_files`). The package also ships atlases (AAL,
  Brodmann, JHU white-matter labels) but no grey-matter / white-matter / CSF probability maps of Colin27, so
  Colin27 is used only where a brain mask suffices.

Resampling (:func:`downsample`): a Gaussian of ``sigma = (new - old spacing) / 2`` mm per axis (anti-aliasing),
then linear interpolation with SimpleITK onto an isotropic grid covering the same field of view, in the
source's world coordinates.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: folder of the Colin27 templates installed by Debian's ``mricron-data``
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")

MNI_FILENAMES = {kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")}
MNI_REFERENCE = (
    "Fonov V, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average age-appropriate "
    "brain templates from birth to adulthood. NeuroImage 47:S102, 2009; Fonov V et al. Unbiased "
    "average age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327, 2011. "
    "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009"
)
MNI_LICENCE = (
    "MNI ICBM152 2009a: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Free to use, copy, modify and distribute for any purpose "
    "without fee, provided the copyright notice appears in all copies (attribution); provided 'as is' "
    "without warranty."
)


def mni_files() -> dict[str, Path]:
    """Paths of nilearn's MNI ICBM152 2009a T1/GM/WM files (keys ``t1``, ``gm``, ``wm``), found without importing
    nilearn.

    Raises:
        RuntimeError: nilearn is not installed or ships no such files (the message says how to install them).
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo datasets built from MNI152 need the template shipped by nilearn: "
                           "pip install nilearn")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {kind: data_dir / name for kind, name in MNI_FILENAMES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"the installed nilearn lacks the MNI152 files {missing}; pip install --upgrade nilearn"
        )
    return files


def colin_files() -> dict[str, Path]:
    """Paths of the Colin27 head (``head``) and brain-extracted head (``bet``) from Debian's mricron-data.

    Raises:
        RuntimeError: mricron-data is not installed (the message says how to install it).
    """
    files = {"head": MRICRON_TEMPLATES / "ch2.nii.gz", "bet": MRICRON_TEMPLATES / "ch2bet.nii.gz"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(
            f"the colin_skullstrip demo needs {missing} from Debian's mricron-data: apt-get install mricron-data"
        )
    return files


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images have the same size, spacing, origin and direction."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


def to_grid(image: sitk.Image, reference: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` unchanged if it lies on ``reference``'s grid, else resampled onto it."""
    if same_grid(image, reference):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
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


def label_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image of ``array`` (SimpleITK axis order z, y, x) on ``reference``'s grid."""
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(reference)
    return label


def load_mni_tissue(files: dict[str, Path], spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """MNI152 T1 and its GM/WM label map (``1 + argmax(p_gm, p_wm)`` where the max exceeds 0.5), both resampled
    to ``spacing_mm``."""
    t1 = sitk.ReadImage(str(files["t1"]), sitk.sitkFloat32)
    probs = [
        to_grid(sitk.ReadImage(str(files[kind]), sitk.sitkFloat32) / 255.0, t1, sitk.sitkLinear)
        for kind in ("gm", "wm")
    ]
    image = downsample(t1, spacing_mm)
    p = np.stack([sitk.GetArrayFromImage(downsample(prob, spacing_mm)) for prob in probs])
    label = np.where(p.max(axis=0) > 0.5, p.argmax(axis=0) + 1, 0)
    return image, label_like(label, image)


def load_colin_skullstrip(files: dict[str, Path], spacing_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Colin27 head and its brain mask (largest component of ``ch2bet > 0``, partial volume > 0.5), both
    resampled to ``spacing_mm``."""
    head = sitk.ReadImage(str(files["head"]), sitk.sitkFloat32)
    bet = to_grid(sitk.ReadImage(str(files["bet"])), head, sitk.sitkNearestNeighbor)
    brain = sitk.RelabelComponent(sitk.ConnectedComponent(bet > 0), sortByObjectSize=True) == 1
    image = downsample(head, spacing_mm)
    fraction = sitk.GetArrayFromImage(downsample(brain, spacing_mm))
    return image, label_like(fraction > 0.5, image)


def mni_tissue_probabilities(files: dict[str, Path]) -> tuple[np.ndarray, sitk.Image]:
    """The MNI152 2009a tissue probabilities at the template's 1 mm: background, CSF, grey and white matter.

    nilearn ships grey- and white-matter maps but no CSF map. CSF is derived as the brain mask (``T1 > 0``:
    the distributed T1 is masked to the brain, CSF included) minus grey minus white matter, clipped to
    [0, 1]; background is ``1 - (CSF + GM + WM)``, clipped to [0, 1]. GM and WM never sum above 1 in these
    files; the few grey-matter voxels just outside the T1 mask (about 12 ml of probability mass) are kept.

    Args:
        files: :func:`mni_files`.

    Returns:
        ``(probabilities, reference)``: a float32 array ``(4, z, y, x)`` in the order background, CSF, GM, WM
        (SimpleITK axis order) and the T1 image whose grid the array lies on.
    """
    t1 = sitk.ReadImage(str(files["t1"]), sitk.sitkFloat32)
    gm, wm = (
        sitk.GetArrayFromImage(to_grid(sitk.ReadImage(str(files[k]), sitk.sitkFloat32), t1, sitk.sitkLinear)) / 255.0
        for k in ("gm", "wm")
    )
    mask = (sitk.GetArrayViewFromImage(t1) > 0).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    background = np.clip(1.0 - csf - gm - wm, 0.0, 1.0)
    return np.stack([background, csf, gm, wm]).astype(np.float32), t1
