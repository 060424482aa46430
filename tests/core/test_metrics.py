"""Tests of nnunet_ext.core.metrics: the one Dice, its empty-structure rule, numpy and torch inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from nnunet_ext.core.metrics import dice, mean_dice, nanmean


def _boxes(shape: tuple[int, ...], shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4-voxel-wide box and the same box shifted by ``shift`` voxels along the last axis."""
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    ref[tuple(slice(1, 5) for _ in shape)] = True
    pred[tuple(slice(1, 5) for _ in shape[:-1]) + (slice(1 + shift, 5 + shift),)] = True
    return pred, ref


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 8)])
@pytest.mark.parametrize(("shift", "expected"), [(0, 1.0), (1, 0.75), (2, 0.5), (4, 0.0)])
def test_reference_values_2d_and_3d(shape: tuple[int, ...], shift: int, expected: float) -> None:
    pred, ref = _boxes(shape, shift)
    assert dice(pred, ref) == expected
    assert dice(torch.from_numpy(pred), torch.from_numpy(ref)) == expected


def test_agrees_with_an_independent_implementation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, ref = rng.random((2, 6, 7, 5)) < rng.uniform(0.05, 0.6, size=(2, 1, 1, 1))
        expected = 1.0 - scipy_dice_dissimilarity(pred.ravel(), ref.ravel())
        assert dice(pred, ref) == pytest.approx(expected, rel=1e-12)
        assert dice(torch.from_numpy(pred), torch.from_numpy(ref)) == pytest.approx(expected, rel=1e-12)


def test_empty_structure_rule() -> None:
    empty = np.zeros((4, 5), dtype=bool)
    full = np.ones((4, 5), dtype=bool)
    assert math.isnan(dice(empty, empty.copy()))
    assert math.isnan(dice(torch.zeros(2, 3, 4, dtype=torch.bool), torch.zeros(2, 3, 4, dtype=torch.bool)))
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0  # exactly one empty: the worst score


def test_batch_is_pooled() -> None:
    pred, ref = _boxes((8, 8), 1)
    stacked = dice(torch.from_numpy(np.stack([pred, ref])), torch.from_numpy(np.stack([ref, ref])))
    # overlap 12 + 16 voxels, sizes (16 + 16) + (16 + 16)
    assert stacked == pytest.approx(2 * 28 / 64)


def test_mean_dice_leaves_out_labels_empty_in_both() -> None:
    ref = np.zeros((6, 8), dtype=np.uint8)
    ref[1:5, 1:5] = 1
    pred = ref.copy()
    pred[1:5, 5:7] = 2  # label 2 hallucinated: Dice 0; label 3 absent from both: left out
    assert mean_dice(pred, ref, [1, 2, 3]) == 0.5
    assert mean_dice(torch.from_numpy(pred), torch.from_numpy(ref), [1, 2, 3]) == 0.5
    assert math.isnan(mean_dice(pred, ref, [3])) and math.isnan(mean_dice(pred, ref, []))


def test_nanmean() -> None:
    assert nanmean([1.0, math.nan, 0.5]) == 0.75
    assert math.isnan(nanmean([math.nan])) and math.isnan(nanmean([]))


def test_bad_arguments_raise() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    with pytest.raises(TypeError, match="prediction must be a boolean mask.*uint8.*label_map == label"):
        dice(mask.astype(np.uint8), mask)
    with pytest.raises(TypeError, match="reference must be a boolean mask"):
        dice(torch.from_numpy(mask), torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="prediction is a ndarray and reference a Tensor"):
        dice(mask, torch.from_numpy(mask))
    with pytest.raises(TypeError, match="must be a numpy array or a torch tensor, got list"):
        dice([[True]], mask)
    with pytest.raises(ValueError, match=r"prediction shape \(4, 4\) differs from reference shape \(4, 5\)"):
        dice(mask, np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="differs from reference shape"):
        mean_dice(np.zeros((4, 4), dtype=np.uint8), np.zeros((3, 4), dtype=np.uint8), [1])
