"""Tests of nnunet_ext.evaluation.metrics against exact distances and an independent implementation.

The independent reference below defines boundary voxels exactly as MONAI does with
``use_subvoxels=False`` (mask voxels removed by a binary erosion with the default cross structure, voxels
outside the image counting as background), so no boundary-definition tolerance is needed; the remaining
difference is MONAI's float32 distances against our float64 ones (relative 1e-5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_ext.evaluation.metrics import binary_metrics, case_metrics, image_diagonal_mm


def reference_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tol: float) -> dict[str, float]:
    """Surface metrics from scratch: erosion boundaries, cKDTree distances in mm, no cropping."""

    def boundary_mm(mask: np.ndarray) -> np.ndarray:
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        return np.argwhere(edge) * np.asarray(spacing)

    p, r = boundary_mm(pred), boundary_mm(ref)
    d_pr = cKDTree(r).query(p)[0]
    d_rp = cKDTree(p).query(r)[0]
    both = np.concatenate([d_pr, d_rp])
    return {
        "dice": 2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()),
        "surface_dice": np.count_nonzero(both <= tol) / both.size,
        "hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
        "assd": both.mean(),
    }


def random_blob(rng: np.random.Generator, shape: tuple[int, ...], seeds: int, radius: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(rng.integers(0, n, seeds) for n in shape)] = True
    return ndimage.binary_dilation(mask, iterations=radius)


@pytest.mark.parametrize("shape", [(20, 24), (9, 12, 14)])
def test_identical_masks_are_perfect(shape: tuple[int, ...]) -> None:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(2, n - 3) for n in shape)] = True
    spacing = (2.5, 0.7, 0.9)[: len(shape)]
    m = binary_metrics(mask, mask.copy(), spacing, tolerance_mm=0.0)
    assert (m.dice, m.surface_dice, m.hd95, m.assd) == (1.0, 1.0, 0.0, 0.0)
    assert m.reference_voxels == m.prediction_voxels == mask.sum()


@pytest.mark.parametrize(
    ("spacing", "offset", "expected"),
    [
        ((3.0, 0.5, 0.8), (1, 2, 0), math.sqrt(9.0 + 1.0)),
        ((3.0, 0.5, 0.8), (0, 0, 5), 4.0),
        ((0.6, 2.0), (2, 1), math.sqrt(1.44 + 4.0)),
    ],
)
def test_single_voxels_distance_is_offset_in_mm(
    spacing: tuple[float, ...], offset: tuple[int, ...], expected: float
) -> None:
    shape = (12,) * len(spacing)
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    ref[(3,) * len(shape)] = True
    pred[tuple(3 + o for o in offset)] = True
    m = binary_metrics(pred, ref, spacing, tolerance_mm=expected)
    assert m.dice == 0.0
    assert m.hd95 == pytest.approx(expected, rel=1e-6)
    assert m.assd == pytest.approx(expected, rel=1e-6)
    assert m.surface_dice == 1.0  # tolerance is inclusive
    assert binary_metrics(pred, ref, spacing, tolerance_mm=expected * 0.99).surface_dice == 0.0


def test_shifted_thin_plates_on_anisotropic_grid() -> None:
    """Two 1-voxel-thick plates 2 slices apart along z (2.5 mm): every distance is 5 mm."""
    ref = np.zeros((10, 12, 12), dtype=bool)
    ref[3, 2:9, 1:10] = True
    pred = np.roll(ref, 2, axis=0)
    m = binary_metrics(pred, ref, (2.5, 0.7, 0.7), tolerance_mm=4.9)
    assert (m.dice, m.surface_dice) == (0.0, 0.0)
    assert m.hd95 == pytest.approx(5.0, rel=1e-6)
    assert m.assd == pytest.approx(5.0, rel=1e-6)


def test_overlapping_boxes_dice_is_exact() -> None:
    ref = np.zeros((12, 10, 10), dtype=bool)
    ref[2:6, 2:8, 2:8] = True
    pred = np.roll(ref, 1, axis=0)  # 3 of 4 slices overlap: Dice 2 * 3 / 8
    assert binary_metrics(pred, ref, (2.0, 1.0, 1.0)).dice == 0.75


@pytest.mark.parametrize("shape", [(32, 40), (12, 20, 24)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_implementation_on_random_blobs(shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    spacing = (2.2, 0.6, 0.9)[-len(shape) :]
    ref = random_blob(rng, shape, seeds=4, radius=3)
    pred = ref ^ random_blob(rng, shape, seeds=3, radius=2)  # holes and extra islands
    pred[(0,) * len(shape)] = True  # touches the image corner: the crop is clipped there
    # no distance on this grid equals 1.3 mm: at an exact tie MONAI's float32 distances may round either way
    tol = 1.3
    ours = binary_metrics(pred, ref, spacing, tolerance_mm=tol)
    expected = reference_metrics(pred, ref, spacing, tol)
    assert 0.0 < expected["dice"] < 1.0 and 0.0 < expected["surface_dice"] < 1.0 and expected["hd95"] > 1.0
    assert ours.dice == pytest.approx(expected["dice"], rel=1e-12)
    assert ours.surface_dice == pytest.approx(expected["surface_dice"], rel=1e-6)
    assert ours.hd95 == pytest.approx(expected["hd95"], rel=1e-5)
    assert ours.assd == pytest.approx(expected["assd"], rel=1e-5)


def test_crop_equals_full_image_for_masks_far_from_the_border() -> None:
    """The bounding-box crop must not change the result (reference computed on the full image)."""
    rng = np.random.default_rng(5)
    ref = np.zeros((40, 40, 40), dtype=bool)
    pred = np.zeros_like(ref)
    ref[15:25, 15:25, 15:25] = random_blob(rng, (10, 10, 10), seeds=3, radius=2)
    pred[16:26, 14:24, 15:25] = random_blob(rng, (10, 10, 10), seeds=3, radius=2)
    ours = binary_metrics(pred, ref, (1.5, 0.8, 1.1), tolerance_mm=1.0)
    expected = reference_metrics(pred, ref, (1.5, 0.8, 1.1), 1.0)
    for name in ("surface_dice", "hd95", "assd"):
        assert getattr(ours, name) == pytest.approx(expected[name], rel=1e-5), name


def test_both_empty_gives_nan_everywhere() -> None:
    empty = np.zeros((6, 7, 8), dtype=bool)
    m = binary_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert all(math.isnan(v) for v in (m.dice, m.surface_dice, m.hd95, m.assd))
    assert m.both_empty and m.reference_voxels == m.prediction_voxels == 0


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_one_empty_gives_worst_scores(empty_side: str) -> None:
    shape, spacing = (6, 7, 8), (3.0, 0.5, 2.0)
    present = np.zeros(shape, dtype=bool)
    present[2:4, 2:4, 2:4] = True
    empty = np.zeros(shape, dtype=bool)
    pred, ref = (empty, present) if empty_side == "prediction" else (present, empty)
    m = binary_metrics(pred, ref, spacing)
    diagonal = math.sqrt(18.0**2 + 3.5**2 + 16.0**2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diagonal)
    assert (m.dice, m.surface_dice) == (0.0, 0.0)
    assert m.hd95 == pytest.approx(diagonal) and m.assd == pytest.approx(diagonal)
    assert not m.both_empty


def test_singleton_axis_is_dropped() -> None:
    """A 2D slice stored as 3D (1, H, W) gives the 2D result; the 999 mm slice spacing does not enter."""
    rng = np.random.default_rng(3)
    ref = random_blob(rng, (30, 30), seeds=3, radius=3)
    pred = random_blob(rng, (30, 30), seeds=3, radius=3)
    flat = binary_metrics(pred, ref, (0.8, 1.2))
    stacked = binary_metrics(pred[None], ref[None], (999.0, 0.8, 1.2))
    assert stacked == flat
    empty = np.zeros((1, 30, 30), dtype=bool)
    assert binary_metrics(empty, ref[None], (999.0, 0.8, 1.2)).hd95 == pytest.approx(math.hypot(24.0, 36.0))


def test_case_metrics_evaluates_each_label() -> None:
    ref = np.zeros((10, 10), dtype=np.uint8)
    ref[1:4, 1:4] = 1
    ref[6:9, 6:9] = 2
    pred = ref.copy()
    pred[6:9, 6:9] = 0
    result = case_metrics(pred, ref, labels=[1, 2, 3], spacing=(1.0, 1.0))
    assert list(result) == [1, 2, 3]
    assert result[1].dice == 1.0
    assert result[2].dice == 0.0 and result[2].prediction_voxels == 0
    assert result[3].both_empty


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prediction": np.zeros((4, 4), dtype=np.uint8)}, TypeError, "prediction must be a boolean"),
        ({"reference": np.zeros((4, 5), dtype=bool)}, ValueError, "differs from reference shape"),
        ({"spacing": (1.0,)}, ValueError, "one positive finite voxel size"),
        ({"spacing": (1.0, -1.0)}, ValueError, "one positive finite voxel size"),
        ({"spacing": (1.0, float("nan"))}, ValueError, "one positive finite voxel size"),
        ({"tolerance_mm": -0.5}, ValueError, "tolerance_mm must be"),
        ({"prediction": np.zeros((1, 4), bool), "reference": np.zeros((1, 4), bool)}, ValueError, "2D or 3D"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {
        "prediction": np.zeros((4, 4), dtype=bool),
        "reference": np.zeros((4, 4), dtype=bool),
        "spacing": (1.0, 1.0),
        "tolerance_mm": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        binary_metrics(**args)
