"""Tests of nnunet_ext.evaluation.per_domain and ``nnext evaluate`` on a tiny synthetic nnU-Net dataset.

Dataset (array order z, y, x; shape (6, 10, 12); spacing 2.5, 0.8, 0.6 mm, i.e. SimpleITK (0.6, 0.8, 2.5)):
every reference has label 1 (``left``) in a 4x4x4 box and label 2 (``right``) in a 4x3x4 box, except b2,
which has no label 2. Predictions:

====  =====================================  ==========================
case  label 1 (left)                         label 2 (right)
====  =====================================  ==========================
a1    identical                              identical
a2    shifted 1 voxel along z: Dice 0.75     identical
a3    identical                              missing: Dice 0, HD = diag
b1    identical                              shifted 1 along x: Dice 0.75
b2    identical                              absent in both: NaN
====  =====================================  ==========================
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli import evaluate as evaluate_cli
from nnunet_ext.domains import DomainMetadata, save_domains
from nnunet_ext.evaluation import per_domain
from nnunet_ext.evaluation.metrics import binary_metrics
from nnunet_ext.evaluation.per_domain import compare_report, evaluate_folder, markdown_table, write_report

SPACING_ZYX = (2.5, 0.8, 0.6)
SHAPE = (6, 10, 12)
DIAGONAL = math.sqrt((6 * 2.5) ** 2 + (10 * 0.8) ** 2 + (12 * 0.6) ** 2)
LABELS = {"background": 0, "left": 1, "right": 2}


def save(array: np.ndarray, path: Path, spacing_zyx: tuple[float, ...] = SPACING_ZYX) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    sitk.WriteImage(image, str(path))


def reference(case: str) -> np.ndarray:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    if case != "b2":
        ref[1:5, 6:9, 7:11] = 2
    return ref


def prediction(case: str) -> np.ndarray:
    pred = reference(case)
    if case == "a2":
        pred[pred == 1] = 0
        pred[2:6, 1:5, 1:5] = 1
    elif case == "a3":
        pred[pred == 2] = 0
    elif case == "b1":
        pred[pred == 2] = 0
        pred[1:5, 6:9, 8:12] = 2
    return pred


def make_dataset(tmp_path: Path, file_ending: str = ".nii.gz") -> dict[str, Path]:
    root = tmp_path / "Dataset999_Toy"
    ref_dir, pred_dir = root / "labelsTs", tmp_path / "pred"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T1"}, "labels": LABELS, "numTraining": 0, "file_ending": file_ending})
    )
    meta = DomainMetadata()
    meta.add_domain("siteA", "site A", simulated=False)
    meta.add_domain("train_only", "no test cases", simulated=False)
    meta.add_domain("siteB", "site B", simulated=True)
    for case in ("a1", "a2", "a3", "b1", "b2"):
        meta.add_case(case, "siteA" if case.startswith("a") else "siteB", "test", subject=case)
        save(reference(case), ref_dir / f"{case}{file_ending}")
        save(prediction(case), pred_dir / f"{case}{file_ending}")
    save_domains(meta, root)
    # nnUNetv2_predict writes these beside the predictions; they must be ignored
    (pred_dir / "dataset.json").write_text("{}")
    (pred_dir / "plans.json").write_text("{}")
    return {
        "root": root,
        "ref": ref_dir,
        "pred": pred_dir,
        "dataset_json": root / "dataset.json",
        "domains": root / "domains.json",
        "out": tmp_path / "out",
    }


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    return make_dataset(tmp_path)


def evaluate(ds: dict[str, Path], **kwargs) -> dict:
    return evaluate_folder(ds["pred"], ds["ref"], ds["dataset_json"], ds["domains"], **kwargs)


def test_per_case_and_per_domain_numbers(dataset: dict[str, Path]) -> None:
    result = evaluate(dataset)
    cases, domains = result["cases"], result["domains"]

    assert list(domains) == ["siteA", "siteB"]  # domains.json order, domain without cases left out
    assert {c: e["domain"] for c, e in cases.items()} == {
        "a1": "siteA", "a2": "siteA", "a3": "siteA", "b1": "siteB", "b2": "siteB"
    }
    assert cases["a1"]["spacing_mm"] == pytest.approx(SPACING_ZYX) and cases["a1"]["shape"] == list(SHAPE)
    dice = {c: [e["labels"][k]["dice"] for k in ("1", "2")] for c, e in cases.items()}
    assert dice["a1"] == [1.0, 1.0] and dice["a2"] == [0.75, 1.0] and dice["a3"] == [1.0, 0.0]
    assert dice["b1"] == [1.0, 0.75] and dice["b2"][0] == 1.0 and math.isnan(dice["b2"][1])

    # one-empty policy: worst distances; both-empty: NaN
    a3 = cases["a3"]["labels"]["2"]
    assert a3["hd95"] == pytest.approx(DIAGONAL) and a3["assd"] == pytest.approx(DIAGONAL)
    assert a3["surface_dice"] == 0.0 and a3["prediction_voxels"] == 0
    assert all(math.isnan(cases["b2"]["labels"]["2"][m]) for m in ("dice", "surface_dice", "hd95", "assd"))
    # spacing order: the x shift of b1 is 0.6 mm (2.5 mm if x and z were swapped)
    assert cases["b1"]["labels"]["2"]["hd95"] == pytest.approx(0.6)
    for case, entry in cases.items():
        for key, label in (("1", 1), ("2", 2)):
            expected = binary_metrics(prediction(case) == label, reference(case) == label, SPACING_ZYX, 1.0)
            assert {m: entry["labels"][key][m] for m in ("surface_dice", "hd95", "assd")} == pytest.approx(
                {"surface_dice": expected.surface_dice, "hd95": expected.hd95, "assd": expected.assd}, nan_ok=True
            )

    # per-case foreground mean leaves out labels absent from both masks
    assert [cases[c]["foreground_mean"]["dice"] for c in cases] == [1.0, 0.875, 0.5, 0.875, 1.0]

    a_left, a_right = domains["siteA"]["labels"]["1"], domains["siteA"]["labels"]["2"]
    assert a_left["dice"]["mean"] == pytest.approx(2.75 / 3, rel=1e-15)
    assert a_left["dice"]["median"] == 1.0 and a_left["dice"]["n"] == 3
    assert a_left["dice"]["std"] == pytest.approx(np.std([1.0, 0.75, 1.0], ddof=1), rel=1e-15)
    assert a_right["dice"]["mean"] == pytest.approx(2 / 3, rel=1e-15) and a_right["n_both_empty"] == 0
    assert a_right["hd95"]["mean"] == pytest.approx(DIAGONAL / 3)

    b_right = domains["siteB"]["labels"]["2"]
    assert b_right["n_both_empty"] == 1 and b_right["dice"]["n"] == 1 and b_right["dice"]["mean"] == 0.75
    assert math.isnan(b_right["dice"]["std"])  # one value: no sample standard deviation
    assert domains["siteB"]["n_cases"] == 2

    assert domains["siteA"]["foreground_mean"]["dice"]["mean"] == pytest.approx(2.375 / 3, rel=1e-15)
    assert domains["siteB"]["foreground_mean"]["dice"]["mean"] == 0.9375
    assert domains["siteB"]["foreground_mean"]["n_both_empty"] == 0
    overall = result["overall"]
    assert overall["n_cases"] == 5
    assert overall["labels"]["1"]["dice"]["mean"] == pytest.approx(0.95, rel=1e-15)
    assert overall["labels"]["2"]["dice"]["mean"] == 0.6875 and overall["labels"]["2"]["n_both_empty"] == 1

    settings = result["settings"]
    assert settings["tolerance_mm"] == 1.0 and settings["labels"] == {"1": "left", "2": "right"}
    assert "NaN" in settings["empty_structure_policy"] and "diagonal" in settings["empty_structure_policy"]


def test_labels_cases_and_tolerance_options(dataset: dict[str, Path]) -> None:
    save(prediction("a1"), dataset["pred"] / "extra.nii.gz")  # ignored when cases are given
    result = evaluate(dataset, labels=[2], cases=["b1", "a3"], tolerance_mm=0.6)
    assert list(result["cases"]) == ["a3", "b1"]
    assert result["settings"]["labels"] == {"2": "right"} and list(result["cases"]["b1"]["labels"]) == ["2"]
    # every distance of the 1-voxel x shift is 0 or 0.6 mm: all within a 0.6 mm tolerance
    assert result["cases"]["b1"]["labels"]["2"]["surface_dice"] == 1.0


def test_dataset_json_as_dict_and_domains_object(dataset: dict[str, Path]) -> None:
    from nnunet_ext.domains import load_domains

    ds = json.loads(dataset["dataset_json"].read_text())
    result = evaluate_folder(dataset["pred"], dataset["ref"], ds, load_domains(dataset["root"]))
    assert result["overall"]["labels"]["1"]["dice"]["mean"] == pytest.approx(0.95)


def test_spacing_within_tolerance_is_accepted(dataset: dict[str, Path]) -> None:
    save(prediction("a1"), dataset["pred"] / "a1.nii.gz", spacing_zyx=(2.5 * (1 + 5e-4), 0.8, 0.6))
    assert evaluate(dataset)["cases"]["a1"]["labels"]["1"]["dice"] == 1.0


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")  # MONAI's; suppressed per call, but not thread-safe
def test_parallel_plumbing_matches_serial(dataset: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The pooled path (here a thread pool: spawning processes that import MONAI takes ~10 s each) gives the
    serial result in case order and reports progress; tasks and outcomes survive pickling for real workers."""
    from multiprocessing.pool import ThreadPool

    serial = evaluate(dataset)

    class ThreadContext:
        Pool = ThreadPool

    monkeypatch.setattr(per_domain.multiprocessing, "get_context", lambda method: ThreadContext)
    calls: list[tuple[int, int, str]] = []
    pooled = evaluate(dataset, num_processes=2, progress=lambda *a: calls.append(a))
    assert json.dumps(pooled) == json.dumps(serial)
    assert [c[:2] for c in calls] == [(i, 5) for i in range(1, 6)]
    assert sorted(c[2] for c in calls) == ["a1", "a2", "a3", "b1", "b2"]

    task = per_domain._CaseTask("a1", dataset["pred"] / "a1.nii.gz", dataset["ref"] / "a1.nii.gz", (1, 2),
                                frozenset({0, 1, 2}), 1.0)
    outcome = per_domain._evaluate_case(task)
    assert pickle.loads(pickle.dumps(task)) == task
    assert pickle.loads(pickle.dumps(outcome)) == outcome


