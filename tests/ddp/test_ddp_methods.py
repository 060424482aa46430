"""Every other method trainer through nnU-Net's DDP code path (marker ``ddp``: ``python -m pytest -m ddp tests/ddp``).

The runs share two CPU processes (gloo) and train a few iterations each, stream trainers across their stage
boundary; Fourier MST and ODEx also run nnU-Net's final validation, each rank predicting its share of the
validation cases with the method's test-time state. Each run must end with the same weights and optimizer
state on both ranks and the same method state, and the method state must equal what one process computes
from both ranks' batches.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nnunet_ext.trainers.continual_baselines import nnUNetTrainerEWC_smoke
from nnunet_ext.trainers.fourier_mst import nnUNetTrainerFourierMST_smoke
from nnunet_ext.trainers.toolkit import unwrap
from tests.conftest import make_trainer
from tests.ddp import probes
from tests.ddp.harness import DDPRun, assert_all_reduced, assert_identical, check_ranks, run_ddp_trainings

pytestmark = [pytest.mark.e2e, pytest.mark.ddp]

STREAM = {"epochs_per_stage": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}
SHORT = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}
RUNS = {
    "ewc": DDPRun("nnUNetTrainerEWC_smoke", settings={**STREAM, "ewc_fisher_batches": 2},
                  instrument=probes.record_ewc, probe=probes.ewc_state),
    "lwf": DDPRun("nnUNetTrainerLwF_smoke", settings=STREAM, instrument=probes.record_training_batches,
                  probe=probes.lwf_state),
    "fourier_mst": DDPRun("nnUNetTrainerFourierMST_smoke", settings=SHORT, validate=True,
                          instrument=probes.record_training_batches, probe=probes.fourier_state),
    "style_curriculum": DDPRun("nnUNetTrainerStyleCurriculum_smoke", instrument=probes.record_training_batches,
                               probe=probes.curriculum_state),  # its own budget: 2 epochs x 4, LSCL in epoch 1
    "avagrad": DDPRun("nnUNetTrainerAvaGrad_smokeBudget_seed0", settings=SHORT,
                      instrument=probes.record_training_batches, probe=probes.training_state),
    "odex": DDPRun("nnUNetTrainerODEx_smoke", settings={**STREAM, "odex_feature_batches": 3}, validate=True,
                   instrument=probes.record_odex, probe=probes.odex_state),
    "diceex": DDPRun("nnUNetTrainerDiceEx_smoke", settings={**STREAM, "odex_feature_batches": 3},
                     instrument=probes.record_odex, probe=probes.odex_state),
    "style_consistency": DDPRun("nnUNetTrainerStyleConsistency_smoke", settings=SHORT,
                                instrument=probes.record_training_batches, probe=probes.style_consistency_state),
}
EPOCHS = {"ewc": 2, "lwf": 2, "fourier_mst": 1, "style_curriculum": 2, "avagrad": 1, "odex": 2, "diceex": 2,
          "style_consistency": 1}


@pytest.fixture(scope="module")
def method_runs(ddp_workspace, tmp_path_factory):
    runs = [dataclasses.replace(run, name=key) for key, run in RUNS.items()]
    return run_ddp_trainings(runs, str(ddp_workspace.dataset_id), ddp_workspace.env,
                             tmp_path_factory.mktemp("ddp_methods"))


def test_style_consistency_regeneration_decoder_is_identical_on_both_ranks(method_runs):
    r0, r1 = check_ranks(method_runs["style_consistency"])
    assert_identical(r0["decoder"], r1["decoder"], "regeneration decoder")
    assert r0["keys"] != r1["keys"]  # each rank trained on its own share: the decoder's gradients were averaged


def _validation_cases(ws, trainer: str) -> list[str]:
    summary = json.loads((ws.model_dir(trainer) / "fold_0" / "validation" / "summary.json").read_text())
    return sorted(c["prediction_file"].rsplit("/", 1)[-1] for c in summary["metric_per_case"])


@pytest.mark.parametrize("key", list(RUNS))
def test_weights_and_optimizer_state_are_identical_on_both_ranks(key, method_runs):
    r0, r1 = check_ranks(method_runs[key])
    assert (r0["batch_size"], r1["batch_size"]) == (1, 1)  # the plans' batch of 2, split by nnU-Net
    assert r0["epochs_trained"] == r1["epochs_trained"] == EPOCHS[key]
    assert len(r0["keys"]) == len(r1["keys"]) > 0
    assert_identical(r0["weights"], r1["weights"], "weights")
    assert_identical(r0["optimizer"], r1["optimizer"], "optimizer state")


def test_ewc_fisher_is_the_whole_batch_fisher_on_both_ranks(method_runs, ddp_workspace, monkeypatch, tmp_path):
    r0, r1 = check_ranks(method_runs["ewc"])
    assert_identical(r0["ewc"], r1["ewc"], "consolidated Fisher and anchors")
    assert r0["ewc"]["num_stages"] == 2 and len(r0["fisher_calls"]) == len(r1["fisher_calls"]) == 2
    # one process, the same weights, each Fisher batch = both ranks' shares
    single = make_trainer(nnUNetTrainerEWC_smoke, ddp_workspace, monkeypatch, tmp_path)
    single.ewc_fisher_batches = RUNS["ewc"].settings["ewc_fisher_batches"]
    single.initialize()
    for a, b in zip(r0["fisher_calls"], r1["fisher_calls"]):
        assert a["count"] == b["count"] == 2
        assert_identical(a["fisher"], b["fisher"], "Fisher")
        unwrap(single.network).load_state_dict(a["weights"])
        single.dataloader_train = iter([
            {"data": torch.cat([x["data"], y["data"]]), "target": [torch.cat(t) for t in zip(x["target"], y["target"])]}
            for x, y in zip(a["batches"], b["batches"])])
        expected = single.estimate_fisher().fisher()
        assert set(expected) == set(a["fisher"])
        largest = max(float(f.abs().max()) for f in expected.values())
        assert largest > 0
        for name, fisher in expected.items():
            # DDP gives nnU-Net's lowest deep-supervision output the loss weight 1e-6 instead of 0
            torch.testing.assert_close(a["fisher"][name], fisher, rtol=1e-3, atol=1e-6 * largest, msg=name)


def test_lwf_teacher_is_identical_on_both_ranks(method_runs):
    r0, r1 = check_ranks(method_runs["lwf"])
    assert r0["teacher"] is not None  # stage 1 started from a teacher
    assert_identical(r0["teacher"], r1["teacher"], "teacher")


def test_fourier_bank_is_the_single_process_bank_and_serves_both_ranks_validation(
        method_runs, ddp_workspace, monkeypatch, tmp_path):
    r0, r1 = check_ranks(method_runs["fourier_mst"])
    assert_identical(r0["bank"], r1["bank"], "style bank")
    assert r0["bank_settings"]["num_donors"] > 0
    single = make_trainer(nnUNetTrainerFourierMST_smoke, ddp_workspace, monkeypatch, tmp_path)
    single.initialize()
    single.build_style_bank()
    assert_identical(r0["bank"], dict(unwrap(single.network).bank.state_dict()), "bank vs one process")
    # rank 0's summary holds the validation cases of both ranks (fold 0: two, one per rank)
    assert len(_validation_cases(ddp_workspace, "nnUNetTrainerFourierMST_smoke")) == 2


def test_style_curriculum_runs_its_steps_on_each_ranks_own_batches(method_runs):
    r0, r1 = check_ranks(method_runs["style_curriculum"])
    logs = [r["curriculum_log"]["epochs"] for r in (r0, r1)]
    for log in logs:
        assert [e["epoch"] for e in log] == [1] and log[0]["batches"] == 4
        assert len(log[0]["mean_loss_per_step"]) == 4  # n = 3: four updates per batch, each synchronised
    assert logs[0][0]["per_batch_losses"] != logs[1][0]["per_batch_losses"]


@pytest.mark.parametrize("key", ["odex", "diceex"])
def test_odex_variants_reduce_their_statistics_over_both_ranks(key, method_runs):
    r0, r1 = check_ranks(method_runs[key])
    for state in ("pool_size", "active", "histories", "decisions"):
        assert_identical(r0[state], r1[state], state)
    assert_all_reduced([r0["reductions"], r1["reductions"]])
    ops = [r["op"] for r in r0["reductions"]]
    assert ops.count("min") == ops.count("max") == 2  # one calibration per stage end
    if key == "diceex":
        assert "dice" in r0["decisions"][1]  # the training-Dice sums went through the reduction too


def test_odex_validation_routes_both_ranks_cases(method_runs, ddp_workspace):
    check_ranks(method_runs["odex"])
    # the stream's validation cases of all stages (stage 1 has none: its training cases), over two ranks
    assert _validation_cases(ddp_workspace, "nnUNetTrainerODEx_smoke") == [
        "mni152_slab04.nii.gz", "mni152_slab06.nii.gz", "mni152_slab07.nii.gz"]
