"""Seeding of the global generators nnU-Net draws from (no nnunetv2 import: safe before its paths are set).

:func:`get_rng_state` / :func:`set_rng_state` capture and restore all of them, as plain Python values and
tensors (loadable with ``torch.load(weights_only=True)``), so a resumed training run continues the random
sequence of the run it resumes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (nnU-Net's weight init, patch sampling, augmentation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed DDP rank ``rank`` of a run seeded with ``seed`` uses.

    Rank 0 keeps ``seed`` (a single-process run is unchanged). Every other rank gets a number derived from
    ``(seed, rank)`` with numpy's ``SeedSequence``. With one seed on every rank the ranks' generators would
    start equal, and ranks that sample alike (nnU-Net gives several ranks the same foreground oversampling
    once the batch is split over more than two) would draw the same patches and augmentations, training on
    one rank's data several times over; with ``seed + rank``, rank 1 of seed 0 would repeat rank 0 of seed 1.

    Example:
        >>> rank_seed(3, 0), rank_seed(3, 1) == rank_seed(3, 1), rank_seed(3, 1) != rank_seed(4, 0)
        (3, True, True)
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0])


def get_rng_state() -> dict[str, Any]:
    """The state of python's, numpy's, torch's CPU and (once initialised) CUDA generators.

    Returns:
        ``{"python": ..., "numpy": {...}, "torch": ByteTensor[, "cuda": [ByteTensor per device]]}``; numpy's
        key is stored as an int64 tensor so that no numpy array is pickled.
    """
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`get_rng_state` result (tensors may have been loaded onto any device).

    The CUDA states are restored only when the same number of CUDA devices is visible.
    """
    random.setstate(_as_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].cpu().numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _as_python_state(value: Any) -> tuple:
    """``random.setstate`` needs tuples; a checkpoint round trip may give lists."""
    version, internal, gauss_next = value
    return int(version), tuple(int(v) for v in internal), gauss_next
