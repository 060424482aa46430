"""``nnext fda attach`` loads the model folder's checkpoints without running code from them."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_ext.cli.fda import attach
from nnunet_ext.cli.main import UserError
from tests.payload import Payload
from tests.trainers.plans_only import DATASET_JSON, PLANS


def test_attach_refuses_a_checkpoint_that_would_run_code(tmp_path):
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(PLANS))
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    marker = tmp_path / "marker"
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "init_args": {"configuration": "2d"}, "payload": Payload(marker)}, checkpoint)
    with pytest.raises(UserError) as error:
        attach(model, tmp_path / "out")
    assert str(checkpoint) in str(error.value) and "only load model folders you trust" in str(error.value).lower()
    assert not marker.exists() and not (tmp_path / "out").exists()
