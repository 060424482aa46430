"""Continual evaluation: BWT/FWT/stage gain on hand-computed matrices, R from per-case Dice, the CLI end to end.

Hand-computed 3-stage matrix used below (rows: after stage i, columns: test stage j)::

    R = [[0.9, 0.4, 0.2],
         [0.7, 0.8, 0.5],
         [0.6, 0.7, 0.9]]       b = [0.0, 0.1, 0.3]

    Dice       = (0.6 + 0.7 + 0.9) / 3                      = 0.7333
    BWT        = ((0.6 - 0.9) + (0.7 - 0.8)) / 2            = -0.2     (terms -0.3, -0.1: std 0.1)
    FWT (GEM)  = ((0.4 - 0.1) + (0.5 - 0.3)) / 2            = 0.25     (terms 0.3, 0.2: std 0.05)
    FWT (D-R)  = ((0.4 - 0.1) + (0.2 - 0.3) + (0.5 - 0.3)) / 3 = 0.1333
    stage gain = ((0.8 - 0.4) + (0.9 - 0.5)) / 2            = 0.4
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.main import main
from nnunet_ext.evaluation.continual import (
    backward_transfer,
    continual_result,
    continual_summary,
    forward_transfer,
    stage_folders,
    stage_matrix,
)
from nnunet_ext.streams import Stream, write_stream

R3 = [[0.9, 0.4, 0.2], [0.7, 0.8, 0.5], [0.6, 0.7, 0.9]]
B3 = [0.0, 0.1, 0.3]


def test_hand_computed_three_stage_matrix() -> None:
    s = continual_summary(R3, B3)
    assert s["n_stages"] == 3
    assert s["dice"] == pytest.approx(2.2 / 3) and s["dice_std"] == pytest.approx(np.std([0.6, 0.7, 0.9]))
    assert s["bwt"] == pytest.approx(-0.2) and s["bwt_std"] == pytest.approx(0.1)
    assert s["fwt"] == pytest.approx(0.25) and s["fwt_std"] == pytest.approx(0.05)
    assert s["stage_gain"] == pytest.approx(0.4) and s["stage_gain_std"] == pytest.approx(0.0, abs=1e-12)
    assert forward_transfer(R3, B3, "diaz_rodriguez") == pytest.approx(0.4 / 3)
    assert backward_transfer(R3) == pytest.approx(-0.2)


def test_limit_cases() -> None:
    no_forgetting = np.triu(np.ones((4, 4))) * 0.5 + np.tril(np.ones((4, 4)), -1) * 0.5
    assert backward_transfer(no_forgetting) == 0.0                      # constant columns: nothing forgotten
    assert math.isnan(continual_summary(R3)["fwt"])                     # no baseline: FWT undefined
    one = continual_summary([[0.8]], [0.1])
    assert one["dice"] == pytest.approx(0.8) and math.isnan(one["bwt"]) and math.isnan(one["fwt"])


@pytest.mark.parametrize("R, b, match", [
    ([[0.1, 0.2]], None, "square N x N"),
    ([], None, "square N x N"),
    (R3, [0.1, 0.2], "one value b_j per stage"),
])
def test_bad_arguments(R, b, match) -> None:
    with pytest.raises(ValueError, match=match):
        continual_summary(R, b)
    with pytest.raises(ValueError, match="variant must be"):
        forward_transfer(R3, B3, "gem")


def _stream(test=(("t0a", "t0b"), ("t1",))) -> Stream:
    return Stream.from_dict({"stages": [{"train": [f"c{i}"], "test": list(t)} for i, t in enumerate(test)]},
                            source="s.json")


def test_matrix_from_case_dice_skips_both_empty_cases() -> None:
    dice = [{"t0a": 1.0, "t0b": 0.5, "t1": 0.2}, {"t0a": 0.5, "t0b": math.nan, "t1": math.nan}]
    R = stage_matrix(_stream(), dice)
    np.testing.assert_allclose(R, [[0.75, 0.2], [0.5, math.nan]])
    with pytest.raises(ValueError, match=r"no Dice for 1 test case\(s\) of the stream: \['t1'\]"):
        stage_matrix(_stream(), [dice[0], {"t0a": 1.0, "t0b": 1.0}])
    with pytest.raises(ValueError, match="after each of the 2 stages, got 1"):
        stage_matrix(_stream(), dice[:1])
    with pytest.raises(ValueError, match=r"s.json: stage\(s\) \[1\] have no 'test' cases"):
        stage_matrix(_stream((("t0a",), ())), dice)
    with pytest.raises(ValueError, match="unknown methods"):
        continual_result(_stream(), {"a": dice}, pool_sizes={"b": 2})


def test_stage_folders() -> None:
    assert stage_folders("p/after{stage}", 2) == [Path("p/after0"), Path("p/after1")]
    assert stage_folders("p/base", 2, require_placeholder=False) == [Path("p/base")] * 2
    with pytest.raises(ValueError, match=r"must contain \{stage\}"):
        stage_folders("p/after", 2)


# ---- CLI on a synthetic dataset: 3 test cases, a 4x4 square each; shifted by one column -> Dice 0.75 ----

def _label(path: Path, shift: int | None) -> None:
    a = np.zeros((1, 8, 8), np.uint8)
    if shift is not None:
        a[0, 2:6, 2 + shift:6 + shift] = 1
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "Dataset900_X"
    (folder / "labelsTs").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "square": 1},
                                                     "file_ending": ".nii.gz", "channel_names": {"0": "T1"}}))
    for case in ("t0a", "t0b", "t1"):
        _label(folder / "labelsTs" / f"{case}.nii.gz", 0)
    write_stream(_stream(), folder)
    # method "seq": after stage 0 perfect on stage 0, empty on stage 1; after stage 1 forgets stage 0 a little
    shifts = {0: {"t0a": 0, "t0b": 0, "t1": None}, 1: {"t0a": 1, "t0b": 0, "t1": 0}}
    for stage, cases in shifts.items():
        out = tmp_path / "preds" / "seq" / f"after{stage}"
        out.mkdir(parents=True)
        for case, shift in cases.items():
            _label(out / f"{case}.nii.gz", shift)
    (tmp_path / "preds" / "base").mkdir()
    for case in ("t0a", "t0b", "t1"):
        _label(tmp_path / "preds" / "base" / f"{case}.nii.gz", 1)
    return folder


def test_cli_writes_matrix_report_and_rerenders_from_json(dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    argv = ["evaluate-continual", "--stream", str(dataset), "--ref", str(dataset / "labelsTs"),
            "--method", f"Seq={tmp_path}/preds/seq/after{{stage}}", "--baseline", str(tmp_path / "preds" / "base"),
            "--pool-size", "Seq=1", "-o", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "continual.json").read_text())
    seq = result["methods"]["Seq"]
    np.testing.assert_allclose(seq["R"], [[1.0, 0.0], [0.875, 1.0]])
    assert seq["summary"]["bwt"] == pytest.approx(-0.125)
    assert seq["summary"]["fwt"] == pytest.approx(0.0 - 0.75)         # b_1 = 0.75 (shifted baseline)
    assert seq["summary"]["stage_gain"] == pytest.approx(1.0) and seq["pool_size"] == 1
    assert result["baseline"]["b"] == pytest.approx([0.75, 0.75])
    md = (out / "continual.md").read_text()
    assert "| Seq | 0.938 ± 0.062 | -0.125 ± 0.000 | -0.750 ± 0.000 | 1.000 ± 0.000 | 1 |" in md
    assert (out / "continual.png").read_bytes()[:4] == b"\x89PNG"
    assert "| Seq |" in capsys.readouterr().out

    again = tmp_path / "again"
    assert main(["evaluate-continual", "--stream", str(dataset), "--dice-json", str(out / "continual.json"),
                 "-o", str(again)]) == 0
    rerendered = json.loads((again / "continual.json").read_text())
    assert rerendered["methods"]["Seq"]["R"] == seq["R"] and rerendered["baseline"]["b"] == result["baseline"]["b"]


def test_cli_errors(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate-continual", "--stream", str(dataset), "--ref", str(dataset / "labelsTs"), "-o", str(tmp_path / "o")]
    assert main(base + ["--method", f"Seq={tmp_path}/preds/seq/after"]) == 2
    assert "must contain {stage}" in capsys.readouterr().err
    (tmp_path / "preds" / "seq" / "after1" / "t1.nii.gz").unlink()
    assert main(base + ["--method", f"Seq={tmp_path}/preds/seq/after{{stage}}"]) == 2
    assert "t1" in capsys.readouterr().err
    assert main(base + ["--method", "Seq"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    stream = json.loads((dataset / "stream.json").read_text())
    stream["stages"][1]["test"] = ["nope"]
    (dataset / "stream.json").write_text(json.dumps(stream))
    assert main(base + ["--method", f"Seq={tmp_path}/preds/seq/after{{stage}}"]) == 2
    assert "stage 1 'test' names 1 case(s) not found in imagesTs: ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