def test_write_report_files(dataset: dict[str, Path]) -> None:
    result = evaluate(dataset)
    paths = write_report(result, dataset["out"], title="Toy")
    assert {p.name for p in dataset["out"].iterdir()} == {"evaluation.json", "evaluation.md", "evaluation.png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["json"].read_text())
    assert json.dumps(loaded) == json.dumps(result)  # NaN round-trips
    md = paths["md"].read_text()
    assert md.startswith("# Toy\n") and markdown_table(result) in md
    rows = {line.split(" | ")[0].strip("| "): line for line in markdown_table(result).splitlines()[2:]}
    assert list(rows) == ["siteA", "siteB", "**all domains**"]
    cells = [c.strip() for c in rows["siteB"].strip("|").split("|")]
    # domain, n, left (Dice, NSD, HD95, ASSD), right (...), mean (...)
    assert cells[:3] == ["siteB", "2", "1.000"] and cells[6] == "0.750 (n=1)" and cells[10] == "0.938"
    write_report(loaded, dataset["out"])  # a result read back from evaluation.json is accepted


def test_compare_report(dataset: dict[str, Path], tmp_path: Path) -> None:
    ours = evaluate(dataset)
    perfect = evaluate_folder(dataset["ref"], dataset["ref"], dataset["dataset_json"], dataset["domains"])
    paths = compare_report({"ours": ours, "oracle": perfect}, tmp_path / "cmp", title="Runs")
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"comparison.json", "comparison.md", "comparison.png"}
    data = json.loads(paths["json"].read_text())
    assert data["runs"] == ["ours", "oracle"]
    assert data["domains"]["siteB"]["runs"]["ours"]["dice"]["mean"] == 0.9375
    assert data["domains"]["siteB"]["runs"]["oracle"]["dice"]["mean"] == 1.0
    md = paths["md"].read_text()
    assert "| siteB | 2 | 0.938 | **1.000** |" in md and "| siteA | 3 | 0.792 | **1.000** |" in md
    hd95 = ours["domains"]["siteA"]["foreground_mean"]["hd95"]["mean"]
    assert hd95 > DIAGONAL / 6 and f"| siteA | 3 | {hd95:.2f} | **0.00** |" in md  # HD95: lower is better

    with pytest.raises(ValueError, match="'other'.*tolerance_mm"):
        compare_report({"ours": ours, "other": {**perfect, "settings": {**perfect["settings"], "tolerance_mm": 2.0}}},
                       tmp_path / "never")
    subset = evaluate(dataset, cases=["a1", "b1"])
    with pytest.raises(ValueError, match="'subset'.*differ in their cases"):
        compare_report({"ours": ours, "subset": subset}, tmp_path / "never")
    with pytest.raises(ValueError, match=r"results\['bad'\] is not an evaluation result"):
        compare_report({"ours": ours, "bad": {"cases": {}}}, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _remove(name: str) -> Callable[[dict[str, Path]], None]:
    return lambda ds: next(ds["pred"].glob(f"{name}.*")).unlink()


def _overwrite_pred(name: str, array_fn: Callable[[], np.ndarray], spacing=SPACING_ZYX) -> Callable:
    return lambda ds: save(array_fn(), next(ds["pred"].glob(f"{name}.*")), spacing)


def _add_case_without_domain(ds: dict[str, Path]) -> None:
    save(reference("a1"), ds["ref"] / "c9.nii.gz")
    save(reference("a1"), ds["pred"] / "c9.nii.gz")


def _with_nan() -> np.ndarray:
    a = prediction("a3").astype(np.float32)
    a[0, 0, 0] = np.nan
    return a


def _with_fraction() -> np.ndarray:
    a = prediction("b2").astype(np.float32)
    a[0, 0, 0] = 0.5
    return a


def _with_label_5() -> np.ndarray:
    a = prediction("b1")
    a[0, 0, :2] = 5
    return a


def _ref_with_label_7(ds: dict[str, Path]) -> None:
    a = reference("a2")
    a[0, 0, 0] = 7
    save(a, ds["ref"] / "a2.nii.gz")


def _corrupt(ds: dict[str, Path]) -> None:
    (ds["pred"] / "a1.nii.gz").write_bytes(b"not an image")


BAD_INPUTS = {
    "missing prediction": (_remove("a2"), ["reference cases without a prediction", "'a2'", "Fix: predict them"]),
    "two missing predictions": (
        lambda ds: (_remove("a1")(ds), _remove("b2")(ds)),
        ["2 problem(s)", "'a1'", "'b2'"],
    ),
    "problems of every kind at once": (
        lambda ds: (_remove("a1")(ds), _overwrite_pred("b1", _with_label_5)(ds)),
        ["2 problem(s)", "'a1'", "without a prediction", "'b1'", "values [5]"],
    ),
    "prediction without reference": (
        lambda ds: save(prediction("a1"), ds["pred"] / "zz.nii.gz"),
        ["predictions without a reference", "'zz'", "zz.nii.gz"],
    ),
    "case without domain": (_add_case_without_domain, ["without an entry in the domain metadata", "'c9'"]),
    "shape mismatch": (
        _overwrite_pred("a1", lambda: np.zeros((6, 10, 11), dtype=np.uint8)),
        ["shape differs", "'a1'", "(6, 10, 11)", "(6, 10, 12)"],
    ),
    "spacing mismatch": (
        _overwrite_pred("b2", lambda: prediction("b2"), spacing=(2.5, 0.8, 0.7)),
        ["spacing differs", "'b2'", "(2.5, 0.8, 0.7)"],
    ),
    "undefined label value": (_overwrite_pred("b1", _with_label_5), ["does not define", "'b1'", "values [5]"]),
    "undefined label in reference": (_ref_with_label_7, ["does not define", "'a2'", "reference", "values [7]"]),
    # ITK's NIfTI reader turns NaN into 0, so NaNs can only be seen in formats that keep them
    "nan": (_overwrite_pred("a3", _with_nan), ["NaN", "'a3'", "a3.mha"], ".mha"),
    "non-integer": (_overwrite_pred("b2", _with_fraction), ["non-integer", "'b2'", "e.g. 0.5"]),
    "unreadable": (_corrupt, ["cannot read", "'a1'"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_names_case_and_writes_nothing(tmp_path: Path, name: str) -> None:
    mutate, expected, *file_ending = BAD_INPUTS[name]
    dataset = make_dataset(tmp_path, *file_ending)
    mutate(dataset)
    dataset["out"].mkdir()
    (dataset["out"] / "keep.txt").write_text("old")
    args = _parse(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"])])
    with pytest.raises(ValueError) as info:
        args.func(args)
    message = str(info.value)
    for text in expected + ["Fix:", "nothing was computed or written"]:
        assert text in message
    assert [p.name for p in dataset["out"].iterdir()] == ["keep.txt"]


def test_missing_folders_and_unsupported_labels(dataset: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="prediction folder .*nope does not exist"):
        evaluate_folder(dataset["pred"].parent / "nope", dataset["ref"], dataset["dataset_json"], dataset["domains"])
    regions = {"labels": {"background": 0, "whole": [1, 2], "core": 2}, "file_ending": ".nii.gz"}
    with pytest.raises(NotImplementedError, match="'whole' is region-based"):
        evaluate_folder(dataset["pred"], dataset["ref"], regions, dataset["domains"])
    ignore = {"labels": {**LABELS, "ignore": 3}, "file_ending": ".nii.gz"}
    with pytest.raises(NotImplementedError, match="'ignore'"):
        evaluate_folder(dataset["pred"], dataset["ref"], ignore, dataset["domains"])
    with pytest.raises(ValueError, match=r"labels \[3\] are not foreground labels"):
        evaluate(dataset, labels=[1, 3])
    with pytest.raises(ValueError, match="tolerance_mm"):
        evaluate(dataset, tolerance_mm=-1.0)
    with pytest.raises(ValueError, match="num_processes"):
        evaluate(dataset, num_processes=0)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnext")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_smoke(dataset: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate_cli, "PROGRESS_MIN_CASES", 2)  # exercise the progress bar
    args = _parse(
        ["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"]),
         "--tolerance-mm", "2", "--labels", "1", "2", "-np", "1"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| siteA | 3 |" in out and "NSD@2mm" in out
    for name in ("evaluation.json", "evaluation.md", "evaluation.png"):
        assert f"wrote {dataset['out'] / name}" in out
    result = json.loads((dataset["out"] / "evaluation.json").read_text())
    assert result["settings"]["tolerance_mm"] == 2.0
    assert result["settings"]["dataset_json"] == str(dataset["dataset_json"].resolve())


def test_cli_default_files_missing(dataset: dict[str, Path]) -> None:
    shutil.move(dataset["domains"], dataset["root"].parent / "elsewhere.json")
    args = _parse(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"])])
    with pytest.raises(FileNotFoundError, match="--domains not given"):
        args.func(args)
    args = _parse(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"]),
                   "--domains", str(dataset["root"].parent / "elsewhere.json")])
    assert args.func(args) == 0


def test_main_entry_point(dataset: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from nnunet_ext.cli import main as cli_main

    _remove("a2")(dataset)
    code = cli_main.main(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"])])
    assert code == 2 and "'a2'" in capsys.readouterr().err
    assert not dataset["out"].exists()


def _save_geometry(array: np.ndarray, path: Path, origin: tuple[float, ...] = (0.0, 0.0, 0.0),
                   direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING_ZYX)))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


MIRRORED_X = (-1, 0, 0, 0, 1, 0, 0, 0, 1)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda ds: _save_geometry(prediction("a1"), ds["pred"] / "a1.nii.gz", origin=(100.0, 0.0, 0.0)),
     ["origin differs from the reference", "'a1'", "origin (100, 0, 0) mm", "(0, 0, 0) mm (x, y, z)"]),
    (lambda ds: _save_geometry(prediction("b1"), ds["pred"] / "b1.nii.gz", direction=MIRRORED_X),
     ["direction (axis orientation) differs", "mirrored", "'b1'", "direction (-1, 0, 0, 0, 1, 0, 0, 0, 1)"]),
    # just above the origin tolerance: 0.02 of a voxel along x (0.6 mm spacing)
    (lambda ds: _save_geometry(prediction("a2"), ds["pred"] / "a2.nii.gz", origin=(0.012, 0.0, 0.0)),
     ["origin differs", "'a2'"]),
])
def test_prediction_elsewhere_in_space_is_refused(dataset: dict[str, Path], mutate, expected: list[str]) -> None:
    """The voxels are the reference's (Dice 1.0 voxel by voxel) but the header puts them elsewhere."""
    mutate(dataset)
    with pytest.raises(ValueError) as info:
        evaluate(dataset)
    for text in expected + ["1 problem(s)", "Fix: predict from the image of the same case"]:
        assert text in str(info.value)


def test_float_noise_in_origin_and_direction_is_accepted(dataset: dict[str, Path]) -> None:
    origin = (-90.5, 120.25, -60.0)
    angle = 1e-5  # rad about z: direction cosines differ by 1e-5 (< 1e-4)
    rotated = (math.cos(angle), -math.sin(angle), 0, math.sin(angle), math.cos(angle), 0, 0, 0, 1)
    _save_geometry(reference("a1"), dataset["ref"] / "a1.nii.gz", origin=origin)
    noisy = (origin[0] + 1e-4, origin[1] - 2e-4, origin[2] + 0.005 * SPACING_ZYX[0])  # z: half the tolerance
    _save_geometry(prediction("a1"), dataset["pred"] / "a1.nii.gz", origin=noisy, direction=rotated)
    assert evaluate(dataset)["cases"]["a1"]["labels"]["1"]["dice"] == 1.0


def _refuse_to_compute(*args, **kwargs):
    raise AssertionError("evaluate_folder was called although -o is unusable")


@pytest.mark.parametrize(("below", "expected"), [
    ("", "is an existing file, not a folder"),              # -o FILE
    ("sub", "is a file, so no folder can be created below it"),  # -o FILE/sub
])
def test_unusable_output_is_refused_before_any_case_is_read(dataset: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                           below: str, expected: str) -> None:
    out = dataset["out"]
    out.write_text("old")
    target = out / below if below else out
    monkeypatch.setattr(per_domain, "evaluate_folder", _refuse_to_compute)
    args = _parse(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(target)])
    with pytest.raises(ValueError, match=f"-o {target}.*{expected}"):
        args.func(args)
    assert out.read_text() == "old"


def test_output_below_a_file_exits_2_without_traceback(dataset: dict[str, Path],
                                                       capsys: pytest.CaptureFixture) -> None:
    from nnunet_ext.cli import main as cli_main

    dataset["out"].write_text("old")
    code = cli_main.main(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o",
                          str(dataset["out"] / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, so no folder can be created below it" in err and "Traceback" not in err


def test_unwritable_output_is_refused(dataset: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_ext.utils import outputs

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", denied)
    monkeypatch.setattr(per_domain, "evaluate_folder", _refuse_to_compute)
    args = _parse(["evaluate", str(dataset["pred"]), "--ref", str(dataset["ref"]), "-o", str(dataset["out"])])
    with pytest.raises(ValueError, match=r"cannot create anything in .* \(Permission denied\); pass a folder you can "
                                         "write to"):
        args.func(args)
    assert not dataset["out"].exists()



@pytest.mark.parametrize("role", ["pred", "ref"])
def test_truncated_files_are_refused_with_case_and_file_named(dataset: dict[str, Path], role: str) -> None:
    """The header is intact (the header checks pass) but the voxels are cut off (an interrupted copy)."""
    path = dataset[role] / "a2.nii.gz"
    path.write_bytes(path.read_bytes()[:-12])  # most of the voxels and the gzip trailer survive
    with pytest.raises(ValueError) as info:
        evaluate(dataset)
    text = str(info.value)
    for expected in ["files nnext cannot read", "'a2'", str(path), "cut off", "1 problem(s)"]:
        assert expected in text
