"""The simulated many-subject, many-scanner dataset (profile tiny): layout, metadata, exact labels, physics in
the written images, subject-disjoint subsets and folds, determinism, streams, CLI and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunet_ext.cli.main import main
from nnunet_ext.dataset_conversion import brain_scanners, brain_subjects
from nnunet_ext.dataset_conversion.brain_scanners import SCANNERS, single_source_splits, write_brain_scanners
from nnunet_ext.dataset_conversion.demo_data import DEMO_DATASETS, demo_dataset
from nnunet_ext.dataset_conversion.demo_sources import mni_files
from nnunet_ext.dataset_conversion.stream_scenarios import shifting_source_stream
from nnunet_ext.domains import load_domains

ENTRY = demo_dataset("brain_scanners")


def _files(folder: Path, split: str) -> dict[str, tuple[Path, Path]]:
    suffix = "Tr" if split == "train" else "Ts"
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (folder / f"images{suffix}").glob("*_0000.nii.gz"))
    return {c: (folder / f"images{suffix}" / f"{c}_0000.nii.gz", folder / f"labels{suffix}" / f"{c}.nii.gz")
            for c in cases}


def _all_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    return _files(folder, "train") | _files(folder, "test")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nnUNet_raw")


@pytest.fixture(scope="module")
def dataset(raw: Path) -> Path:
    messages: list[str] = []
    folder = ENTRY.build(None, raw, profile="tiny", progress=messages.append)
    assert messages[0].startswith("preparing the MNI152") and len(messages) == 1 + 6
    return folder


def test_registry_entry_and_layout(dataset: Path) -> None:
    assert dataset.name == "Dataset992_DemoBrainScanners" and ENTRY.default_id == 992
    assert len({e.default_id for e in DEMO_DATASETS.values()}) == len(DEMO_DATASETS)
    assert sorted(p.name for p in dataset.iterdir()) == [
        "conversion.json", "dataset.json", "domains.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs",
        "splits_final.json"]
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}
    assert dj["numTraining"] == len(_files(dataset, "train")) == 4 * len(SCANNERS)  # 3 train + 1 val subjects
    assert len(_files(dataset, "test")) == 2 * len(SCANNERS)
    image = nib.load(str(next(iter(_files(dataset, "train").values()))[0]))
    assert image.get_data_dtype() == np.float32 and max(image.shape[:2]) <= 64
    np.testing.assert_allclose(image.header.get_zooms(), [4.0] * 3)


def test_every_case_has_a_simulated_domain_with_its_exact_parameters(dataset: Path) -> None:
    meta = load_domains(dataset)
    on_disk = {c: "train" for c in _files(dataset, "train")} | {c: "test" for c in _files(dataset, "test")}
    assert {c: m["split"] for c, m in meta.cases.items()} == on_disk
    assert list(meta.domains) == list(SCANNERS)
    for name, info in meta.domains.items():
        assert info["simulated"] is True
        assert {"protocol", "field_t", "tissues", "tissue_sources", "receive_bias", "snr_wm", "acquired_voxel_mm",
                "intensity_scale", "jitter", "seed", "family"} <= set(info)
        assert info["protocol"] == SCANNERS[name].protocol
        assert info["tissues"]["wm"]["t1_ms"] < info["tissues"]["gm"]["t1_ms"]
    for case, m in meta.cases.items():
        assert case == f"{m['domain']}_{m['subject']}"
        nominal = SCANNERS[m["domain"]].protocol
        for key, value in m["acquisition"]["protocol"].items():
            assert value == pytest.approx(nominal[key], rel=0.0301), (case, key)


def test_subjects_are_disjoint_across_subsets_and_imaged_on_every_scanner(dataset: Path) -> None:
    meta = load_domains(dataset)
    subset_of = {}
    for m in meta.cases.values():
        assert subset_of.setdefault(m["subject"], m["subset"]) == m["subset"]  # one subset per subject
        assert (m["split"] == "test") == (m["subset"] == "test")
    assert sorted(subset_of.values()) == ["test", "test", "train", "train", "train", "val"]
    for subject in subset_of:
        assert sorted(m["domain"] for m in meta.cases.values() if m["subject"] == subject) == sorted(SCANNERS)
    assert set(meta.subjects) == set(subset_of)
    for name, record in meta.subjects.items():
        assert record["subset"] == subset_of[name]
        assert {"brain_ml", "ventricles_ml", "asymmetry_index", "gm_ml", "wm_ml", "csf_ml"} <= set(record["volumes"])
    population = json.loads((dataset / "conversion.json").read_text())["population"]
    assert population["subjects"] == 6 and population["ventricles_max_over_min"] > 1


def test_splits_have_one_single_source_fold_per_scanner(dataset: Path) -> None:
    folds = json.loads((dataset / "splits_final.json").read_text())
    meta = load_domains(dataset)
    assert len(folds) == len(SCANNERS) and folds == single_source_splits(dataset)
    trained, validated = set(), set()
    for fold, scanner in zip(folds, SCANNERS):
        assert {meta.cases[c]["domain"] for c in fold["train"] + fold["val"]} == {scanner}
        assert {meta.cases[c]["subset"] for c in fold["train"]} == {"train"}
        assert {meta.cases[c]["subset"] for c in fold["val"]} == {"val"}
        trained |= {meta.cases[c]["subject"] for c in fold["train"]}
        validated |= {meta.cases[c]["subject"] for c in fold["val"]}
    tested = {m["subject"] for m in meta.cases.values() if m["subset"] == "test"}
    assert len(trained) == 3 and len(validated) == 1 and len(tested) == 2
    assert not (trained & validated) and not (trained & tested) and not (validated & tested)


def test_labels_are_the_argmax_of_the_recorded_deformation(dataset: Path) -> None:
    meta = load_domains(dataset)
    template = brain_subjects.prepare_template(tuple(mni_files().items()), 4.0)
    files = _all_files(dataset)
    for name, record in meta.subjects.items():
        subject = brain_subjects.make_subject(
            template, brain_subjects.SubjectParameters.from_record(record["deformation"]))
        expected = subject.tissue.argmax(0).numpy().transpose(2, 1, 0)
        for scanner in SCANNERS:
            label = np.asarray(nib.load(str(files[f"{scanner}_{name}"][1])).dataobj)
            np.testing.assert_array_equal(label, expected)
        assert set(np.unique(expected)) == {0, 1, 2, 3}
        np.testing.assert_allclose(subject.tissue.sum(0).numpy(), 1.0, atol=1e-5)


def _tissue_means(image: Path, label: Path) -> list[float]:
    x, y = np.asarray(nib.load(str(image)).dataobj), np.asarray(nib.load(str(label)).dataobj)
    return [float(x[y == k].mean()) for k in range(4)]


def test_written_images_have_t1_contrast_and_vendor_differences(dataset: Path) -> None:
    files = _all_files(dataset)
    ratios = {}
    for scanner in SCANNERS:
        means = np.mean([_tissue_means(*files[f"{scanner}_{s}"]) for s in ("s00", "s01", "s02")], axis=0)
        assert means[3] > means[2] > means[1] > means[0], (scanner, means)  # WM > GM > CSF > background
        ratios[scanner] = means[3] / means[2]
    # the TFE at 1.5 T has the strongest nominal WM/GM contrast (1.79), the spin echo one of the weakest (1.24)
    assert ratios["philips_15"] > ratios["siemens_3"] > ratios["ge_15"], ratios
    scales = {s: _tissue_means(*files[f"{s}_s00"])[3] for s in SCANNERS}
    assert max(scales.values()) / min(scales.values()) > 2  # arbitrary vendor units


def test_same_seed_is_byte_identical_and_another_seed_is_not(dataset: Path, tmp_path: Path) -> None:
    again = write_brain_scanners(tmp_path / "a" / dataset.name, profile="tiny")
    for path in sorted(p for p in dataset.rglob("*") if p.is_file()):
        assert path.read_bytes() == (again / path.relative_to(dataset)).read_bytes(), path.name
    other = write_brain_scanners(tmp_path / "b" / dataset.name, profile="tiny", seed=1)
    for case in ("siemens_3_s00", "ge_15_s03"):
        first, second = _all_files(dataset)[case], _all_files(other)[case]
        assert first[0].read_bytes() != second[0].read_bytes() and first[1].read_bytes() != second[1].read_bytes()
    assert load_domains(other).subjects["s00"]["deformation"] != load_domains(dataset).subjects["s00"]["deformation"]


def test_shifting_source_stream_over_four_scanners_has_several_subjects_per_stage(tmp_path: Path) -> None:
    folder = write_brain_scanners(tmp_path / "Dataset993_DemoBrainScanners", profile="tiny", subjects=24)
    order = ["siemens_15", "ge_3", "philips_15", "siemens_3"]
    stream = shifting_source_stream(folder, order, num_stages=4, seed=0)
    meta = load_domains(folder)
    subject = {c: m["subject"] for c, m in meta.cases.items()}
    seen: set[str] = set()
    for k, stage in enumerate(stream.stages):
        assert {meta.cases[c]["domain"] for c in stage.train + stage.val + stage.test} == {order[k]}
        subjects = {p: {subject[c] for c in getattr(stage, p)} for p in ("train", "val", "test")}
        assert len(subjects["train"]) >= 3 and len(subjects["val"]) >= 1 and len(subjects["test"]) >= 2, subjects
        stage_subjects = subjects["train"] | subjects["val"] | subjects["test"]
        assert not (stage_subjects & seen)  # no anatomy repeats across stages
        seen |= stage_subjects
    assert {meta.cases[c]["subset"] for s in stream.stages for c in s.test} == {"test"}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"subjects": 3}, r"subjects must be an integer >= 4"),
    ({"profile": "demo"}, r"profile must be one of \['default', 'tiny'\]"),
    ({"seed": -1}, r"seed must be a non-negative integer"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ENTRY.build(None, tmp_path, **({"profile": "tiny"} | kwargs))
    with pytest.raises(ValueError, match=r"brain_scanners takes no option\(s\) \['severities'\]"):
        ENTRY.build(None, tmp_path, profile="tiny", severities=("mild",))
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_prints_progress_and_draws_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    figures = tmp_path / "figures"
    argv = ["demo-data", "brain-scanners", "--profile", "tiny", "--raw-root", str(tmp_path / "raw"), "-d", "994",
            "--figures", str(figures)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'raw' / 'Dataset994_DemoBrainScanners'}" in captured.out
    assert "siemens_3" in captured.out and "(simulated)" in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(progress) == 7 and " s] subject 6/6 (s05)" in progress[-1]
    for name in ("brain_scanners_by_scanner.png", "brain_scanners_by_subject.png"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figures / "brain_scanners_by_scanner.png").unlink()
    assert main(argv) == 0  # an existing dataset is drawn, not rebuilt
    assert "wrote" not in capsys.readouterr().out and (figures / "brain_scanners_by_scanner.png").is_file()
    for bad, message in ((["--severities", "mild"], "--severities does not apply to brain-scanners"),
                         (["--profile", "demo"], "--profile demo does not apply to brain-scanners")):
        assert main(["demo-data", "brain-scanners", "--raw-root", str(tmp_path / "x"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["demo-data", "mni-tissue", "--raw-root", str(tmp_path / "x"), "--subjects", "5"]) == 2
    assert "--subjects does not apply to mni-tissue" in capsys.readouterr().err
    assert main(["demo-data", "mni-tissue", "--raw-root", str(tmp_path / "x"), "--figures", "f"]) == 2
    assert "--figures draws the brain-scanners dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_scanner_table_signals_follow_the_protocols() -> None:
    for name, scanner in SCANNERS.items():
        s = scanner.tissue_signals()
        assert s["wm"] > s["gm"] > s["csf"] > 0, name
    assert brain_scanners.assign_subsets([f"s{i:02d}" for i in range(24)], 0) == brain_scanners.assign_subsets(
        [f"s{i:02d}" for i in range(24)], 0)
    counts = sorted(brain_scanners.assign_subsets([f"s{i:02d}" for i in range(24)], 0).values())
    assert (counts.count("train"), counts.count("val"), counts.count("test")) == (12, 4, 8)
