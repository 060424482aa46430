"""Trainers constructed from a hand-written plans dict: settings tests without the planner or preprocessed data.

nnU-Net's trainer constructor only reads the plans and dataset.json and builds folder paths; stream trainers
also read ``stream.json``. Nothing here can be trained (there are no preprocessed cases).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from nnunet_ext.streams import Stream, write_stream

DATASET = "Dataset998_PlansOnly"
_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.Conv2d",
                    "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1] * 3,
                    "n_conv_per_stage_decoder": [1] * 2, "conv_bias": True, "norm_op": "torch.nn.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
PLANS = {
    "dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1],
    "original_median_shape_after_transp": [16, 16], "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1], "transpose_backward": [0, 1], "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
    "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                              "batch_size": 2, "patch_size": [16, 16], "spacing": [1, 1],
                              "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                              "resampling_fn_data": "resample_data_or_seg_to_shape",
                              "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
                              "resampling_fn_seg_kwargs": {},
                              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                              "resampling_fn_probabilities_kwargs": {}, "architecture": _ARCH}},
}
DATASET_JSON = {"labels": {"background": 0, "tissue": 1}, "channel_names": {"0": "MR"}, "file_ending": ".nii.gz",
                "numTraining": 4}
#: the stream written beside the plans: 2 stages
TWO_STAGES = {"format_version": 1, "stages": [{"stage": 0, "train": ["a", "b"]}, {"stage": 1, "train": ["c"]}]}


def construct(cls, tmp_path: Path, monkeypatch, fold: int = 0):
    """``cls(plans, "2d", fold, dataset_json, cpu)`` with nnU-Net's folders under ``tmp_path``."""
    pre = tmp_path / "nnUNet_preprocessed"
    if not (pre / DATASET / "stream.json").is_file():
        (pre / DATASET).mkdir(parents=True, exist_ok=True)
        write_stream(Stream.from_dict(TWO_STAGES), pre / DATASET)
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    plans = dict(copy.deepcopy(PLANS), continue_training=False)
    return cls(plans, "2d", fold, copy.deepcopy(DATASET_JSON), device=torch.device("cpu"))
