"""``nnext evaluate-continual --model``: stage checkpoints -> nnU-Net's predictor -> R, on tiny real MRI (CPU).

The stock smoke model (conftest) stands in for a stream trainer: its final checkpoint is copied as
``checkpoint_stage_0.pth`` and ``checkpoint_stage_1.pth``. The two models are then identical, so the two rows
of R must be equal (BWT = stage gain = 0 exactly), and the predictions must be those of the stock
``nnUNetv2_predict`` path. Stage 0 tests on the real test slabs, stage 1 on the simulated-severe scanner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.domains import load_domains
from nnunet_ext.streams import Stage, Stream, write_stream

pytestmark = pytest.mark.e2e


def test_model_stage_checkpoints_are_predicted_and_evaluated(smoke_model: Path, tiny_workspace, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ws = tiny_workspace
    model = tmp_path / smoke_model.name
    shutil.copytree(smoke_model, model)
    for k in (0, 1):
        shutil.copyfile(model / "fold_0" / "checkpoint_final.pth", model / "fold_0" / f"checkpoint_stage_{k}.pth")
    meta = load_domains(ws.dataset_dir)
    train = meta.cases_of("mni152", "train")
    stream = Stream((Stage(0, tuple(train[:3]), (), tuple(meta.cases_of("mni152", "test"))),
                     Stage(1, tuple(train[3:]), (), tuple(meta.cases_of("mni152_sim_severe", "test")))))
    stream_file = write_stream(stream, tmp_path / "stream.json")
    out = tmp_path / "report"
    argv = ["evaluate-continual", "--stream", str(stream_file), "--ref", str(ws.dataset_dir / "labelsTs"),
            "--model", f"Smoke={model}", "--disable-tta", "-o", str(out)]

    (model / "fold_0" / "checkpoint_stage_1.pth").rename(model / "fold_0" / "spare.pth")
    assert main(argv) == 2
    assert "missing ['checkpoint_stage_1.pth']" in capsys.readouterr().err and not out.exists()
    (model / "fold_0" / "spare.pth").rename(model / "fold_0" / "checkpoint_stage_1.pth")

    assert main(argv) == 0
    for k, stage in enumerate(stream.stages):
        predicted = sorted(p.name[: -len(".nii.gz")] for p in (out / "predictions" / "Smoke" / f"after{k}").glob("*.nii.gz"))
        assert predicted == sorted(c for s in stream.stages for c in s.test)
    result = json.loads((out / "continual.json").read_text())
    R = np.array(result["methods"]["Smoke"]["R"])
    assert R.shape == (2, 2) and np.array_equal(R[0], R[1])
    assert 0.3 < R[0, 0] <= 1 and 0 <= R[0, 1] <= 1       # the smoke model learned something on real slabs
    summary = result["methods"]["Smoke"]["summary"]
    assert summary["bwt"] == 0 and summary["stage_gain"] == 0
    assert result["settings"]["models"] == {"Smoke": str(model)} and result["settings"]["tta"] is False
