"""Stream scenarios (shifting source, transformed), ``nnext stream`` and the embedded-data demo streams.

The synthetic dataset: domains ``a`` and ``b``; subjects ``a0``..``a7`` and ``b0``..``b7`` with one
training case each, except ``a0`` with two (left/right, to check subject grouping); subjects ``a8``,
``a9``, ``b8``, ``b9`` are test subjects. Images are 24 x 20 x 3 slabs (x, y, z): label 1 in a square,
image = 100 * label + 10 + a ramp of 0..20 along x, identical along z.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion.splits import deal_stratified, deal_to_stages
from nnunet_ext.dataset_conversion.stream_scenarios import (
    apply_stage_transform,
    shifting_source_stream,
    stage_transform,
    transformed_stream,
)
from nnunet_ext.domains import DomainMetadata, load_domains, save_domains
from nnunet_ext.streams import read_stream
from tests.dataset_conversion.layouts import snapshot

COLIN_HEAD = Path("/usr/share/mricron/templates/ch2.nii.gz")


def _write(folder: Path, case: str, split: str, shift: int) -> None:
    label = np.zeros((3, 20, 24), np.uint8)  # numpy z, y, x
    label[:, 6:14, 6 + shift:14 + shift] = 1
    suffix = "Tr" if split == "train" else "Ts"
    ramp = np.linspace(0.0, 20.0, 24)[None, None, :]
    for array, path in ((label * 100.0 + 10.0 + ramp, folder / f"images{suffix}" / f"{case}_0000.nii.gz"),
                        (label, folder / f"labels{suffix}" / f"{case}.nii.gz")):
        image = sitk.GetImageFromArray(array.astype(np.float32 if array.dtype != np.uint8 else np.uint8))
        image.SetSpacing((2.0, 2.0, 3.0))
        sitk.WriteImage(image, str(path))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "raw" / "Dataset800_Synth"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    meta = DomainMetadata()
    for d in ("a", "b"):
        meta.add_domain(d, f"source {d}", simulated=False)
        for s in range(10):
            split = "test" if s >= 8 else "train"
            cases = [f"{d}{s}_L", f"{d}{s}_R"] if (d, s) == ("a", 0) else [f"{d}{s}"]
            for case in cases:
                _write(folder, case, split, shift=s % 3)
                meta.add_case(case, d, split, subject=f"{d}{s}")
    save_domains(meta, folder)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "square": 1}, "numTraining": 17,
        "file_ending": ".nii.gz"}))
    return folder


def _subjects(meta: DomainMetadata, cases) -> set[str]:
    return {meta.cases[c]["subject"] for c in cases}


def test_shifting_source_deals_subjects_by_sliding_weights(dataset: Path, tmp_path: Path) -> None:
    before = snapshot(dataset)
    pre = tmp_path / "pre"
    (pre / dataset.name).mkdir(parents=True)
    stream = shifting_source_stream(dataset, ["a", "b"], num_stages=3, seed=1, preprocessed_root=pre)
    after = snapshot(dataset)
    assert set(after) - set(before) == {"stream.json"} and all(after[k] == v for k, v in before.items())
    assert read_stream(pre / dataset.name).stages == read_stream(dataset).stages == stream.stages
    meta = load_domains(dataset)
    assert [s.extra["weights"] for s in stream.stages] == [{"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5},
                                                           {"a": 0.0, "b": 1.0}]
    domains = [{meta.cases[c]["domain"] for c in s.train + s.val + s.test} for s in stream.stages]
    assert domains[0] == {"a"} and domains[2] == {"b"} and domains[1] == {"a", "b"}
    lists = [_subjects(meta, getattr(s, key)) for s in stream.stages for key in ("train", "val", "test")]
    assert sum(map(len, lists)) == len(set().union(*lists)) == 20   # every subject in exactly one list
    assert all(s.test and s.val for s in stream.stages)
    assert {"a0_L", "a0_R"} <= set(c for s in stream.stages for c in s.train + s.val) and len(
        [s for s in stream.stages if {"a0_L", "a0_R"} & set(s.train + s.val)]) == 1
    assert shifting_source_stream(dataset, ["a", "b"], 3, seed=1, overwrite=True).stages == stream.stages
    assert shifting_source_stream(dataset, ["a", "b"], 3, seed=2, overwrite=True).stages != stream.stages


def test_shifting_source_errors(dataset: Path) -> None:
    with pytest.raises(ValueError, match="distinct domains with training cases"):
        shifting_source_stream(dataset, ["a", "b", "a"], num_stages=3)
    with pytest.raises(ValueError, match="distinct domains with training cases"):
        shifting_source_stream(dataset, ["a", "zzz"])
    with pytest.raises(ValueError, match=r"stage \d of 9 would get no test cases"):
        shifting_source_stream(dataset, ["a", "b"], num_stages=9)
    shifting_source_stream(dataset, ["a", "b"], num_stages=2)
    with pytest.raises(FileExistsError, match="--overwrite"):
        shifting_source_stream(dataset, ["a", "b"], num_stages=2)
    meta = load_domains(dataset)
    meta.cases["a8"]["subject"] = "a1"   # a test case of a training subject
    save_domains(meta, dataset)
    with pytest.raises(ValueError, match=r"subject 'a1' has cases in \('a', 'train'\) and \('a', 'test'\)"):
        shifting_source_stream(dataset, ["a", "b"], 2, overwrite=True)
    assert len(shifting_source_stream(dataset, ["a", "b"], 2, overwrite=True, group_by="case")) == 2


def test_shifting_source_uses_a_travelling_subject_in_one_domain_only(tmp_path: Path) -> None:
    """Every subject imaged in every domain: each is used once, and the domains share the subjects evenly."""
    folder = tmp_path / "raw" / "Dataset801_Travelling"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    meta = DomainMetadata()
    domains = ["a", "b", "c"]
    for d in domains:
        meta.add_domain(d, f"scanner {d}", simulated=True)
        for s in range(11):
            split = "test" if s >= 8 else "train"
            _write(folder, f"{d}_s{s}", split, shift=s % 3)
            meta.add_case(f"{d}_s{s}", d, split, subject=f"s{s}")
    save_domains(meta, folder)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "square": 1}, "numTraining": 24,
        "file_ending": ".nii.gz"}))
    stream = shifting_source_stream(folder, domains, num_stages=3, val_fraction=0.0, seed=3)
    used = [c for stage in stream.stages for c in stage.train + stage.val + stage.test]
    subjects = [meta.cases[c]["subject"] for c in used]
    assert sorted(subjects) == sorted(f"s{s}" for s in range(11))  # every subject once, in one domain
    for k, stage in enumerate(stream.stages):
        assert {meta.cases[c]["domain"] for c in stage.train + stage.test} == {domains[k]}
    assert sorted(len(stage.train) for stage in stream.stages) == [2, 3, 3]
    assert sorted(len(stage.test) for stage in stream.stages) == [1, 1, 1]
    again = shifting_source_stream(folder, domains, num_stages=3, val_fraction=0.0, seed=3, overwrite=True)
    assert again.stages == stream.stages


def test_deal_stratified_spreads_every_stage_over_the_order() -> None:
    units = [f"u{i:02d}" for i in range(14)]
    for share in ([1, 1, 1, 1, 1], [1, 0.75, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.75, 1]):
        groups = deal_stratified(units, share, seed=3)
        assert [len(g) for g in groups] == [len(g) for g in deal_to_stages(units, share)]
        assert sorted(u for g in groups for u in g) == units                            # a partition
        for g in groups:
            if len(g) >= 2:   # spread: gaps at most twice the even spacing, span twice a contiguous block's
                positions = [units.index(u) for u in g]
                assert max(np.diff(positions)) <= 2 * len(units) / len(g)
                assert positions[-1] - positions[0] >= 2 * (len(g) - 1)
    assert deal_stratified(units, [1, 1], seed=0) == deal_stratified(units, [1, 1], seed=0)
    with pytest.raises(ValueError, match="positive sum"):
        deal_stratified(units, [0, 0])


def test_shifting_source_stratified_by_a_case_field(dataset: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    meta = load_domains(dataset)
    for case, m in meta.cases.items():
        m["height"] = int(m["subject"][1])
    save_domains(meta, dataset)
    stream = shifting_source_stream(dataset, ["a", "b"], num_stages=3, seed=0, val_fraction=0,
                                    stratify_by="height")
    heights = [sorted({meta.cases[c]["height"] for c in s.train if meta.cases[c]["domain"] == "a"})
               for s in stream.stages]
    # source a's 8 training subjects (heights 0..7) go 5 / 3 / 0 to the stages (weights 1, 1/2, 0); each
    # stage's share spreads over the heights instead of being a random subset
    assert [len(h) for h in heights] == [5, 3, 0] and sorted(heights[0] + heights[1]) == list(range(8))
    for h in heights[:2]:
        assert h[0] <= 1 and h[-1] >= 6 and max(np.diff(h)) <= 3
    assert stream.extra["stratify_by"] == "height"
    # the CLI flag
    monkeypatch.setenv("nnUNet_raw", str(dataset.parent))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["stream", "shifting-source", str(dataset), "--stages", "3", "--val-fraction", "0",
                 "--stratify-by", "height", "--overwrite"]) == 0
    assert read_stream(dataset).stages == stream.stages
    for bad in (None, float("nan")):
        meta.cases["b3"]["height"] = bad
        save_domains(meta, dataset)
        with pytest.raises(ValueError, match="stratify_by='height' .* needs a finite number for every case, but "
                                             "case 'b3'"):
            shifting_source_stream(dataset, ["a", "b"], 2, overwrite=True, stratify_by="height")
    capsys.readouterr()


def test_stage_transform_parameters() -> None:
    assert stage_transform(0) == {"strength": 0.0, "steps": []}
    intensity, affine = stage_transform(1.0)["steps"]
    assert intensity["percentiles"] == [10.0, 90.0]                 # the paper's contrast stretching (0.1, 0.9)
    assert affine["scales"] == [0.8, 1.2] and affine["degrees"] == 15.0 and affine["translation_mm"] == 5.0
    assert stage_transform(0.5)["steps"][1]["degrees"] == 7.5
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        stage_transform(1.5)


def test_transform_keeps_slabs_in_plane_and_label_aligned(dataset: Path) -> None:
    image = sitk.ReadImage(str(dataset / "imagesTr" / "a1_0000.nii.gz"))
    label = sitk.ReadImage(str(dataset / "labelsTr" / "a1.nii.gz"))
    (new_image,), new_label = apply_stage_transform([image], label, stage_transform(1.0), seed=3)
    a, lab = sitk.GetArrayFromImage(new_image), sitk.GetArrayFromImage(new_label)
    assert a.shape == lab.shape == (3, 20, 24) and new_image.GetSpacing() == image.GetSpacing()
    assert np.array_equal(lab[0], lab[1]) and np.array_equal(lab[1], lab[2])        # thin z axis: no tilt
    assert np.allclose(a[0], a[2], atol=1e-3)
    assert set(np.unique(lab)) <= {0, 1} and lab.any()
    assert not np.array_equal(lab, sitk.GetArrayFromImage(label))                   # it did move
    assert a[lab == 1].mean() > a[lab == 0].mean() + 50                              # image and label moved together
    again = apply_stage_transform([image], label, stage_transform(1.0), seed=3)
    assert np.array_equal(sitk.GetArrayFromImage(again[1]), lab)                     # seeded


def test_transformed_writes_new_dataset_only(dataset: Path) -> None:
    before = snapshot(dataset)
    with pytest.raises(ValueError, match="pass domain="):
        transformed_stream(dataset, 801)
    target = transformed_stream(dataset, 801, domain="b", num_stages=3, seed=0)
    assert snapshot(dataset) == before
    assert target == dataset.parent / "Dataset801_SynthTransformed"
    stream = read_stream(target)
    assert [s.extra["transform"]["strength"] for s in stream.stages] == [0.0, 0.5, 1.0]
    assert all(sorted(s.test) == [f"s{s.index}_b8", f"s{s.index}_b9"] for s in stream.stages)
    trained = [c.split("_", 1)[1] for s in stream.stages for c in s.train + s.val]
    assert sorted(trained) == [f"b{i}" for i in range(8)]                           # each training case once
    meta = load_domains(target)
    assert [meta.domains[f"b_stage{k}"]["simulated"] for k in range(3)] == [False, True, True]
    assert meta.domains["b_stage2"]["transform"] == stage_transform(1.0)
    assert meta.cases["s1_b8"]["subject"] == "b8" and meta.cases["s1_b8"]["source_case"] == "b8"
    stage0 = stream.stages[0].train[0]
    assert (target / "imagesTr" / f"{stage0}_0000.nii.gz").read_bytes() == \
        (dataset / "imagesTr" / f"{stage0[3:]}_0000.nii.gz").read_bytes()           # stage 0 is the original
    dj = json.loads((target / "dataset.json").read_text())
    assert dj["numTraining"] == 8 and dj["labels"] == {"background": 0, "square": 1}
    stream.check_cases([p.name[:-12] for p in (target / "imagesTr").iterdir()],
                       [p.name[:-12] for p in (target / "imagesTs").iterdir()])
    with pytest.raises(FileExistsError):
        transformed_stream(dataset, 801, domain="b", num_stages=3)


def test_transformed_repeat_units_gives_every_stage_every_unit(dataset: Path) -> None:
    target = transformed_stream(dataset, 803, domain="b", num_stages=3, seed=0, repeat_units=True)
    stream = read_stream(target)
    sources = [({c[3:] for c in s.train}, {c[3:] for c in s.val}) for s in stream.stages]
    assert all(x == sources[0] for x in sources) and len(sources[0][1]) == 2              # one val set for all
    assert sources[0][0] | sources[0][1] == {f"b{i}" for i in range(8)}
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 24
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / f"{stream.stages[0].train[0]}_0000.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTr" / f"{stream.stages[2].train[0]}_0000.nii.gz")))
    assert not np.allclose(a, b)                                                            # own transform per stage
    assert stream.extra["repeat_units"] is True
    with pytest.raises(ValueError, match=r"stratify_by \(--stratify-by\) has no effect with repeat_units"):
        transformed_stream(dataset, 804, domain="b", repeat_units=True, stratify_by="slab")
    with pytest.raises(SystemExit):  # argparse: the two flags exclude each other
        main(["stream", "transformed", str(dataset), "805", "--domain", "b", "--repeat-units", "--stratify-by", "x"])


def test_transformed_test_units_keeps_a_seeded_subset_in_every_stage(dataset: Path) -> None:
    target = transformed_stream(dataset, 806, domain="b", num_stages=2, seed=0, test_units=1)
    stream = read_stream(target)
    kept = {c.split("_", 1)[1] for c in stream.stages[0].test}
    assert len(kept) == 1 and kept <= {"b8", "b9"}
    assert {c.split("_", 1)[1] for c in stream.stages[1].test} == kept                   # the same subject each stage
    subject = next(iter(kept))
    assert sorted(p.name for p in (target / "labelsTs").iterdir()) == [f"s{k}_{subject}.nii.gz" for k in range(2)]
    assert stream.extra["test_units"] == 1
    again = transformed_stream(dataset, 807, domain="b", num_stages=2, seed=0, test_units=1)
    assert read_stream(again).stages[0].test == stream.stages[0].test                     # seeded
    with pytest.raises(ValueError, match="test_units"):
        transformed_stream(dataset, 808, domain="b", test_units=0)


def test_cli_stream_commands_and_check(dataset: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(dataset.parent))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["stream", "shifting-source", "800", "--stages", "2"]) == 0
    assert "stage 1:" in capsys.readouterr().out
    assert main(["stream", "check", "Dataset800_Synth"]) == 0
    stream = json.loads((dataset / "stream.json").read_text())
    stream["stages"][1]["test"].append("ghost")
    (dataset / "stream.json").write_text(json.dumps(stream))
    assert main(["stream", "check", str(dataset)]) == 2
    assert "stage 1 'test' names 1 case(s) not found in imagesTs: ['ghost']" in capsys.readouterr().err
    stream["stages"][1]["train"] = []
    (dataset / "stream.json").write_text(json.dumps(stream))
    assert main(["stream", "check", "800"]) == 2
    assert "stage 1 is empty" in capsys.readouterr().err
    assert main(["stream", "transformed", "800", "802", "--domain", "a", "--stages", "2", "--name", "T"]) == 0
    assert (dataset.parent / "Dataset802_T" / "stream.json").is_file()
    assert main(["stream", "check", "999"]) == 2
    assert "found 0 folders" in capsys.readouterr().err


@pytest.mark.skipif(not COLIN_HEAD.is_file(), reason=f"{COLIN_HEAD} missing: apt-get install mricron-data")
def test_demo_streams_from_embedded_mri(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    for scenario, folder in (("transformed", "Dataset950_DemoStreamTransformed"),
                             ("shifting-source", "Dataset951_DemoStreamShiftingSource")):
        assert main(["stream", "demo", scenario, "--raw-root", str(raw)]) == 0
        assert main(["stream", "check", str(raw / folder)]) == 0
        stream = read_stream(raw / folder)
        assert len(stream) == 4 and all(len(s.train) >= 2 and s.val and len(s.test) >= 2 for s in stream.stages)
        size = sitk.ReadImage(str(next((raw / folder / "imagesTr").iterdir()))).GetSize()
        assert max(size[:2]) <= 80 and size[2] == 3
    meta = load_domains(raw / "Dataset951_DemoStreamShiftingSource")
    stream = read_stream(raw / "Dataset951_DemoStreamShiftingSource")
    first = {meta.cases[c]["domain"] for c in stream.stages[0].train + stream.stages[0].test}
    last = {meta.cases[c]["domain"] for c in stream.stages[-1].train + stream.stages[-1].test}
    assert first == {"mni152"} and last == {"colin27"}
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset950_DemoStreamTransformed",
                                                     "Dataset951_DemoStreamShiftingSource"]  # no scratch left
    assert os.listdir(raw / "Dataset950_DemoStreamTransformed" / "imagesTs")
    # the paper's stream length: 5 stages, strengths 0, 1/4, ..., 1
    raw5 = tmp_path / "raw5"
    assert main(["stream", "demo", "transformed", "--stages", "5", "--id", "952", "--raw-root", str(raw5)]) == 0
    stream = read_stream(raw5 / "Dataset952_DemoStreamTransformed")
    assert [s.extra["transform"]["strength"] for s in stream.stages] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(s.train and s.test for s in stream.stages)
    # every stage trains on the same slabs (only the transform differs) ...
    assert len({tuple(c[3:] for c in s.train) for s in stream.stages}) == 1 and len(stream.stages[0].train) >= 8
    # ... and shifting-source stages sample the brain's height, not a random few slabs
    meta = load_domains(raw / "Dataset951_DemoStreamShiftingSource")
    stream = read_stream(raw / "Dataset951_DemoStreamShiftingSource")
    slabs = sorted(meta.cases[c]["slab"] for c in stream.stages[0].train + stream.stages[0].val)
    assert slabs[-1] - slabs[0] >= 8
