"""Tests of nnunet_ext.utils.nnunet_paths: environment variables, id -> name, model and fold folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnunet_ext.utils.nnunet_paths import (
    dataset_folder,
    dataset_name,
    fold_folder,
    model_folder,
    nnunet_folder,
    parse_fold,
    trained_folds,
)


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    folders = {kind: tmp_path / kind for kind in ("raw", "preprocessed", "results")}
    for kind, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(f"nnUNet_{kind}", str(folder))
    (folders["raw"] / "Dataset501_Toy").mkdir()
    (folders["preprocessed"] / "Dataset501_Toy").mkdir()
    return folders


@pytest.mark.parametrize(("kind", "variable"), [("raw", "nnUNet_raw"), ("preprocessed", "nnUNet_preprocessed"),
                                                ("results", "nnUNet_results")])
def test_missing_or_empty_variable_names_it_and_the_export(kind: str, variable: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=f"^{variable} is not set; export {variable}=DIR with DIR the folder"):
        nnunet_folder(kind)  # type: ignore[arg-type]
    monkeypatch.setenv(variable, "")
    with pytest.raises(ValueError, match=f"export {variable}=DIR"):
        nnunet_folder(kind)  # type: ignore[arg-type]
    monkeypatch.setenv(variable, "/some/where")
    assert nnunet_folder(kind) == Path("/some/where")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of"):
        nnunet_folder("models")  # type: ignore[arg-type]


def test_dataset_id_to_name(roots: dict[str, Path]) -> None:
    assert dataset_name(501) == dataset_name("501") == "Dataset501_Toy"
    assert dataset_name("Dataset777_Elsewhere") == "Dataset777_Elsewhere"  # a name is nnU-Net's identity
    with pytest.raises(ValueError, match=r"dataset 502 does not name one nnU-Net dataset \(Could not find a dataset "
                                         r"with the ID 502\).*nnUNet_raw='.*raw'.*Pass the folder name"):
        dataset_name(502)
    with pytest.raises(ValueError, match="dataset 'toy' does not name one nnU-Net dataset"):
        dataset_name("toy")
    (roots["results"] / "Dataset501_Other").mkdir()
    with pytest.raises(ValueError, match="More than one dataset name found for dataset id 501"):
        dataset_name(501)
    with pytest.raises(TypeError, match="got float"):
        dataset_name(501.0)  # type: ignore[arg-type]


def test_dataset_folder(roots: dict[str, Path]) -> None:
    assert dataset_folder("preprocessed", 501) == roots["preprocessed"] / "Dataset501_Toy"
    assert dataset_folder("raw", "Dataset501_Toy") == roots["raw"] / "Dataset501_Toy"


def test_model_folder_is_nnunets_output_folder(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    expected = roots["results"] / "Dataset501_Toy" / "nnUNetTrainerX__nnUNetPlans__2d"
    assert model_folder(501, "nnUNetTrainerX") == expected
    assert model_folder(501, "nnUNetTrainerX") == Path(get_output_folder(501, "nnUNetTrainerX", "nnUNetPlans", "2d"))
    assert model_folder("Dataset501_Toy", "T", "P", "3d_fullres", results_root="/run/results") == Path(
        "/run/results/Dataset501_Toy/T__P__3d_fullres")
    with pytest.raises(ValueError, match="trainer must be a non-empty name without '__'"):
        model_folder(501, "my__trainer")
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(ValueError, match="nnUNet_results is not set; export nnUNet_results=DIR"):
        model_folder(501, "nnUNetTrainerX")


@pytest.mark.parametrize(("fold", "expected"), [(0, 0), (3, 3), ("4", 4), ("all", "all")])
def test_parse_fold(fold: int | str, expected: int | str) -> None:
    assert parse_fold(fold) == expected


@pytest.mark.parametrize("fold", ["x", -1, True, "fold_0", 1.0])
def test_parse_fold_refuses_other_values(fold: object) -> None:
    with pytest.raises(ValueError, match="fold must be an integer >= 0 or 'all'"):
        parse_fold(fold)  # type: ignore[arg-type]


def test_fold_folder_and_trained_folds(tmp_path: Path) -> None:
    assert fold_folder(tmp_path, 0) == tmp_path / "fold_0"
    assert fold_folder(tmp_path, "all") == tmp_path / "fold_all"
    for fold in ("all", "10", "2", "x"):
        (tmp_path / f"fold_{fold}").mkdir()
        (tmp_path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "fold_3").mkdir()  # no checkpoint: not a trained fold
    assert trained_folds(tmp_path, "checkpoint_final.pth") == {
        "2": tmp_path / "fold_2" / "checkpoint_final.pth",
        "10": tmp_path / "fold_10" / "checkpoint_final.pth",
        "all": tmp_path / "fold_all" / "checkpoint_final.pth",
    }
    assert list(trained_folds(tmp_path, "checkpoint_final.pth")) == ["2", "10", "all"]
    assert trained_folds(tmp_path, "checkpoint_best.pth") == {}
