"""Stream file format (nnunet_ext.streams): parsing errors, duplicates, unknown cases, round trip, legacy files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_ext.streams import STREAM_FILENAME, Stage, Stream, find_stream_file, read_stream, write_stream


def _stream_dict() -> dict:
    return {"format_version": 1, "scenario": "transformed", "seed": 3,
            "stages": [{"stage": 0, "train": ["a", "b"], "val": ["c"], "test": ["t0"], "transform": {"k": 1}},
                       {"stage": 1, "train": ["d"], "val": [], "test": ["t1", "t2"]}]}


def test_round_trip_keeps_lists_and_extras(tmp_path: Path) -> None:
    stream = Stream.from_dict(_stream_dict())
    assert len(stream) == 2 and stream.scenario == "transformed" and stream.extra == {"seed": 3}
    assert stream.stages[0] == Stage(0, ("a", "b"), ("c",), ("t0",), {"transform": {"k": 1}})
    path = write_stream(stream, tmp_path)
    assert path == tmp_path / STREAM_FILENAME
    assert json.loads(path.read_text()) == {**_stream_dict(), "stages": [
        {"stage": 0, "train": ["a", "b"], "val": ["c"], "test": ["t0"], "transform": {"k": 1}},
        {"stage": 1, "train": ["d"], "val": [], "test": ["t1", "t2"]}]}
    again = read_stream(tmp_path)
    assert again.stages == stream.stages and again.extra == stream.extra and again.source == path
    assert [p.name for p in tmp_path.iterdir()] == [STREAM_FILENAME]  # no temporary file left


def test_legacy_hippocampus_format_reads_as_version_1(tmp_path: Path) -> None:
    legacy = {"order": ["harp", "dryad"], "num_stages": 2, "schedule": "...",
              "stages": [{"stage": 0, "weights": {"harp": 1.0, "dryad": 0.0}, "train": ["h1"], "val": ["h2"]},
                         {"stage": 1, "weights": {"harp": 0.0, "dryad": 1.0}, "train": ["d1"], "val": []}]}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    stream = read_stream(tmp_path / "legacy.json")
    assert [s.test for s in stream.stages] == [(), ()]
    assert stream.stages[1].extra == {"weights": {"harp": 0.0, "dryad": 1.0}}
    assert stream.scenario is None and stream.extra["order"] == ["harp", "dryad"]
    assert stream.to_dict()["format_version"] == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("stages"), "expected an object with a 'stages' list"),
    (lambda d: d.update(stages=[]), "has no stages"),
    (lambda d: d.update(format_version=2), "format_version 2 is not supported"),
    (lambda d: d["stages"].__setitem__(1, "oops"), "stage 1 must be an object"),
    (lambda d: d["stages"][1].update(stage=5), "stage at position 1 says 'stage': 5"),
    (lambda d: d["stages"][0].update(train="a"), "stage 0 'train' must be a list of case ids"),
    (lambda d: d["stages"][0].update(test=["x", ""]), "stage 0 'test' must be a list of case ids"),
    (lambda d: d["stages"][1].update(train=[]), r"stage 1 is empty \(no 'train' cases\)"),
    (lambda d: d["stages"][1].update(test=["c"]), r"'c' is listed twice \(stage 0 'val' and stage 1 'test'\)"),
    (lambda d: d["stages"][0].update(val=["a"]), r"'a' is listed twice \(stage 0 'train' and stage 0 'val'\)"),
])
def test_structure_errors_name_file_and_stage(tmp_path: Path, mutate, message: str) -> None:
    d = _stream_dict()
    mutate(d)
    (tmp_path / STREAM_FILENAME).write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as info:
        read_stream(tmp_path)
    assert str(tmp_path / STREAM_FILENAME) in str(info.value)


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nnext stream"):
        read_stream(tmp_path)
    (tmp_path / STREAM_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_stream(tmp_path)


def test_check_cases_names_stage_list_and_cases() -> None:
    stream = Stream.from_dict(_stream_dict(), source="s.json")
    stream.check_cases(["a", "b", "c", "d"], ["t0", "t1", "t2"])
    stream.check_cases(["a", "b", "c", "d"])  # test lists not checked
    stream.check_cases(None, ["t0", "t1", "t2"])  # train/val lists not checked
    with pytest.raises(ValueError, match=r"s.json: stage 0 'val' names 1 case\(s\) not found .*\['c'\]"):
        stream.check_cases(["a", "b", "d"], ["t0", "t1", "t2"])
    with pytest.raises(ValueError, match=r"stage 1 'test' names 1 case\(s\) not found in imagesTs: \['t2'\]"):
        stream.check_cases(["a", "b", "c", "d"], ["t0", "t1"])


def test_find_stream_file_prefers_preprocessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, pre = tmp_path / "raw", tmp_path / "pre" / "Dataset001_X"
    (raw / "Dataset001_X").mkdir(parents=True)
    pre.mkdir(parents=True)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(FileNotFoundError, match="nnUNet_raw is not set"):
        find_stream_file("Dataset001_X")
    write_stream(Stream.from_dict(_stream_dict()), raw / "Dataset001_X")
    assert find_stream_file("Dataset001_X", pre, raw) == raw / "Dataset001_X" / STREAM_FILENAME
    write_stream(Stream.from_dict(_stream_dict()), pre)
    assert find_stream_file("Dataset001_X", pre, raw) == pre / STREAM_FILENAME
