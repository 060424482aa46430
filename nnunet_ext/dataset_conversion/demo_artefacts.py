"""Simulated scanners of the slab demo datasets: TorchIO artefact chains of three severities.

These are filters, not physics: a gamma contrast change, a polynomial bias field, motion, ghosting and noise
(:data:`SEVERITIES`) applied to a real image, so the shifted domains keep the real image's anatomy and
labels. The physics-based scanners of the ``brain_scanners`` dataset live in
:mod:`nnunet_ext.dataset_conversion.brain_scanners`.

Determinism: a severity's artefact is drawn from ``torch.manual_seed(seed * len(SEVERITIES) + k)`` (``k`` =
the severity's position in :data:`SEVERITIES`) inside :func:`torch.random.fork_rng`, so the caller's random
state is untouched and a severity's artefact does not depend on which other severities are requested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

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


def severity_seed(seed: int, severity: str) -> int:
    """The torch seed of ``severity``'s artefact for the base ``seed``."""
    return seed * len(SEVERITIES) + list(SEVERITIES).index(severity)


def transform_record(severity: str, seed: int) -> dict[str, Any]:
    """JSON description of the simulated scanner stored under the domain's ``transform``."""
    import torchio as tio

    return {
        "name": "Compose",
        "library": f"torchio {tio.__version__}",
        "severity": severity,
        "seed": severity_seed(seed, severity),
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
        torch.manual_seed(severity_seed(seed, severity))
        shifted = scanner(tio.ScalarImage(tensor=torch.as_tensor(data, dtype=torch.float32) / scale, affine=affine))
    out = sitk.GetImageFromArray((shifted.data[0].numpy().T * scale).astype(np.float32))
    out.CopyInformation(image)
    return out
