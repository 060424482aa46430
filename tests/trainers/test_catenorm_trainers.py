"""CateNorm trainers inside real nnU-Net training (CPU, tiny real data), and the stock command chain."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.run.run_training import maybe_load_checkpoint
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext.core.avagrad import AvaGrad
from nnunet_ext.networks.catenorm import CateNormUNet, is_catenorm_key
from nnunet_ext.trainers.catenorm import (
    CATENORM_LOG_FILENAME,
    nnUNetTrainerCateNorm,
    nnUNetTrainerCateNorm_block1,
    nnUNetTrainerCateNorm_warmup0,
    nnUNetTrainerCateNorm_warmup160,
    nnUNetTrainerCateNorm_warmup500,
    nnUNetTrainerCateNormAvaGrad,
)
from nnunet_ext.utils import nnunet_commands as cmd

pytestmark = pytest.mark.e2e


def _plans_and_dataset(ws):
    pre = ws.preprocessed / ws.dataset_dir.name
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    return plans, json.loads((pre / "dataset.json").read_text())


def _make(cls, ws, monkeypatch, tmp_path, epochs=2, iterations=2, warmup=1):
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(var, ws.env[var])
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    plans, dataset_json = _plans_and_dataset(ws)
    trainer = cls(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, 1
    trainer.warmup_epochs = warmup
    return trainer


def test_static_build_needs_no_trainer_instance(tiny_workspace):
    plans, _ = _plans_and_dataset(tiny_workspace)
    pm = PlansManager(plans)
    cm = pm.get_configuration("2d")
    for cls, stages in ((nnUNetTrainerCateNorm, (0, 1, 2)), (nnUNetTrainerCateNorm_block1, (0,))):
        found = recursive_find_trainer_class_by_name(cls.__name__)  # what nnUNetv2_predict does
        net = found.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
        assert isinstance(net, CateNormUNet) and net.catenorm_stages == stages
        assert net.decoder.deep_supervision is False


@pytest.mark.parametrize("cls,warmup", [(nnUNetTrainerCateNorm, 50), (nnUNetTrainerCateNorm_warmup0, 0),
                                        (nnUNetTrainerCateNorm_warmup160, 160),
                                        (nnUNetTrainerCateNorm_warmup500, 500)])
def test_warmup_settings(cls, warmup, tiny_workspace):
    assert cls.warmup_epochs == warmup and cls.catenorm_stages is None
    assert nnUNetTrainerCateNorm_block1.catenorm_stages == (0,)


def test_alternating_updates_touch_the_right_parameters(tiny_workspace, monkeypatch, tmp_path):
    trainer = _make(nnUNetTrainerCateNorm, tiny_workspace, monkeypatch, tmp_path, epochs=2, iterations=2, warmup=1)
    trainer.initialize()
    net = trainer.network
    ordinary = {id(layer.weight) for layer in net.catenorm_layers()}
    conditioning = {id(p) for p in net.conditioning_parameters()}
    calls: list[set[int]] = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        calls.append({id(p) for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None})
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.run_training()
    # warm-up epoch: 2 single updates without the branch; stage two: 2 x (plain update, CateNorm update)
    assert len(calls) == 2 + 2 * 2
    for c in calls[:2] + calls[2::2]:
        assert ordinary <= c and not (conditioning & c)
    for c in calls[3::2]:
        assert conditioning <= c and not (ordinary & c)
    assert net.is_catenorm_active
    log = json.loads((Path(trainer.output_folder) / CATENORM_LOG_FILENAME).read_text())
    assert log["stage"] == ["warmup", "catenorm"] and log["train_loss_catenorm"][0] is None
    assert all(np.isfinite(v) for v in log["train_loss_plain"] + log["train_loss_catenorm"][1:])

    # the checkpoint round-trips through nnU-Net's predictor (strict load from the static build)
    ckpt = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["catenorm_active"].item() is True
    assert any(is_catenorm_key(k) for k in ckpt["network_weights"])
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(Path(trainer.output_folder).parent), use_folds=(0,))
    assert isinstance(predictor.network, CateNormUNet)
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size)
    net.eval(), predictor.network.eval()
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        torch.testing.assert_close(predictor.network(x), net(x))


def test_grad_scaler_cycles_twice_per_iteration(tiny_workspace, monkeypatch, tmp_path):
    trainer = _make(nnUNetTrainerCateNorm_warmup0, tiny_workspace, monkeypatch, tmp_path)
    trainer.initialize()
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1)
    trainer.network.train()
    trainer.network.activate_catenorm()
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales()
    data = torch.randn(2, 1, *patch)
    target = [torch.randint(0, 3, (2, 1, *[round(p * s) for p, s in zip(patch, sc)])).float() for sc in scales]
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    out = trainer.train_step({"data": data, "target": target})
    assert np.isfinite(out["loss"])
    # growth_interval=1: every successful update() doubles the scale, so two cycles give x4
    assert trainer.grad_scaler.get_scale() == pytest.approx(2.0 ** 10)
    moved = {n for n, p in trainer.network.named_parameters() if not torch.equal(p, before[n])}
    assert any(".cond_gamma." in n for n in moved) and any(n.endswith("norm.weight") for n in moved)


def test_pretrained_stock_checkpoint_warm_starts_everything_but_the_branch(tiny_workspace, monkeypatch, tmp_path):
    plans, _ = _plans_and_dataset(tiny_workspace)
    pm = PlansManager(plans)
    stock = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 3, True)
    with torch.no_grad():
        for p in stock.parameters():
            p.normal_()
    ckpt = tmp_path / "stock.pth"
    torch.save({"network_weights": stock.state_dict()}, ckpt)
    trainer = _make(nnUNetTrainerCateNorm_warmup0, tiny_workspace, monkeypatch, tmp_path)
    maybe_load_checkpoint(trainer, False, False, str(ckpt))  # exactly what nnUNetv2_train -pretrained_weights does
    net = trainer.network
    net.hide_method_state = False
    ours = net.state_dict()
    for k, v in stock.state_dict().items():
        if ".seg_layers." not in k:  # nnU-Net's rule: segmentation heads are not transferred
            torch.testing.assert_close(ours[k], v)
    branch = [k for k in ours if is_catenorm_key(k) and k.endswith("weight")]
    assert branch and all(ours[k].abs().max() < 1 for k in branch)  # the branch kept its own (small) init
    trainer.save_checkpoint(str(tmp_path / "after.pth"))  # never saves a checkpoint without the branch
    saved = torch.load(tmp_path / "after.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert set(saved) == set(ours)


def test_composes_with_avagrad_and_refuses_regions(tiny_workspace, monkeypatch, tmp_path):
    trainer = _make(nnUNetTrainerCateNormAvaGrad, tiny_workspace, monkeypatch, tmp_path)
    assert nnUNetTrainerCateNormAvaGrad.epochs == 50 and trainer.initial_lr == 10.0
    trainer.initialize()
    assert isinstance(trainer.optimizer, AvaGrad) and isinstance(trainer.network, CateNormUNet)
    regions = _make(nnUNetTrainerCateNorm, tiny_workspace, monkeypatch, tmp_path / "r")
    regions.label_manager = types.SimpleNamespace(has_regions=True)
    with pytest.raises(NotImplementedError, match="region"):
        regions.initialize()


def _best_constant_dice(label_files: list[Path]) -> float:
    refs = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in label_files]
    best = 0.0
    for k in (1, 2):
        per_case = [np.mean([2 * (r == c).sum() * (c == k) / ((r == c).sum() + r.size * (c == k)) for c in (1, 2)])
                    for r in refs]
        best = max(best, float(np.mean(per_case)))
    return best


def test_stock_train_and_predict_chain(tiny_workspace, tmp_path):
    """nnUNetv2_train -> nnUNetv2_predict and nnUNetv2_predict_from_modelfolder, with a Dice bound."""
    ws = tiny_workspace
    trainer = "nnUNetTrainerCateNorm_smoke"
    env = dict(ws.env, nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, trainer), env, tmp_path / "train.log")
    model = tmp_path / "results" / ws.dataset_dir.name / f"{trainer}__nnUNetPlans__2d"
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer and ckpt["network_weights"]["catenorm_active"].item() is True
    log = json.loads((model / "fold_0" / CATENORM_LOG_FILENAME).read_text())
    assert log["stage"] == ["warmup", "warmup", "catenorm", "catenorm"]

    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0, trainer), env,
                    tmp_path / "predict.log")
    assert f"Using trainer '{trainer}' from:" in (tmp_path / "predict.log").read_text()
    pred2 = tmp_path / "pred_modelfolder"
    cmd.run_command(["nnUNetv2_predict_from_modelfolder", "-i", str(ws.dataset_dir / "imagesTs"), "-o", str(pred2),
                     "-m", str(model), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                     "--disable_progress_bar"], env, tmp_path / "predict2.log")
    from nnunet_ext.evaluation.per_domain import evaluate_folder

    result = evaluate_folder(pred, ws.dataset_dir / "labelsTs", ws.dataset_dir / "dataset.json",
                             ws.dataset_dir / "domains.json")
    for case in result["cases"]:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(pred2 / f"{case}.nii.gz")))
        assert np.array_equal(a, b)
    in_domain = result["domains"]["mni152"]["foreground_mean"]["dice"]["mean"]
    refs = [ws.dataset_dir / "labelsTs" / f"{c}.nii.gz" for c, m in result["cases"].items() if m["domain"] == "mni152"]
    # 30 plain + 30 two-update iterations on 4 slabs: well above any constant prediction
    assert in_domain > _best_constant_dice(refs) + 0.2, in_domain
