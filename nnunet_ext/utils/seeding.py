"""Seeding of the global generators nnU-Net draws from (no nnunetv2 import: safe before its paths are set)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (nnU-Net's weight init, patch sampling, augmentation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
