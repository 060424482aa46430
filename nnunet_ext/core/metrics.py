"""Overlap metric kernels shared by every layer: the one Dice of nnunet-ext (pure numpy / torch).

``nnext evaluate`` (:mod:`nnunet_ext.evaluation.metrics`), the beta search of ``nnext fda select-beta`` and
the training-patch Dice of the ODEx trainer all call :func:`dice`, so they share one definition and one
empty-structure rule.

Dice of a predicted mask ``P`` and a reference mask ``R``::

    dice(P, R) = 2 |P ∩ R| / (|P| + |R|)

Empty-structure rule: when ``P`` and ``R`` are both empty the Dice is **NaN**. A correctly predicted
absence is neither a success nor a failure of the contour, so means exclude it (:func:`mean_dice`,
:func:`nanmean`) and reports count it (``n_both_empty`` of ``nnext evaluate``). When exactly one of them is
empty the Dice is 0 and it stays in every mean.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8), dtype=bool); ref[2:6, 2:6] = True
    >>> pred = np.zeros((8, 8), dtype=bool); pred[2:6, 3:7] = True
    >>> dice(pred, ref)
    0.75
    >>> dice(np.zeros((8, 8), dtype=bool), np.zeros((8, 8), dtype=bool))
    nan
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

#: a boolean mask or an integer label map, as a numpy array or a torch tensor (any device)
Array = np.ndarray | torch.Tensor


def dice(prediction: Array, reference: Array) -> float:
    """Dice coefficient ``2 |P ∩ R| / (|P| + |R|)`` of two boolean masks; NaN when both are empty.

    Args:
        prediction: boolean mask of the predicted structure (numpy array or torch tensor).
        reference: boolean mask of the reference structure, same type and shape (a torch tensor on the
            same device).

    Shape:
        Any, the same for both: 2D ``(H, W)``, 3D ``(D, H, W)``, or a batch such as ``(B, H, W)``, whose
        voxels are then pooled into one Dice.

    Returns:
        The Dice in [0, 1]; NaN when both masks are empty (the module's empty-structure rule); 0 when
        exactly one is empty.

    Raises:
        TypeError: a mask is not a boolean numpy array / torch tensor, or the two are of different kinds.
        ValueError: the shapes differ.
    """
    _check_pair(prediction, reference, boolean=True)
    if isinstance(prediction, np.ndarray):
        total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(reference))
        overlap = int(np.count_nonzero(prediction & reference))
    else:
        total = int(prediction.sum().item()) + int(reference.sum().item())
        overlap = int((prediction & reference).sum().item())
    return math.nan if total == 0 else 2.0 * overlap / total


def mean_dice(prediction: Array, reference: Array, labels: Iterable[int]) -> float:
    """Mean :func:`dice` over ``labels`` of two integer label maps, leaving out labels empty in both.

    Args:
        prediction: predicted label map (integer values; numpy array or torch tensor).
        reference: reference label map, same type and shape.
        labels: label values to average over (background is normally left out).

    Returns:
        The mean over the labels present in the prediction or the reference; NaN when every label is
        absent from both (or ``labels`` is empty).

    Raises:
        TypeError: see :func:`dice`.
        ValueError: the shapes differ.
    """
    _check_pair(prediction, reference, boolean=False)
    return nanmean(dice(prediction == label, reference == label) for label in labels)


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN (Dice of empty structures); NaN when none is left.

    >>> nanmean([1.0, float("nan"), 0.5])
    0.75
    """
    kept = [float(v) for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _check_pair(prediction: Array, reference: Array, boolean: bool) -> None:
    for name, value in (("prediction", prediction), ("reference", reference)):
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if isinstance(prediction, np.ndarray) != isinstance(reference, np.ndarray):
        raise TypeError(
            f"prediction is a {type(prediction).__name__} and reference a {type(reference).__name__}; pass two "
            "numpy arrays or two torch tensors"
        )
    if boolean:
        for name, value in (("prediction", prediction), ("reference", reference)):
            if value.dtype not in (np.dtype(bool), torch.bool):
                raise TypeError(f"{name} must be a boolean mask, got dtype {value.dtype}; pass e.g. label_map == label")
    if tuple(prediction.shape) != tuple(reference.shape):
        raise ValueError(
            f"prediction shape {tuple(prediction.shape)} differs from reference shape {tuple(reference.shape)}; "
            "both must be on the same grid"
        )
