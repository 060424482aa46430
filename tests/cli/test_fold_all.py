"""Commands that take a model folder work with fold ``all`` as with numbered folds (in-process, no training).

The model folder is built by hand the way ``nnUNetv2_train`` leaves it (plans.json, dataset.json,
``fold_F/checkpoint_final.pth`` with a stock network), and its preprocessed cases are written with nnU-Net's
own dataset class. nnU-Net's predictor is replaced by a recorder where a command only hands the folds over;
``tests/e2e/test_fold_all_e2e.py`` runs the same commands on a model really trained with fold ``all``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.cli import evaluate_continual, fda
from nnunet_ext.cli.main import UserError
from nnunet_ext.streams import Stage, Stream
from tests.test_preprocessed import write_preprocessed

DATASET = "Dataset001_Toy"
CASES = tuple(f"toy_{i:03d}" for i in range(5))
SPLITS = [{"train": ["toy_000", "toy_001"], "val": ["toy_002"]}, {"train": ["toy_002"], "val": ["toy_000", "toy_001"]}]


def _plans() -> dict:
    n = 3
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": [4, 8, 8], "conv_op": "torch.nn.Conv2d",
                            "kernel_sizes": [[3, 3]] * n, "strides": [[1, 1], [2, 2], [2, 2]],
                            "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                            "norm_op": "torch.nn.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    configuration = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                     "patch_size": [16, 16], "spacing": [1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                     "use_mask_for_norm": [False], "architecture": arch}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "configurations": {"2d": configuration},
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
            "experiment_planner_used": "ExperimentPlanner", "foreground_intensity_properties_per_channel": {}}


def build_model(root: Path, fold: str) -> Path:
    """``root/results/Dataset001_Toy/nnUNetTrainer__nnUNetPlans__2d`` with ``fold_<fold>``, and the
    preprocessed dataset in ``root/preprocessed`` (5 cases; ``splits_final.json`` names only 3 of them)."""
    plans = _plans()
    dataset = {"labels": {"background": 0, "brain": 1}, "channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
               "numTraining": len(CASES)}
    model = root / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__2d"
    (model / f"fold_{fold}").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(dataset))
    manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2, False)
    torch.save({"network_weights": network.state_dict(), "init_args": {"configuration": "2d", "fold": fold},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1)},
               model / f"fold_{fold}" / "checkpoint_final.pth")
    preprocessed = root / "preprocessed" / DATASET
    write_preprocessed(preprocessed / "nnUNetPlans_2d", cases=CASES, shape=(1, 1, 20, 18))
    (preprocessed / "splits_final.json").write_text(json.dumps(SPLITS))
    return model


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return tmp_path


@pytest.mark.parametrize(("fold", "expected_cases"), [("all", len(CASES)), ("0", len(SPLITS[0]["train"]))])
def test_attach_default_donors_are_the_folds_training_cases(env: Path, fold: str, expected_cases: int) -> None:
    model = build_model(env, fold)
    out = env / "mst"
    report = fda.attach(model, out, overrides={"n_mst": 2})
    assert list(report["folds"]) == [fold]
    info = report["folds"][fold]
    # fold all trains on every preprocessed case (nnU-Net ignores splits_final.json); fold 0 on its split
    assert info["source_cases"] == expected_cases and info["num_donors"] > 0
    assert info["donor_source"] == f"nnUNet_preprocessed training cases of fold {fold}"
    ckpt = torch.load(out / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerFourierMST" and ckpt["network_weights"]["bank.donors"].shape[0] > 0
    assert fda.attach(model, env / "again", folds=[fold])["folds"][fold]["source_cases"] == expected_cases
    (env / "preprocessed" / DATASET / "splits_final.json").unlink()  # nnU-Net needs none for fold all
    if fold == "all":
        assert fda.attach(model, env / "no_splits")["folds"]["all"]["source_cases"] == len(CASES)
    else:
        with pytest.raises(UserError, match="splits_final.json does not exist.*pass --images SOURCE_IMAGES"):
            fda.attach(model, env / "no_splits")


def test_attach_without_preprocessed_data_names_the_fix(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(env, "all")
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(UserError, match="nnUNet_preprocessed is not set; export nnUNet_preprocessed=DIR.*--images"):
        fda.attach(model, env / "mst")
    assert not (env / "mst").exists()
    with pytest.raises(UserError, match="-f: fold must be an integer >= 0 or 'all'"):
        fda.attach(model, env / "mst", folds=["fold_all"])
    with pytest.raises(UserError, match=r"no checkpoint_final.pth for folds \['0'\].*found folds \['all'\]"):
        fda.attach(model, env / "mst", folds=["0"])


class RecordingPredictor:
    """Stands in for nnU-Net's predictor: records the folds it is initialised with, predicts nothing."""

    calls: list[tuple[str, tuple, str]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.network = torch.nn.Identity()  # no style bank

    def initialize_from_trained_model_folder(self, model: str, use_folds, checkpoint: str) -> None:
        RecordingPredictor.calls.append((model, tuple(use_folds), checkpoint))

    def predict_from_files(self, *args, **kwargs) -> None:
        return None


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[RecordingPredictor]:
    import nnunetv2.inference.predict_from_raw_data as predict_module

    RecordingPredictor.calls = []
    monkeypatch.setattr(predict_module, "nnUNetPredictor", RecordingPredictor)
    return RecordingPredictor


def test_select_beta_hands_fold_all_to_nnunets_predictor(env: Path, recorder) -> None:
    model = build_model(env, "all")
    with pytest.raises(UserError, match="has no style bank"):  # the recorder's network has none
        fda.select_beta(model, [], [0.0], ["all"], "checkpoint_final.pth")
    assert recorder.calls == [(str(model), ("all",), "checkpoint_final.pth")]
    with pytest.raises(UserError, match=r"no checkpoint_final.pth for folds \['0'\]"):
        fda.select_beta(model, [], [0.0], ["0"], "checkpoint_final.pth")


def test_evaluate_continual_model_with_fold_all(env: Path, recorder) -> None:
    model = build_model(env, "all")
    for k in (0, 1):  # plain weights: the command loads each safely before nnU-Net's predictor sees it
        torch.save({"network_weights": {}}, model / "fold_all" / f"checkpoint_stage_{k}.pth")
    names = evaluate_continual._stage_checkpoints(model, "all", evaluate_continual.STAGE_CHECKPOINT, 2)
    assert names == ["checkpoint_stage_0.pth", "checkpoint_stage_1.pth"]
    with pytest.raises(UserError, match=r"fold_all: missing \['checkpoint_stage_2.pth'\]"):
        evaluate_continual._stage_checkpoints(model, "all", evaluate_continual.STAGE_CHECKPOINT, 3)

    images = env / "imagesTs"
    images.mkdir()
    for case in ("t0", "t1"):
        (images / f"{case}_0000.nii.gz").write_bytes(b"")
    stream = Stream((Stage(0, ("a",), (), ("t0",)), Stage(1, ("b",), (), ("t1",))))
    evaluate_continual._predict_after_stages(model, "all", names, stream, images, ".nii.gz",
                                             str(env / "pred" / "after{stage}"), "cpu", tta=False)
    assert recorder.calls == [(str(model), ("all",), n) for n in names]


def test_evaluate_continual_refuses_a_bad_fold(env: Path, tmp_path: Path) -> None:
    from nnunet_ext.streams import write_stream

    ref = tmp_path / "Dataset001_Toy" / "labelsTs"
    ref.mkdir(parents=True)
    (ref.parent / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    (ref / "t0.nii.gz").write_bytes(b"")
    stream = write_stream(Stream((Stage(0, ("a",), (), ("t0",)),)), tmp_path / "stream.json")
    parser = argparse.ArgumentParser()
    evaluate_continual.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate-continual", "--stream", str(stream), "--ref", str(ref), "--model",
                              f"M={tmp_path}", "-f", "last", "-o", str(tmp_path / "out")])
    with pytest.raises(UserError, match="-f: fold must be an integer >= 0 or 'all'"):
        args.func(args)
