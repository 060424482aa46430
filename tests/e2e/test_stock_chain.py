"""The whole chain with the stock nnU-Net commands on tiny real MRI (CPU): plan -> train (our trainer,
found through our discovery) -> nnUNetv2_predict -> nnext evaluate, with numeric bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e


def test_checkpoint_holds_our_trainer_and_training_learned(smoke_model: Path):
    import torch

    ckpt = torch.load(smoke_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerCPU_smoke"
    assert ckpt["current_epoch"] == 4
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    assert (smoke_model / "fold_0" / "validation" / "summary.json").is_file()


def _best_constant_dice(label_files: list[Path]) -> float:
    """Mean foreground Dice of the best 'every voxel is label k' prediction: what an untrained net can score."""
    refs = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in label_files]
    best = 0.0
    for k in (1, 2):
        per_case = []
        for ref in refs:
            dice = [2 * (ref == c).sum() * (c == k) / ((ref == c).sum() + ref.size * (c == k)) for c in (1, 2)]
            per_case.append(np.mean(dice))
        best = max(best, float(np.mean(per_case)))
    return best


def test_stock_predict_and_per_domain_evaluation(smoke_model, tiny_workspace, tmp_path):
    ws = tiny_workspace
    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0,
                                     "nnUNetTrainerCPU_smoke"), ws.env, tmp_path / "predict.log")
    log = (tmp_path / "predict.log").read_text()
    assert "Using trainer 'nnUNetTrainerCPU_smoke' from:" in log

    inputs = sorted(p.name[: -len("_0000.nii.gz")] for p in (ws.dataset_dir / "imagesTs").glob("*_0000.nii.gz"))
    outputs = sorted(p.name[: -len(".nii.gz")] for p in pred.glob("*.nii.gz"))
    assert outputs == inputs
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{outputs[0]}.nii.gz")))
    assert set(np.unique(seg)) <= {0, 1, 2}

    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref", str(ws.dataset_dir / "labelsTs"),
         "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.md").is_file() and (out / "evaluation.png").stat().st_size > 1000
    domains = result["domains"]
    assert set(domains) == {"mni152", "mni152_sim_mild", "mni152_sim_moderate", "mni152_sim_severe"}
    in_domain = domains["mni152"]["foreground_mean"]["dice"]["mean"]
    in_domain_refs = [ws.dataset_dir / "labelsTs" / f"{c}.nii.gz" for c, m in result["cases"].items()
                      if m["domain"] == "mni152"]
    # 60 SGD iterations on 4 slabs separate grey from white matter far above a constant prediction
    assert in_domain > _best_constant_dice(in_domain_refs) + 0.2, in_domain
    severe = domains["mni152_sim_severe"]["foreground_mean"]["dice"]["mean"]
    assert np.isfinite(severe) and 0.0 <= severe <= 1.0
