"""EWC and LwF through the stock ``nnUNetv2_train`` / ``nnUNetv2_predict`` on a 2-stage tiny real-MRI stream (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ext.domains import load_domains
from nnunet_ext.trainers.stream import STREAM_CHECKPOINT_KEY
from nnunet_ext.utils import nnunet_commands as cmd
from tests.trainers.stream_workspace import stream_workspace

pytestmark = pytest.mark.e2e


def _foreground_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    scores = [2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c))
              for c in np.unique(ref) if c != 0]
    return float(np.mean(scores))


@pytest.mark.parametrize("trainer,state_key", [("nnUNetTrainerEWC_smoke", "ewc"), ("nnUNetTrainerLwF_smoke", "lwf")])
def test_stock_train_and_predict(trainer, state_key, tiny_workspace, tmp_path):
    meta = load_domains(tiny_workspace.dataset_dir)
    train, test = meta.cases_of("mni152", "train"), meta.cases_of("mni152", "test")
    stream = {"format_version": 1, "scenario": "test", "stages": [
        {"stage": 0, "train": train[:3], "val": train[3:4], "test": test},
        {"stage": 1, "train": train[4:6], "val": []}]}
    ws = stream_workspace(tiny_workspace, tmp_path, stream)
    results = tmp_path / "results"
    env = dict(ws.env, nnUNet_results=str(results), nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, trainer), env, tmp_path / "train.log")

    fold = results / ws.dataset_dir.name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    for k in (0, 1):
        state = torch.load(fold / f"checkpoint_stage_{k}.pth", map_location="cpu", weights_only=False)
        assert state[STREAM_CHECKPOINT_KEY]["stages_done"] == k + 1 and state_key in state[STREAM_CHECKPOINT_KEY]
    log = json.loads((fold / f"{state_key}.json").read_text())
    assert log["stage"] == [0, 0, 1, 1] and log["train_regularization"][:2] == [0.0, 0.0]
    assert min(log["train_regularization"][2:]) > 0
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's final validation ran

    images = tmp_path / "images"
    images.mkdir()
    for case in test:
        shutil.copyfile(ws.dataset_dir / "imagesTs" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    out = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(images, out, ws.dataset_id, "2d", 0, trainer) + ["--disable_tta"], env,
                    tmp_path / "predict.log")
    dice = [_foreground_dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))),
                             sitk.GetArrayFromImage(sitk.ReadImage(str(ws.dataset_dir / "labelsTs" / f"{case}.nii.gz"))))
            for case in test]
    assert np.mean(dice) > 0.3, dice  # the final model still segments stage 0's test slabs
