"""Commands that predict with nnU-Net's ``nnUNetPredictor`` (which unpickles with ``weights_only=False``) refuse a
checkpoint carrying code before nnU-Net loads it: ``fda select-beta``, ``odex explain``, ``evaluate-continual``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ext.cli import evaluate_continual, fda, odex
from tests.payload import Payload
from tests.trainers.plans_only import DATASET_JSON, PLANS


def _model(tmp_path: Path, checkpoint: str) -> tuple[Path, Path, Path]:
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(PLANS))
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    marker = tmp_path / "marker"
    path = model / "fold_0" / checkpoint
    torch.save({"network_weights": {}, "init_args": {"configuration": "2d"}, "trainer_name": "nnUNetTrainer",
                "payload": Payload(marker)}, path)
    return model, path, marker


def _images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for channel in range(len(DATASET_JSON["channel_names"])):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)),
                        str(images / f"case_{channel:04d}{DATASET_JSON['file_ending']}"))
    return images


def _refused(call, path: Path, marker: Path) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert str(path) in str(error.value) and "trust" in str(error.value).lower()
    assert not marker.exists()


def test_select_beta_refuses_before_nnunet_loads(tmp_path):
    model, path, marker = _model(tmp_path, "checkpoint_final.pth")
    images = _images(tmp_path)
    _refused(lambda: fda.select_beta(model, [("t", images, images)], [0.0], None, "checkpoint_final.pth"), path,
             marker)


def test_odex_explain_refuses_before_nnunet_loads(tmp_path):
    model, path, marker = _model(tmp_path, "checkpoint_final.pth")
    _refused(lambda: odex.explain(model, _images(tmp_path), tmp_path / "out.jsonl", "0", device="cpu"), path, marker)


def test_evaluate_continual_refuses_every_stage_before_predicting(tmp_path):
    model, path, marker = _model(tmp_path, "checkpoint_stage_1.pth")
    torch.save({"network_weights": {}}, model / "fold_0" / "checkpoint_stage_0.pth")
    _refused(lambda: evaluate_continual._stage_checkpoints(model, 0, "checkpoint_stage_{stage}.pth", 2), path,
             marker)
