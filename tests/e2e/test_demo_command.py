"""``nnext demo`` orchestration on the session's tiny workspace: it reuses the built data, the plans and the
trained smoke model (as a rerun in the same workdir does), predicts with the stock command and reports."""

import json

import pytest

from nnunet_ext.cli.demo import DemoConfig, run_demo

pytestmark = pytest.mark.e2e


def test_demo_reuses_finished_steps_and_writes_comparison(tiny_workspace, smoke_model):
    ckpt = smoke_model / "fold_0" / "checkpoint_final.pth"
    before = ckpt.stat().st_mtime
    results = run_demo(DemoConfig(workdir=tiny_workspace.root, dataset="mni-tissue", id_override=tiny_workspace.dataset_id,
                                  trainers=("nnUNetTrainerCPU_smoke",), profile="tiny"))
    assert ckpt.stat().st_mtime == before, "a finished training must be reused, not redone"
    evaluation = tiny_workspace.root / "evaluation"
    comparison = json.loads((evaluation / "comparison.json").read_text())
    assert comparison["runs"] == ["nnUNetTrainerCPU_smoke"]
    assert set(comparison["domains"]) == {"mni152", "mni152_sim_mild", "mni152_sim_moderate", "mni152_sim_severe"}
    assert (evaluation / "comparison.png").stat().st_size > 1000
    assert (evaluation / "nnUNetTrainerCPU_smoke" / "evaluation.json").is_file()
    dice = results["nnUNetTrainerCPU_smoke"]["domains"]["mni152"]["foreground_mean"]["dice"]["mean"]
    assert 0.3 < dice <= 1.0
