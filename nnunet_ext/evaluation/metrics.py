"""Per-case, per-label segmentation metrics on label maps with voxel spacing in mm (2D and 3D).

The distance metrics are MONAI's maintained implementations (``monai.metrics``); this module adds the
spacing bookkeeping, the empty-structure policy and a crop that keeps them fast on large volumes.

Metrics of one label, with ``P`` the predicted and ``R`` the reference mask:

- **Dice** ``2|P ∩ R| / (|P| + |R|)``: :func:`nnunet_ext.core.metrics.dice`, the one Dice every part of
  nnunet-ext uses (CLI tools and trainers too), with the empty-structure rule below.
- **Surface Dice** (normalized surface distance) at a tolerance ``τ`` mm: the fraction of boundary voxels
  of both masks whose distance to the other mask's boundary is ``<= τ``
  (``monai.metrics.compute_surface_dice``, ``use_subvoxels=False``: every boundary voxel counts once.
  DeepMind's ``surface-distance`` package weights boundary elements by their surface area instead; the
  two agree on isotropic grids up to discretisation and can differ on strongly anisotropic ones).
- **HD95**: the larger of the two directed 95th percentiles (linear interpolation) of boundary-to-boundary
  distances (``compute_hausdorff_distance(percentile=95)``).
- **ASSD**: the mean of all boundary-to-boundary distances of both directions pooled
  (``compute_average_surface_distance(symmetric=True)``).

Boundary voxels are mask voxels with a background voxel among their 4 (2D) / 6 (3D) face neighbours,
voxels outside the image counting as background (``scipy.ndimage.binary_erosion`` with its default
structure, as MONAI does). Distances are Euclidean between voxel centres in mm, using the spacing.
Axes of length 1 are dropped first: a 2D slice stored as a 3D image is evaluated as 2D (otherwise every
voxel would touch the image border along that axis and count as boundary). Distances are computed on the
bounding box of ``P ∪ R`` padded by one voxel, which gives the same boundaries and distances as the full
image because voxels outside the image count as background anyway.

Empty-structure policy (the same for every label, case and metric):

- ``R`` and ``P`` both empty: all four metrics are NaN. Aggregates exclude the case for that label and
  count it as ``n_both_empty``; a correct "absent" is neither a success nor a failure of the contour.
- exactly one of ``R`` and ``P`` empty: Dice 0, surface Dice 0, and HD95 = ASSD = the diagonal of the
  image's field of view in mm (``sqrt(sum((n_i * spacing_i) ** 2))``), which is larger than any distance
  two non-empty masks in the image can have. A missed or hallucinated structure is thus always the worst
  score and is never dropped from a mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)

from nnunet_ext.core.metrics import dice

#: metric names in the order reports list them
METRIC_NAMES: tuple[str, ...] = ("dice", "surface_dice", "hd95", "assd")


@dataclass(frozen=True)
class LabelMetrics:
    """Metrics of one label in one case.

    Attributes:
        dice: Dice coefficient in [0, 1]; NaN when both masks are empty.
        surface_dice: surface Dice at the tolerance in [0, 1]; NaN when both masks are empty.
        hd95: 95th-percentile symmetric Hausdorff distance in mm; NaN when both masks are empty.
        assd: average symmetric surface distance in mm; NaN when both masks are empty.
        reference_voxels: number of reference voxels of the label.
        prediction_voxels: number of predicted voxels of the label.
    """

    dice: float
    surface_dice: float
    hd95: float
    assd: float
    reference_voxels: int
    prediction_voxels: int

    @property
    def both_empty(self) -> bool:
        """True when the label is absent from both reference and prediction (metrics are NaN)."""
        return self.reference_voxels == 0 and self.prediction_voxels == 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of an image's field of view in mm: ``sqrt(sum((shape_i * spacing_i) ** 2))``."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


def binary_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> LabelMetrics:
    """Dice, surface Dice, HD95 and ASSD of one binary structure (policy in the module docstring).

    Args:
        prediction: boolean mask of the predicted structure.
        reference: boolean mask of the reference structure, same shape.
        spacing: voxel size in mm per array axis (numpy axis order, e.g. z, y, x).
        tolerance_mm: surface Dice tolerance in mm (distances ``<=`` it count as correct).

    Shape:
        ``prediction``, ``reference``: 2D ``(H, W)`` or 3D ``(D, H, W)``; axes of length 1 are dropped.

    Returns:
        The metrics and voxel counts.

    Raises:
        TypeError: a mask is not boolean.
        ValueError: shapes differ, ``spacing`` does not have one positive finite value per axis, fewer than
            two axes longer than 1 remain, or ``tolerance_mm`` is negative or not finite.

    >>> ref = np.zeros((8, 8), dtype=bool); ref[2:5, 2:5] = True
    >>> m = binary_metrics(ref, ref, spacing=(1.0, 0.5))
    >>> (m.dice, m.surface_dice, m.hd95, m.assd)
    (1.0, 1.0, 0.0, 0.0)
    """
    for name, mask in (("prediction", prediction), ("reference", reference)):
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
            got = mask.dtype if isinstance(mask, np.ndarray) else type(mask).__name__
            raise TypeError(f"{name} must be a boolean numpy array, got {got}; pass e.g. label_map == label")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}; "
            "both masks must be on the same grid"
        )
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != prediction.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing must hold one positive finite voxel size (mm) per array axis of shape {prediction.shape}, "
            f"got {spacing}"
        )
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")

    keep = [axis for axis, n in enumerate(prediction.shape) if n > 1]
    if len(keep) not in (2, 3):
        raise ValueError(
            f"masks of shape {prediction.shape} have {len(keep)} axes longer than 1; metrics need a 2D or 3D image"
        )
    shape = tuple(prediction.shape[a] for a in keep)
    spacing = tuple(spacing[a] for a in keep)
    prediction = prediction.reshape(shape)
    reference = reference.reshape(shape)

    overlap = dice(prediction, reference)  # NaN when both are empty, 0 when one is
    union = prediction | reference
    if not union.any():
        nan = float("nan")
        return LabelMetrics(overlap, nan, nan, nan, reference_voxels=0, prediction_voxels=0)
    box = _bounding_box(union, pad=1)
    prediction, reference = prediction[box], reference[box]
    n_pred = int(np.count_nonzero(prediction))
    n_ref = int(np.count_nonzero(reference))
    if n_pred == 0 or n_ref == 0:
        worst = image_diagonal_mm(shape, spacing)
        return LabelMetrics(overlap, 0.0, worst, worst, reference_voxels=n_ref, prediction_voxels=n_pred)

    # one-hot, batch-first (B=1, C=1); include_background=True because the single channel is the structure
    y_pred = torch.from_numpy(prediction.copy())[None, None]
    y = torch.from_numpy(reference.copy())[None, None]
    spacing_list = list(spacing)
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated argument internally; the warning is not about our call
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        surface_dice = compute_surface_dice(
            y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=spacing_list
        )
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing_list)
        assd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=spacing_list
        )
    return LabelMetrics(
        dice=overlap,
        surface_dice=float(surface_dice[0, 0]),
        hd95=float(hd95[0, 0]),
        assd=float(assd[0, 0]),
        reference_voxels=n_ref,
        prediction_voxels=n_pred,
    )


def case_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[int, LabelMetrics]:
    """:func:`binary_metrics` of every label of a pair of integer label maps.

    Args:
        prediction: predicted label map (integer values).
        reference: reference label map, same shape.
        labels: label values to evaluate (background is normally left out).
        spacing: voxel size in mm per array axis (numpy axis order).
        tolerance_mm: surface Dice tolerance in mm.

    Returns:
        label value -> metrics, in the order of ``labels``.

    Raises:
        ValueError: see :func:`binary_metrics`.
    """
    return {
        int(label): binary_metrics(prediction == label, reference == label, spacing, tolerance_mm)
        for label in labels
    }


def _bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding all True voxels of a non-empty ``mask``, grown by ``pad`` (clipped)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(box)
