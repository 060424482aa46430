"""Fourier MST with the stock commands: train -> nnUNetv2_predict, and nnext fda attach on a stock model ->
nnUNetv2_predict_from_modelfolder; select-beta on labelled data. Tiny real MRI, CPU, numeric bounds."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e

TRAINER = "nnUNetTrainerFourierMST_smoke"


def _evaluate(pred: Path, ws, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref",
                           str(ws.dataset_dir / "labelsTs"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "evaluation.json").read_text())["domains"]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_trained_model_predicts_with_its_bank(tiny_workspace, tmp_path):
    ws = tiny_workspace
    env = dict(ws.env, nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, TRAINER), env, tmp_path / "train.log")
    model = ws.model_dir(TRAINER)
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER and ckpt["network_weights"]["bank.donors"].shape[0] > 0
    assert "Fourier style bank:" in next((model / "fold_0").glob("training_log_*.txt")).read_text()

    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0, TRAINER),
                    ws.env, tmp_path / "predict.log")
    domains = _evaluate(pred, ws, tmp_path / "eval")
    assert domains["mni152"]["foreground_mean"]["dice"]["mean"] > 0.5


def test_attach_to_a_stock_model_keeps_the_original_and_predicts(smoke_model, tiny_workspace, tmp_path):
    ws = tiny_workspace
    before = _fingerprint(smoke_model)
    new = tmp_path / "mst_model"
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "fda", "attach", str(smoke_model), "-o", str(new),
                           "--beta", "0.02", "--n-mst", "3"], capture_output=True, text=True, env=ws.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _fingerprint(smoke_model) == before
    report = json.loads((new / "fda_bank.json").read_text())
    assert report["folds"]["0"]["beta"] == 0.02 and report["folds"]["0"]["n_mst"] == 3 and report["folds"]["0"]["num_donors"] > 0

    again = subprocess.run([sys.executable, "-m", "nnunet_ext", "fda", "attach", str(smoke_model), "-o", str(new)],
                           capture_output=True, text=True, env=ws.env)
    assert again.returncode == 2 and "exists" in again.stderr

    plain, mst = tmp_path / "plain", tmp_path / "mst"
    for model, out in ((smoke_model, plain), (new, mst)):
        cmd.run_command(["nnUNetv2_predict_from_modelfolder", "-i", str(ws.dataset_dir / "imagesTs"), "-o", str(out),
                         "-m", str(model), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"],
                        ws.env, tmp_path / f"{out.name}.log")
    plain_d, mst_d = _evaluate(plain, ws, tmp_path / "e_plain"), _evaluate(mst, ws, tmp_path / "e_mst")
    # the paper: transfer must not destroy the no-shift case
    p, m = (d["mni152"]["foreground_mean"]["dice"]["mean"] for d in (plain_d, mst_d))
    assert m > p - 0.1, (p, m)


def test_select_beta_on_labelled_targets(smoke_model, tiny_workspace, tmp_path):
    ws = tiny_workspace
    new = tmp_path / "mst_model"
    from nnunet_ext.cli.fda import attach

    attach(smoke_model, new, images=ws.dataset_dir / "imagesTr", overrides={"n_mst": 2})
    out = tmp_path / "beta"
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "fda", "select-beta", str(new), "--target", "train",
                           str(ws.dataset_dir / "imagesTr"), str(ws.dataset_dir / "labelsTr"), "--betas", "0", "0.05",
                           "-o", str(out)], capture_output=True, text=True, env=ws.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "beta_grid.json").read_text())
    assert result["betas"] == [0.0, 0.05] and len(result["dice"]["train"]) == 2
    assert all(0.3 < d <= 1.0 for d in result["dice"]["train"])  # a trained model on its own training cases
    assert result["averaged_optimal"] in (0.0, 0.05) and (out / "beta_grid.png").stat().st_size > 1000
