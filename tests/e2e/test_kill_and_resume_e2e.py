"""A real ``kill -9`` of ``nnUNetv2_train``, then ``nnUNetv2_train --c``: the resumed run equals an uninterrupted one.

The in-process resume tests (``tests/trainers/test_resume.py``) stop a run with an exception; this one kills the
stock command's process group with SIGKILL as soon as its first periodic checkpoint appears, so the checkpoint
that ``--c`` resumes from is whatever the atomic save left on disk. The trainer is the session's seeded smoke
trainer (``nnUNetTrainerCPU_smoke``, 4 epochs, trained uninterrupted by the ``smoke_model`` fixture) with a
checkpoint after every epoch, in a module of a folder in ``nnUNet_extTrainer`` as a user would add one;
nnU-Net's single-threaded augmenter (``nnUNet_n_proc_DA=0``) makes the seeded runs repeatable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from nnunet_ext.utils import nnunet_commands as cmd
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerCPU_smokeKillProbe"
PROBE = f'''
import torch

from nnunet_ext.trainers.budget import nnUNetTrainerCPU_smoke


class {TRAINER}(nnUNetTrainerCPU_smoke):
    """The smoke budget (4 epochs, seed 0) with checkpoint_latest.pth after every epoch."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1
'''


def _env(ws, root: Path, results: str) -> dict[str, str]:
    probe_dir = root / "probe_trainers"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "kill_probe.py").write_text(PROBE)
    (root / results).mkdir(exist_ok=True)
    env = dict(ws.env, nnUNet_n_proc_DA="0", nnUNet_results=str(root / results))
    env["nnUNet_extTrainer"] = str(probe_dir)  # our own folder is appended at interpreter start-up
    return env


def _fold(env: dict[str, str], ws) -> Path:
    return Path(env["nnUNet_results"]) / ws.dataset_dir.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"


def test_a_killed_training_resumes_with_c_to_the_uninterrupted_result(tiny_workspace, smoke_model, tmp_path):
    ws = tiny_workspace
    argv = cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER)
    env = _env(ws, tmp_path, "killed")
    fold = _fold(env, ws)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not (fold / "checkpoint_latest.pth").exists():
            assert process.poll() is None, f"training ended before its first checkpoint; see {tmp_path / 'killed.log'}"
            assert time.monotonic() < deadline, "no checkpoint_latest.pth within 300 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (fold / "checkpoint_final.pth").exists()
    assert [p.name for p in fold.iterdir() if p.name.endswith(".tmp")] == []
    stopped_at = load_checkpoint_safely(fold / "checkpoint_latest.pth")["current_epoch"]
    assert 1 <= stopped_at < 4

    cmd.run_command([*argv, "--c"], env, tmp_path / "resumed.log")
    assert "checkpoint_latest.pth" not in os.listdir(fold)  # nnU-Net removes it at the end of training
    resumed = load_checkpoint_safely(fold / "checkpoint_final.pth", map_location="cpu")
    expected = load_checkpoint_safely(smoke_model / "fold_0" / "checkpoint_final.pth", map_location="cpu")
    assert resumed["current_epoch"] == expected["current_epoch"] == 4
    for key in ("train_losses", "val_losses", "dice_per_class_or_region"):  # nnU-Net's per-epoch log
        assert resumed["logging"][key] == expected["logging"][key], key
    weights, reference = resumed["network_weights"], expected["network_weights"]
    assert weights.keys() == reference.keys()
    assert [k for k in weights if not torch.equal(weights[k], reference[k])] == []
