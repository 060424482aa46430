"""CateNormUNet from plans (PlainConvUNet / ResEnc, 2D / 3D), plans variant, and the nnext CateNorm commands."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.cli.main import main as nnext
from nnunet_ext.core.catenorm import CateNorm, classwise_statistics
from nnunet_ext.networks.catenorm import (
    CATENORM_UNET_PATH,
    CateNormUNet,
    build_catenorm_unet,
    is_catenorm_key,
)
from nnunet_ext.plans.catenorm import catenorm_plans

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _arch(name: str = PLAIN, dims: int = 2, n_stages: int = 4) -> dict:
    nd = f"{dims}d"
    kwargs = {"n_stages": n_stages, "features_per_stage": [4, 8, 16, 16, 16][:n_stages],
              "conv_op": f"torch.nn.Conv{nd}", "kernel_sizes": [[3] * dims] * n_stages,
              "strides": [[1] * dims] + [[2] * dims] * (n_stages - 1), "n_conv_per_stage_decoder": [1] * (n_stages - 1),
              "conv_bias": True, "norm_op": f"torch.nn.InstanceNorm{nd}", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    kwargs["n_conv_per_stage" if name == PLAIN else "n_blocks_per_stage"] = [2] * n_stages
    return {"network_class_name": name, "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def _build(arch: dict, ds: bool = False, **kw) -> CateNormUNet:
    return build_catenorm_unet(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                               deep_supervision=ds, **kw)


def _plain(arch: dict, ds: bool = False):
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                  deep_supervision=ds)


CASES = [(PLAIN, 2), (PLAIN, 3), (RESENC, 2), (RESENC, 3)]


@pytest.mark.parametrize("name,dims", CASES)
def test_keys_are_the_plain_networks_plus_the_catenorm_branch(name, dims):
    torch.manual_seed(0)
    arch = _arch(name, dims)
    net, plain = _build(arch), _plain(arch)
    ours, theirs = net.state_dict(), plain.state_dict()
    assert set(theirs) <= set(ours)
    assert all(is_catenorm_key(k) for k in set(ours) - set(theirs))
    assert all(ours[k].shape == theirs[k].shape for k in theirs)
    assert net.catenorm_stages == (0, 1, 2)  # the paper's first four, but never the bottleneck of 4 stages
    layers = net.catenorm_layers()
    expected = {PLAIN: 2 * 3, RESENC: 2 * 2 * 3 + 2}[name]  # ResEnc: 2 norms per block + 2 skip projections
    assert len(layers) == expected
    assert all(isinstance(m, CateNorm) for m in layers)
    assert hasattr(net.decoder, "deep_supervision")
    # strict round trip through a fresh build (what nnU-Net's predictor does)
    fresh = _build(arch)
    fresh.load_state_dict(ours)


@pytest.mark.parametrize("name,dims", CASES)
def test_two_pass_inference_and_branch_selection(name, dims):
    torch.manual_seed(0)
    net = _build(_arch(name, dims), ds=True)
    x = torch.randn(2, 1, *[16] * dims)
    net.eval()
    with torch.no_grad():
        plain = net(x, branch="plain")
        torch.testing.assert_close(net(x)[0], plain[0])  # not active yet: one plain pass
        net.activate_catenorm()
        torch.testing.assert_close(net(x)[0], plain[0])  # init_from_plain: the CateNorm pass starts equal
        for layer in net.catenorm_layers():
            layer.cond_gamma.weight.normal_(0, 0.1)
        two_pass = net(x)
        mask = torch.softmax(plain[0], 1)
        torch.testing.assert_close(two_pass[0], net(x, branch="catenorm", mask=mask)[0])
        assert not torch.allclose(two_pass[0], plain[0])
        assert len(two_pass) == len(plain) == 3  # deep supervision in both passes
    net.train()
    torch.testing.assert_close(net(x)[0], net(x, branch="plain")[0])  # nnU-Net's training call: plain
    with pytest.raises(ValueError, match="branch"):
        net(x, branch="both")


def test_block1_and_explicit_stages_and_bad_stages():
    arch = _arch(PLAIN, 2, n_stages=5)
    assert _build(arch).catenorm_stages == (0, 1, 2, 3)
    one = _build(arch, catenorm_stages=[0])
    assert one.catenorm_stages == (0,) and len(one.catenorm_layers()) == 2
    assert _build(arch, catenorm_stages=[4]).catenorm_stages == (4,)  # explicit bottleneck is allowed
    for bad in ([5], [0, 0], []):
        with pytest.raises(ValueError, match="catenorm_stages"):
            _build(arch, catenorm_stages=bad)
    with pytest.raises(NotImplementedError, match="supports the plans networks"):
        build_catenorm_unet("dynamic_network_architectures.architectures.unet.ResidualUNet", {}, [], 1, 3)


def test_parameter_ratio_grows_with_the_number_of_catenorm_stages():
    arch = _arch(PLAIN, 2, n_stages=5)
    plain = sum(p.numel() for p in _plain(arch).parameters())
    ratios = [sum(p.numel() for p in _build(arch, catenorm_stages=s).parameters()) / plain
              for s in ([0], [0, 1], [0, 1, 2, 3])]
    assert 1.0 < ratios[0] < ratios[1] < ratios[2]


def test_hidden_state_lets_a_plain_checkpoint_load_and_keeps_the_branch():
    torch.manual_seed(0)
    arch = _arch(RESENC, 2)
    net, plain = _build(arch), _plain(arch)
    branch_before = {k: v.clone() for k, v in net.state_dict().items() if is_catenorm_key(k)}
    net.hide_method_state = True
    assert not any(is_catenorm_key(k) for k in net.state_dict())
    net.load_state_dict(plain.state_dict())  # strict, as nnU-Net's load_pretrained_weights calls it
    net.hide_method_state = False
    after = net.state_dict()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(after[k], v)
    for k, v in branch_before.items():
        torch.testing.assert_close(after[k], v)
    with pytest.raises(RuntimeError, match="Missing key"):
        net.load_state_dict(plain.state_dict())


def test_batchnorm_plans_use_batch_statistics():
    arch = _arch(PLAIN, 2)
    arch["arch_kwargs"]["norm_op"] = "torch.nn.BatchNorm2d"
    net = _build(arch)
    assert {m.statistics for m in net.catenorm_layers()} == {"batch"}
    assert any(k.endswith("running_mean") for k in net.state_dict())


def _plans(arch: dict) -> dict:
    return {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1],
            "original_median_shape_after_transp": [16, 16], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1], "transpose_backward": [0, 1],
            "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                                      "batch_size": 2, "patch_size": [16, 16], "spacing": [1, 1],
                                      "normalization_schemes": ["ZScoreNormalization"],
                                      "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                                      "resampling_fn_seg": "resample_data_or_seg_to_shape",
                                      "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
                                      "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                      "resampling_fn_probabilities_kwargs": {}, "architecture": arch}},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {}}


def test_plans_variant_builds_the_same_network_from_the_plans_alone():
    arch = _arch(PLAIN, 2, n_stages=5)
    variant = catenorm_plans(_plans(arch), "nnUNetPlans_CateNorm", stages=[0, 1])
    cm = PlansManager(variant).get_configuration("2d")
    assert cm.network_arch_class_name == CATENORM_UNET_PATH
    assert cm.pool_op_kernel_sizes == arch["arch_kwargs"]["strides"]  # nnU-Net still finds the strides
    # the trainer's class settings are ignored when the plans name the CateNorm network
    net = build_catenorm_unet(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                              cm.network_arch_init_kwargs_req_import, 1, 3, catenorm_stages=[3])
    assert net.catenorm_stages == (0, 1)
    reference = _build(arch, catenorm_stages=[0, 1])
    assert set(net.state_dict()) == set(reference.state_dict())
    with pytest.raises(ValueError, match="already builds"):
        catenorm_plans(variant, "again")


def test_nnext_plans_catenorm_writes_a_variant(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "Dataset001_X"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(_plans(_arch(RESENC, 2))))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert nnext(["plans", "catenorm", "-d", "1", "--stages", "0"]) == 0
    written = json.loads((folder / "nnUNetPlans_CateNorm.json").read_text())
    arch = written["configurations"]["2d"]["architecture"]
    assert written["plans_name"] == "nnUNetPlans_CateNorm" and arch["network_class_name"] == CATENORM_UNET_PATH
    assert arch["arch_kwargs"]["catenorm_stages"] == [0] and arch["arch_kwargs"]["base_network_class_name"] == RESENC
    assert nnext(["plans", "catenorm", "-d", "1"]) == 2  # exists: refuses without --overwrite
    assert "exists" in capsys.readouterr().err


def _write_dataset(folder, cases: dict[str, tuple[np.ndarray, np.ndarray]]):
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2},
                                                     "channel_names": {"0": "MR"}, "file_ending": ".nii.gz",
                                                     "numTraining": len(cases)}))
    for case, (image, label) in cases.items():
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.uint8)), str(folder / "labelsTr" / f"{case}.nii.gz"))


def _domain(rng, n, means, stds):
    out = {}
    for i in range(n):
        label = rng.integers(0, 3, size=(4, 6, 6))
        image = np.zeros(label.shape, np.float32)
        for c in range(3):
            image[label == c] = rng.normal(means[c] + rng.normal(0, 5), stds[c], (label == c).sum())
        out[f"case{i}"] = (image, label)
    return out


def test_nnext_catenorm_align_on_tiny_volumes(tmp_path):
    rng = np.random.default_rng(0)
    target, source = tmp_path / "Dataset001_T", tmp_path / "Dataset002_S"
    _write_dataset(target, _domain(rng, 3, [0, 100, 200], [1, 5, 10]))
    _write_dataset(source, _domain(rng, 4, [50, 400, 900], [3, 20, 40]))
    before = sitk.ReadImage(str(source / "imagesTr" / "case0_0000.nii.gz"))
    assert nnext(["catenorm", "align", "--target", str(target), "--source", str(source), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / source.name
    report = json.loads((out / "alignment.json").read_text())
    means_after = []
    for case in ("case0", "case1", "case2", "case3"):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz")))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz")))
        stats = classwise_statistics(image, label, [0, 1, 2])
        np.testing.assert_allclose(stats, np.array(report["after"])[int(case[-1]), 0], rtol=1e-4, atol=1e-3)
        means_after.append(stats[:, 0])
    target_means = np.array(report["target_statistics"])[:, 0, :, 0].mean(0)
    np.testing.assert_allclose(np.mean(means_after, 0), target_means, atol=1e-3)  # domain means now the target's
    assert out.joinpath("dataset.json").is_file()
    # the source is only read
    assert sitk.GetArrayFromImage(before).tolist() == sitk.GetArrayFromImage(
        sitk.ReadImage(str(source / "imagesTr" / "case0_0000.nii.gz"))).tolist()
    assert nnext(["catenorm", "align", "--target", str(target), "--source", str(tmp_path / "missing"), "-o",
                  str(tmp_path / "o2")]) == 2


def test_deepcopy_and_state_flag_are_not_saved():
    net = _build(_arch(PLAIN, 2))
    assert "hide_method_state" not in net.state_dict()
    clone = copy.deepcopy(net)
    assert clone.state_dict().keys() == net.state_dict().keys()


def test_a_state_dict_for_other_stages_is_refused_by_name():
    arch = _arch(PLAIN, 2, n_stages=5)
    trained = _build(arch, catenorm_stages=[0])
    with pytest.raises(ValueError, match=r"encoder stages \[0\] but this network was built with catenorm_stages "
                                         r"\[0, 1, 2, 3\]"):
        _build(arch).load_state_dict(trained.state_dict())
    _build(arch, catenorm_stages=[0]).load_state_dict(trained.state_dict())  # the same stages load


def test_the_mask_mode_is_saved_and_old_checkpoints_keep_the_build_default():
    arch = _arch(PLAIN, 2)
    trained = _build(arch, mask_mode="nearest")
    rebuilt = _build(arch)  # built with the default "area"
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.mask_mode == "nearest" and {m.mask_mode for m in rebuilt.catenorm_layers()} == {"nearest"}
    old = {k: v for k, v in trained.state_dict().items() if k != "catenorm_mask_mode"}
    fresh = _build(arch, mask_mode="nearest")
    fresh.load_state_dict(old)  # strict: written before the mask mode was saved
    assert fresh.mask_mode == "nearest"
    with pytest.raises(ValueError, match="mask_mode"):
        fresh.mask_mode = "bilinear"


@pytest.mark.parametrize("name,dims", [(PLAIN, 2), (RESENC, 3)])
def test_a_blank_patch_gets_the_plain_pass_in_two_pass_inference(name, dims):
    torch.manual_seed(0)
    net = _build(_arch(name, dims)).eval()
    net.activate_catenorm()
    with torch.no_grad():
        for layer in net.catenorm_layers():
            layer.cond_gamma.weight.normal_(0, 0.3)
            layer.cond_beta.weight.normal_(0, 0.3)
        shape = (1,) + (16,) * dims
        batch = torch.stack([torch.zeros(shape), torch.randn(shape), torch.full(shape, 1.5)])
        out = net(batch)
        plain = net(batch, branch="plain")
        torch.testing.assert_close(out[0::2], plain[0::2])  # blank: the plain pass, exactly
        torch.testing.assert_close(out[1:2], net(batch[1:2], branch="catenorm"))  # content: the two passes
        assert not torch.allclose(net(batch[2:], branch="catenorm"), plain[2:])  # the branch would change it
