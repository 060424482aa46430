"""The fast core of the DDP harness (in the default test run): ODEx across a stage boundary, CateNorm's refusal.

Both trainers run through nnU-Net's own ``run_training(..., num_gpus=2)`` / ``run_ddp`` in two CPU processes
with gloo (:mod:`tests.ddp.harness`), one after the other in the same two processes. ODEx is the trainer
with the most cross-rank state: a pool that grows at the stage boundary (re-wrapped in DDP), Gaussian
histories and calibrations built from all-reduced statistics, decisions taken from all-reduced distances.
The other methods run under the ``ddp`` marker (``tests/ddp/test_ddp_methods.py``).
"""

from __future__ import annotations

import pytest
import torch

from nnunet_ext.core.odex import Calibration, GaussianStats, mahalanobis
from nnunet_ext.utils.seeding import seed_everything
from tests.ddp import probes
from tests.ddp.harness import DDPRun, assert_all_reduced, assert_identical, check_ranks, run_ddp_trainings

pytestmark = pytest.mark.e2e

ODEX = "nnUNetTrainerODEx_xiNegInf_smoke"
CATENORM = "nnUNetTrainerCateNorm_smoke"


@pytest.fixture(scope="module")
def core_runs(ddp_workspace, tmp_path_factory):
    runs = [
        DDPRun(ODEX, settings={"epochs_per_stage": 1, "num_iterations_per_epoch": 4,
                               "num_val_iterations_per_epoch": 1, "odex_feature_batches": 3},
               instrument=probes.record_odex, probe=probes.odex_state),
        DDPRun(CATENORM),
    ]
    return run_ddp_trainings(runs, str(ddp_workspace.dataset_id), ddp_workspace.env,
                             tmp_path_factory.mktemp("ddp_core"))


def test_odex_weights_pool_and_histories_are_identical_on_both_ranks(core_runs):
    r0, r1 = check_ranks(core_runs[ODEX])
    # nnU-Net split the plans' batch of 2 over the ranks: one random patch, one foreground patch
    assert (r0["batch_size"], r0["oversample"], r1["batch_size"], r1["oversample"]) == (1, 0.0, 1, 1.0)
    assert r0["epochs_trained"] == 2 and r0["pool_size"] == 2 and r0["active"] == 1
    assert [len(h["means"]) for h in r0["histories"]] == [1, 2]
    assert [d["action"] for d in r0["decisions"]] == ["train", "expand"]
    for key in ("weights", "optimizer", "pool_size", "active", "histories", "decisions"):
        assert_identical(r0[key], r1[key], key)


def test_every_odex_all_reduce_combines_both_ranks(core_runs):
    r0, r1 = check_ranks(core_runs[ODEX])
    assert_all_reduced([r0["reductions"], r1["reductions"]])
    # per stage end: Gaussian (sum) and calibration (sum, min, max); at stage 1's start the distances (sum)
    assert [r["op"] for r in r0["reductions"]] == ["sum", "sum", "min", "max", "sum", "sum", "sum", "min", "max"]
    sums = [(a, b) for a, b in zip(r0["reductions"], r1["reductions"]) if a["op"] == "sum"]
    assert all(not torch.equal(a["input"], b["input"]) for a, b in sums)  # the ranks measured different patches


def test_odex_gaussians_equal_one_process_over_both_ranks_patches(core_runs):
    r0, r1 = check_ranks(core_runs[ODEX])
    # per stage end two feature passes: the Gaussian's patches, then fresh patches for its calibration
    features = [torch.cat([a, b]) for a, b in zip(r0["stage_features"], r1["stage_features"])]
    assert [f.shape[0] for f in features] == [6, 6, 6, 6]  # 3 batches x 1 patch x 2 ranks
    expanded = r0["histories"][1]  # stage 0's Gaussian (inherited from expert 0) and stage 1's
    for stage in (0, 1):
        fit, fresh = features[2 * stage], features[2 * stage + 1]
        stats = GaussianStats(fit.shape[1])
        stats.update(fit)
        mean, chol = stats.gaussian()
        calibration = Calibration()
        calibration.update(mahalanobis(fresh, mean, chol))
        torch.testing.assert_close(expanded["means"][stage], mean)
        torch.testing.assert_close(expanded["chols"][stage], chol)
        torch.testing.assert_close(expanded["calibrations"][stage], calibration.as_tensor())
    assert_identical(r0["histories"][0], {k: v[:1] for k, v in expanded.items()}, "expert 0's history")


def test_a_seeded_trainer_seeds_each_rank_differently(core_runs):
    r0, r1 = check_ranks(core_runs[ODEX])
    seed_everything(0)  # what a single-process run of the seed-0 trainer starts from
    assert torch.equal(r0["torch_rng_after_init"], torch.get_rng_state())
    assert not torch.equal(r1["torch_rng_after_init"], r0["torch_rng_after_init"])


def test_catenorm_refuses_ddp_on_every_rank_before_training(core_runs, ddp_workspace):
    for result in core_runs[CATENORM]:
        assert result.error is not None and result.error.startswith("NotImplementedError: CateNorm "), result.error
        assert "(DDP)" in result.error and "Train with one device" in result.error
    assert not list((ddp_workspace.model_dir(CATENORM) / "fold_0").glob("*.pth"))
