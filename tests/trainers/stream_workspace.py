"""A copy of the tiny workspace's preprocessed dataset with a ``stream.json``, for stream-trainer tests."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from nnunet_ext.streams import Stream, write_stream

TWO_STAGES = {"format_version": 1, "scenario": "test", "stages": [
    {"stage": 0, "train": ["mni152_slab00", "mni152_slab01", "mni152_slab03"], "val": ["mni152_slab04"]},
    {"stage": 1, "train": ["mni152_slab06", "mni152_slab07"], "val": []},
]}


def stream_workspace(ws, root: Path, stream: dict = TWO_STAGES):
    """``ws`` with its preprocessed dataset copied under ``root`` and ``stream`` written beside it."""
    pre = root / "nnUNet_preprocessed"
    target = pre / ws.dataset_dir.name
    if not target.exists():
        shutil.copytree(ws.preprocessed / ws.dataset_dir.name, target)
    write_stream(Stream.from_dict(stream), target)
    return dataclasses.replace(ws, preprocessed=pre, env=dict(ws.env, nnUNet_preprocessed=str(pre)))
