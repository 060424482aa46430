"""``nnext demo``'s progress wiring, with the nnU-Net commands and the evaluation replaced by fakes (no
training runs): one plain line per step and per epoch on standard error when it is not a terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnunet_ext.cli import demo
from nnunet_ext.dataset_conversion import demo_data
from nnunet_ext.evaluation import per_domain
from nnunet_ext.utils import nnunet_commands

LINE = re.compile(r"^\[\d\d:\d\d \+\d+:\d\d\] (?P<text>.*)$")


def test_demo_prints_a_line_per_step_and_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    dataset = work / "nnUNet_raw" / "Dataset990_DemoMNITissue"
    dataset.mkdir(parents=True)
    (work / "nnUNet_preprocessed" / dataset.name).mkdir(parents=True)
    (work / "nnUNet_preprocessed" / dataset.name / "nnUNetPlans.json").write_text("{}")
    commands = []

    def fake_run_command(argv, env, log_file, on_line=None, cwd=None):
        commands.append(argv[0])
        if argv[0] == "nnUNetv2_train":
            for epoch in (0, 1):
                on_line(f"2024-05-01 12:00:0{epoch}.000000: Epoch {epoch}")

    def fake_compare_report(results, out_dir, title):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "comparison.md").write_text("| trainer | Dice |\n")

    monkeypatch.setattr(demo_data, "demo_dataset_folder", lambda name, dataset_id, raw: dataset)
    monkeypatch.setattr(nnunet_commands, "run_command", fake_run_command)
    monkeypatch.setattr(per_domain, "evaluate_folder", lambda *args, **kwargs: {})
    monkeypatch.setattr(per_domain, "write_report", lambda *args, **kwargs: None)
    monkeypatch.setattr(per_domain, "compare_report", fake_compare_report)

    demo.run_demo(demo.DemoConfig(workdir=work, trainers=("nnUNetTrainerCPU_demo",)))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line)["text"] for line in lines][:-1] == [
        "demo 1/5: building embedded real-MRI dataset",
        f"demo: reusing {dataset}",
        "demo 2/5: nnUNetv2_plan_and_preprocess",
        "demo 3/5: nnUNetv2_train -tr nnUNetTrainerCPU_demo",
        "demo: nnUNetTrainerCPU_demo epoch 0",
        "demo: nnUNetTrainerCPU_demo epoch 1",
        "demo 4/5: nnUNetv2_predict -tr nnUNetTrainerCPU_demo",
        "demo 5/5: nnext evaluate (nnUNetTrainerCPU_demo)",
    ]
    assert LINE.match(lines[-1])["text"].startswith("demo: done, 5 steps in ")
    assert commands == ["nnUNetv2_train", "nnUNetv2_predict"]
    assert "| trainer | Dice |" in captured.out
