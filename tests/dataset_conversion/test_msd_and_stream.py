"""Decathlon conversion through nnunetv2's converter, and the Decathlon + HarP + Dryad hippocampus stream."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion.common import ConversionError
from nnunet_ext.dataset_conversion.hippocampus_stream import build_hippocampus_stream
from nnunet_ext.dataset_conversion.splits import stage_weights
from nnunet_ext.dataset_conversion.msd import convert_msd
from nnunet_ext.domains import load_domains
from tests.dataset_conversion.layouts import (
    make_dryad,
    make_harp,
    make_task04,
    save,
    snapshot,
)


def test_msd_reuses_nnunetv2_converter_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task04(tmp_path / "download" / "Task04_Hippocampus")  # doubled folder after unpacking
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "elsewhere"))      # must not be written to
    before = snapshot(tmp_path / "download")
    folder = convert_msd(tmp_path / "download" / "Task04_Hippocampus", 4, tmp_path / "raw")
    assert snapshot(tmp_path / "download") == before and not (tmp_path / "elsewhere").exists()
    assert folder == tmp_path / "raw" / "Dataset004_Hippocampus"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2} and dj["channel_names"] == {"0": "MRI"}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"hippocampus_00{i}_0000.nii.gz" for i in range(1, 5)]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["hippocampus_005_0000.nii.gz"]
    meta = load_domains(folder)
    assert set(meta.domains) == {"msd_Hippocampus"} and len(meta.cases_of("msd_Hippocampus", "train")) == 4
    assert json.loads((folder / "splits_final.json").read_text())[0]["val"]
    assert convert_msd(task, 4, tmp_path / "raw") == folder  # idempotent


def test_msd_problems_are_listed(tmp_path: Path) -> None:
    task = make_task04(tmp_path / "Task04_Hippocampus")
    (task / "labelsTr" / "hippocampus_002.nii.gz").unlink()
    save(np.full((9, 12, 10), 5, np.uint8), np.eye(4), task / "labelsTr" / "hippocampus_003.nii.gz")
    with pytest.raises(ConversionError) as info:
        convert_msd(task, 4, tmp_path / "raw")
    assert "hippocampus_002.nii.gz: found no label" in str(info.value)
    assert "hippocampus_003.nii.gz: found label values [5]" in str(info.value)
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {"decathlon": make_task04(tmp_path / "dl" / "Task04_Hippocampus", num_train=6),
            "harp": make_harp(tmp_path / "dl" / "HarP"), "dryad": make_dryad(tmp_path / "dl" / "Dryad")}


def test_stream_merges_labels_crops_sides_and_maps_stages_to_folds(sources: dict[str, Path], tmp_path: Path) -> None:
    before = snapshot(tmp_path / "dl")
    folder = build_hippocampus_stream(601, tmp_path / "raw", num_stages=3, test_fraction=0.0, **sources)
    assert snapshot(tmp_path / "dl") == before
    meta = load_domains(folder)
    assert list(meta.domains) == ["harp", "dryad", "decathlon"]
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "hippocampus": 1}
    assert len(meta.cases) == 6 + 3 * 2 + 3 * 2
    for label in folder.glob("labels*/*.nii.gz"):
        values = set(np.unique(np.asanyarray(nib.load(str(label)).dataobj)).tolist())
        assert values == {0, 1}, label.name
    offset = meta.cases["harp_ADNI_002_S_0413_2_L"]
    assert offset["label_offset"] == pytest.approx(26896.988, abs=1e-3)
    assert meta.cases["harp_ADNI_002_S_0295_1_L"]["subject"] == meta.cases["harp_ADNI_002_S_0295_1_R"]["subject"]
    crop = nib.load(str(folder / "imagesTr" / "dryad_s01_L_0000.nii.gz"))
    assert crop.shape[0] < 22 and np.allclose(crop.header.get_zooms(), 0.8)
    splits = json.loads((folder / "splits_final.json").read_text())
    stream = json.loads((folder / "stream.json").read_text())
    assert len(splits) == len(stream["stages"]) == 3
    first = {meta.cases[c]["domain"] for c in splits[0]["train"] + splits[0]["val"]}
    last = {meta.cases[c]["domain"] for c in splits[-1]["train"] + splits[-1]["val"]}
    assert first == {"harp"} and last == {"decathlon"}
    for stage, fold in enumerate(splits):
        assert all(meta.cases[c]["stage"] == stage for c in fold["train"] + fold["val"])
        assert not {meta.cases[c]["subject"] for c in fold["train"]} & {meta.cases[c]["subject"] for c in fold["val"]}
    np.testing.assert_allclose(stage_weights(3, 3), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="at least the number of sources"):   # dryad would get no stage
        build_hippocampus_stream(601, tmp_path / "raw", num_stages=2, overwrite=True, **sources)


def test_stream_reports_missing_side_and_bad_values(sources: dict[str, Path], tmp_path: Path) -> None:
    (sources["harp"] / "Labels_100_NIFTI" / "ADNI_002_S_0295_1_R.nii").unlink()
    save(np.full((22, 14, 12), -1.0, np.float32), np.eye(4),
         sources["dryad"] / "s02" / "s02_hippolabels_t1w_standard_L_MNI.nii.gz")
    with pytest.raises(ConversionError, match="0 R label files"):
        build_hippocampus_stream(602, tmp_path / "raw", **sources)
    make_harp(sources["harp"])
    with pytest.raises(ConversionError, match=r"s02_hippolabels_t1w_standard_L_MNI.nii.gz: found label values \{-1\}"):
        build_hippocampus_stream(602, tmp_path / "raw", **sources)
    assert not list((tmp_path / "raw").glob("*602*"))


def test_cli_stream_and_msd(sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", os.fspath(tmp_path / "raw"))
    assert main(["convert", "hippocampus-stream", "603", "--harp", str(sources["harp"]),
                 "--dryad", str(sources["dryad"]), "--order", "dryad", "harp", "--stages", "2"]) == 0
    assert "Dataset603_HippocampusStream" in capsys.readouterr().out
    assert main(["convert", "msd", str(sources["decathlon"]), "4"]) == 0
    assert main(["convert", "hippocampus-stream", "604"]) == 2
    assert "at least one source" in capsys.readouterr().err


def test_stream_deals_test_subjects_to_stages_in_format_version_1(sources: dict[str, Path], tmp_path: Path) -> None:
    from nnunet_ext.streams import read_stream

    folder = build_hippocampus_stream(605, tmp_path / "raw", num_stages=3, test_fraction=0.4, **sources)
    raw = json.loads((folder / "stream.json").read_text())
    assert raw["format_version"] == 1 and raw["scenario"] == "shifting_source"
    stream = read_stream(folder)
    stream.check_cases([p.name[:-12] for p in (folder / "imagesTr").glob("*_0000.nii.gz")],
                       [p.name[:-12] for p in (folder / "imagesTs").glob("*_0000.nii.gz")])
    meta = load_domains(folder)
    tested = [c for s in stream.stages for c in s.test]
    assert sorted(tested) == sorted(c for c, m in meta.cases.items() if m["split"] == "test")
    assert all(stage.test for stage in stream.stages)
    assert {meta.cases[c]["domain"] for c in stream.stages[0].test} == {"harp"}
    assert {meta.cases[c]["domain"] for c in stream.stages[-1].test} == {"decathlon"}
    train_subjects = {meta.cases[c]["subject"] for s in stream.stages for c in s.train + s.val}
    for s in stream.stages:
        assert all(meta.cases[c]["stage"] == s.index for c in s.test)
        assert not {meta.cases[c]["subject"] for c in s.test} & train_subjects
