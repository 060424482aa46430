"""The DDP tests' workspace: the session's tiny dataset with a two-stage stream, passed to spawned ranks as paths."""

from __future__ import annotations

import dataclasses

import pytest

from tests.trainers.stream_workspace import stream_workspace


@pytest.fixture(scope="session")
def ddp_workspace(tiny_workspace, tmp_path_factory):
    """A copy of the tiny preprocessed dataset with ``stream.json`` and its own results folder.

    ``nnUNet_def_n_proc=1``: nnU-Net's final validation starts that many export processes per rank.
    """
    root = tmp_path_factory.mktemp("ddp")
    ws = stream_workspace(tiny_workspace, root)
    results = root / "nnUNet_results"
    return dataclasses.replace(ws, results=results, env=dict(ws.env, nnUNet_results=str(results),
                                                               nnUNet_def_n_proc="1"))
