"""``nnext odex explain`` on a hand-made ODEx model folder: nnU-Net's predictor, one JSON line per case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.cli.main import main as nnext
from tests.networks.test_odex import calibrate

ARCH = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3], [3, 3]], "strides": [[1, 1], [2, 2]], "n_conv_per_stage": [1, 1],
                        "n_conv_per_stage_decoder": [1], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
RESAMPLING = {"resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None}}
PLANS = {"dataset_name": "Dataset999_Explain", "plans_name": "nnUNetPlans",
         "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 20, 24],
         "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                                   "batch_size": 2, "patch_size": [16, 16], "median_image_size_in_voxels": [20, 24],
                                   "spacing": [1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                                   "use_mask_for_norm": [False], **RESAMPLING, "architecture": ARCH,
                                   "batch_dice": True}},
         "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}}}
DATASET = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "tissue": 1}, "numTraining": 2,
           "file_ending": ".nii.gz"}


def _model_folder(root: Path, trainer_name: str = "nnUNetTrainerODEx") -> Path:
    """A model folder as nnUNetv2_train leaves it: plans, dataset.json, fold_0/checkpoint_final.pth."""
    from nnunet_ext.trainers.odex import nnUNetTrainerODEx

    pm = PlansManager(PLANS)
    torch.manual_seed(0)
    pool = nnUNetTrainerODEx.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, False)
    pool.set_reference(0)
    calibrate(pool, 0, torch.randn(12, 1, 16, 16))
    calibrate(pool, pool.add_expert(0), torch.randn(12, 1, 16, 16) * 3 + 2)
    weights = pool.state_dict()
    if trainer_name == "nnUNetTrainer":
        weights = {k.removeprefix("experts.0."): v for k, v in weights.items() if k.startswith("experts.0.")}
    model = root / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(PLANS))
    (model / "dataset.json").write_text(json.dumps(DATASET))
    torch.save({"network_weights": weights, "trainer_name": trainer_name,
                "init_args": {"configuration": "2d", "fold": 0}, "inference_allowed_mirroring_axes": (0, 1)},
               model / "fold_0" / "checkpoint_final.pth")
    return model


def _images(root: Path) -> Path:
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"scan_a": rng.normal(size=(1, 20, 24)), "scan_b": rng.normal(size=(1, 20, 24)) ** 2,
              "blank": np.zeros((1, 20, 24))}
    for case, array in arrays.items():
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(images / f"{case}_0000.nii.gz"))
    return images


def test_explain_writes_one_line_per_case_with_the_expert_of_every_patch(tmp_path, capsys):
    model, images, out = _model_folder(tmp_path), _images(tmp_path), tmp_path / "explain.jsonl"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert nnext(["odex", "explain", str(model), "-i", str(images), "-o", str(out), "-f", "0",
                  "--device", "cpu"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case"] for r in records] == ["blank", "scan_a", "scan_b"] and {r["fold"] for r in records} == {"0"}
    for r in records:
        # 20 x 24 at patch 16 x 16, step 0.5: 2 x 2 tiles, each with 4 mirrorings in 2D
        assert r["patches"] == len(r["expert"]) == len(r["score"]) == len(r["far_ood"]) == 16
        assert set(r["expert"]) <= {0, 1} and all(len(s) == 2 for s in r["score"])
        assert sum(r["counts"].values()) == r["patches"]
    blank = records[0]
    assert len(set(blank["expert"])) == 1  # every tile of a blank image looks the same: one deterministic choice
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # inputs only read
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert "scan_a: 16 patches" in capsys.readouterr().out


def test_explain_refuses_bad_input_before_predicting(tmp_path, capsys):
    model, images = _model_folder(tmp_path), _images(tmp_path)
    assert nnext(["odex", "explain", str(model), "-i", str(images), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert nnext(["odex", "explain", str(model), "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert nnext(["odex", "explain", str(model), "-i", str(images), "-o", str(tmp_path / "o.jsonl"), "-f", "3"]) == 2
    assert "fold_3/checkpoint_final.pth" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_explain_refuses_a_model_that_is_not_a_pool(tmp_path, capsys):
    model, images = _model_folder(tmp_path, "nnUNetTrainer"), _images(tmp_path)
    assert nnext(["odex", "explain", str(model), "-i", str(images), "-o", str(tmp_path / "o.jsonl"),
                  "--device", "cpu"]) == 2
    assert "is not an ODEx model" in capsys.readouterr().err
