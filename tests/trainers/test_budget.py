"""Named budgets: scaling of epoch settings in any base order, the pinned smoke/demo trainers, budget trainers made
from their names, and the seed that makes the tests' smoke runs repeat exactly."""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import pickle

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

import nnunet_ext.trainers as ours
from nnunet_ext.trainers import budget as budget_module
from nnunet_ext.trainers.avagrad import nnUNetTrainerAvaGrad
from nnunet_ext.trainers.budget import (
    BUDGETS,
    Budget,
    BudgetMixin,
    budget_trainer_name,
    epoch_settings_of,
    get_budget,
    nnUNetTrainerCPU_smoke,
    resolve_budget_trainer,
)
from nnunet_ext.trainers.catenorm import nnUNetTrainerCateNorm
from nnunet_ext.trainers.odex import ODExMixin, nnUNetTrainerODEx
from nnunet_ext.trainers.stream import StreamTrainerMixin, nnUNetTrainerSequential
from tests.conftest import make_trainer
from tests.trainers.plans_only import TWO_STAGES, construct

STAGES = len(TWO_STAGES["stages"])


def _train(cls, ws, monkeypatch, tmp_path) -> dict[str, torch.Tensor]:
    trainer = make_trainer(cls, ws, monkeypatch, tmp_path, epochs=1, iterations=3)
    trainer.run_training()
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


@pytest.mark.e2e
def test_a_seeded_smoke_run_repeats_exactly_and_an_unseeded_one_does_not(tiny_workspace, monkeypatch, tmp_path):
    assert nnUNetTrainerCPU_smoke.seed == 0
    first = _train(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "a")
    torch.manual_seed(123)  # whatever ran before: the trainer seeds itself
    again = _train(nnUNetTrainerCPU_smoke, tiny_workspace, monkeypatch, tmp_path / "b")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    unseeded = type("nnUNetTrainerCPU_smokeUnseeded", (nnUNetTrainerCPU_smoke,), {"seed": None})
    other = _train(unseeded, tiny_workspace, monkeypatch, tmp_path / "c")
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_the_named_budgets():
    assert {n: (b.epochs, b.iterations, b.val_iterations) for n, b in BUDGETS.items()} == {
        "micro": (2, 4, 1), "smoke": (4, 15, 2), "demo": (12, 25, 5), "cpu": (40, 50, 10),
        "paper": (1000, 250, 50)}
    assert BUDGETS["paper"].factor == 1.0
    with pytest.raises(ValueError, match="micro, smoke, demo, cpu, paper"):
        get_budget("tiny")
    with pytest.raises(ValueError, match="lower-case"):
        Budget("CPU_2", 1, 1, 1, "bad name")
    with pytest.raises(ValueError, match="iterations must be an int >= 1"):
        Budget("zero", 1, 0, 1, "no iterations")


def test_an_unknown_budget_fails_when_the_class_is_defined():
    with pytest.raises(ValueError, match="unknown budget 'tiny'; known budgets: micro, smoke, demo, cpu, paper"):
        type("nnUNetTrainerTiny", (BudgetMixin, nnUNetTrainer), {"budget": "tiny"})


#: every hand-written *_smoke / *_demo trainer, pinned: (num_epochs, iterations, val iterations, seed, other settings)
PINNED = {
    "nnUNetTrainerCPU_smoke": (4, 15, 2, 0, {}),
    "nnUNetTrainerCPU_demo": (12, 25, 5, None, {}),
    "nnUNetTrainerAvaGrad_demo": (3, 25, 5, None, {"initial_lr": 10.0}),
    "nnUNetTrainerCateNorm_smoke": (4, 15, 2, 0, {"warmup_epochs": 2}),
    "nnUNetTrainerCateNorm_demo": (12, 25, 5, None, {"warmup_epochs": 4}),
    "nnUNetTrainerCateNorm_block1_demo": (12, 25, 5, None, {"warmup_epochs": 4, "catenorm_stages": (0,)}),
    "nnUNetTrainerSequential_smoke": (2 * STAGES, 15, 2, 0, {"epochs_per_stage": 2}),
    "nnUNetTrainerEWC_smoke": (2 * STAGES, 15, 2, 0, {"epochs_per_stage": 2, "ewc_fisher_batches": 4}),
    "nnUNetTrainerLwF_smoke": (2 * STAGES, 15, 2, 0, {"epochs_per_stage": 2}),
    "nnUNetTrainerODEx_smoke": (2 * STAGES, 23, 2, 0, {"epochs_per_stage": 2, "odex_feature_batches": 4}),
    "nnUNetTrainerODEx_xiNegInf_smoke": (2 * STAGES, 23, 2, 0, {"epochs_per_stage": 2, "odex_xi": -math.inf}),
    "nnUNetTrainerDiceEx_smoke": (2 * STAGES, 23, 2, 0, {"epochs_per_stage": 2, "odex_expansion": "dice"}),
    "nnUNetTrainerStyleCurriculum_smoke": (2, 4, 1, 0, {"curriculum_warmup_fraction": 0.5,
                                                        "curriculum_start_epoch": 1}),
    "nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke": (3, 10, 1, 0, {"initial_lr": 1e-2,
                                                                         "curriculum_start_epoch": 0}),
    "nnUNetTrainerFourierMST_smoke": (4, 15, 2, 0, {"fda_n_mst": 3}),
    "nnUNetTrainerGIN_smoke": (8, 25, 2, 0, {}),
    "nnUNetTrainerGINIPA_smoke": (8, 25, 2, 0, {"ipa_consistency_weight": 10.0}),
    "nnUNetTrainerGINDA5_smoke": (2, 4, 1, 0, {}),
    "nnUNetTrainerCateNormGIN_smoke": (2, 4, 1, 0, {"warmup_epochs": 1}),
    "nnUNetTrainerStyleCurriculumDA5_smoke": (2, 4, 1, 0, {"curriculum_warmup_fraction": 0.5,
                                                           "curriculum_start_epoch": 1}),
    "nnUNetTrainerStyleConsistency_smoke": (8, 20, 2, 0, {"sc_consistency_weight": 10.0,
                                                          "sc_regeneration_weight": 0.1}),
}


def test_every_smoke_and_demo_trainer_is_pinned():
    assert {n for n in ours.__all__ if n.endswith(("_smoke", "_demo"))} == set(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_smoke_and_demo_trainers_keep_their_settings(name, tmp_path, monkeypatch):
    epochs, iterations, val_iterations, seed, settings = PINNED[name]
    trainer = construct(getattr(ours, name), tmp_path, monkeypatch)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch,
            trainer.seed) == (epochs, iterations, val_iterations, seed)
    assert {k: getattr(trainer, k) for k in settings} == settings


def test_construction_seeds_the_generators(tmp_path, monkeypatch):
    torch.manual_seed(123)
    construct(nnUNetTrainerCPU_smoke, tmp_path, monkeypatch)
    drawn = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.rand(4))


@pytest.mark.parametrize("name,stream_first", [
    ("sequential", False), ("sequential", True), ("odex", False), ("odex", True)])
def test_a_budget_gives_a_stream_trainer_the_same_epochs_in_either_base_order(name, stream_first, tmp_path,
                                                                              monkeypatch):
    method, trainer_cls = {"sequential": (StreamTrainerMixin, nnUNetTrainerSequential),
                           "odex": (ODExMixin, nnUNetTrainerODEx)}[name]
    bases = (method, BudgetMixin, nnUNetTrainer) if stream_first else (BudgetMixin, trainer_cls)
    cls = type(f"nnUNetTrainerOrder{name}{stream_first}", bases, {"budget": "cpu"})
    trainer = construct(cls, tmp_path, monkeypatch)
    assert trainer.epochs_per_stage == 8  # 200 x 40/1000
    assert trainer.num_epochs == 8 * STAGES


def test_rounding_keeps_at_least_one_epoch_per_stage(tmp_path, monkeypatch):
    cls = type("nnUNetTrainerSequentialSmokeOrder", (StreamTrainerMixin, BudgetMixin, nnUNetTrainer),
               {"budget": "smoke"})
    trainer = construct(cls, tmp_path, monkeypatch)
    assert trainer.epochs_per_stage == 1 and trainer.num_epochs == STAGES  # round(200 x 0.004) = 1


@pytest.mark.parametrize("base,budget,epochs,extra", [
    (nnUNetTrainer, "cpu", 40, {}),
    (nnUNetTrainer, "paper", 1000, {}),
    (nnUNetTrainerAvaGrad, "cpu", 2, {}),  # its own 50 epochs x 0.04
    (nnUNetTrainerAvaGrad, "paper", 50, {}),
    (nnUNetTrainerCateNorm, "cpu", 40, {"warmup_epochs": 2}),  # warm-up 50 x 0.04
    (nnUNetTrainerCateNorm, "smoke", 4, {"warmup_epochs": 0}),  # round(0.2)
])
def test_a_budget_scales_every_epoch_setting(base, budget, epochs, extra, tmp_path, monkeypatch):
    cls = type(f"nnUNetTrainerScaled{base.__name__}{budget}", (BudgetMixin, base), {"budget": budget})
    trainer = construct(cls, tmp_path, monkeypatch)
    assert trainer.num_epochs == epochs
    assert (trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (
        BUDGETS[budget].iterations, BUDGETS[budget].val_iterations)
    assert {k: getattr(trainer, k) for k in extra} == extra
    assert set(extra) <= set(epoch_settings_of(cls))


def test_an_override_of_a_missing_attribute_is_refused(tmp_path, monkeypatch):
    cls = type("nnUNetTrainerTypo", (BudgetMixin, nnUNetTrainer), {"budget": "smoke",
                                                                   "budget_overrides": {"warmup_epoch": 2}})
    with pytest.raises(ValueError, match="'warmup_epoch'"):
        construct(cls, tmp_path, monkeypatch)


def test_budget_trainer_names():
    assert budget_trainer_name("nnUNetTrainerDA5", "cpu", 1) == "nnUNetTrainerDA5_cpuBudget_seed1"
    assert budget_trainer_name("nnUNetTrainerODEx", "smoke") == "nnUNetTrainerODEx_smokeBudget"
    for trainer, budget, seed, match in (("nnUNetTrainer", "tiny", None, "unknown budget"),
                                         ("nnUNet__Trainer", "cpu", None, "without '__'"),
                                         ("nnUNetTrainer", "cpu", -1, "seed"), ("nnUNetTrainer", "cpu", True, "seed")):
        with pytest.raises(ValueError, match=match):
            budget_trainer_name(trainer, budget, seed)


def test_a_budget_trainer_is_made_from_its_name_once():
    cls = resolve_budget_trainer("nnUNetTrainerDA5_cpuBudget_seed1")
    assert issubclass(cls, BudgetMixin) and issubclass(cls, nnUNetTrainerDA5)
    assert (cls.__name__, cls.budget, cls.seed, cls.budget_overrides) == (
        "nnUNetTrainerDA5_cpuBudget_seed1", "cpu", 1, {})
    assert resolve_budget_trainer("nnUNetTrainerDA5_cpuBudget_seed1") is cls
    assert budget_module.nnUNetTrainerDA5_cpuBudget_seed1 is cls  # the module path pickling uses
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert list(inspect.signature(cls.__init__).parameters) == list(inspect.signature(nnUNetTrainer.__init__).parameters)
    ours_at_cpu = resolve_budget_trainer("nnUNetTrainerODEx_smoke_cpuBudget")  # already budgeted: budget replaced
    assert ours_at_cpu.__bases__ == (ours.nnUNetTrainerODEx_smoke,) and ours_at_cpu.budget == "cpu"
    assert ours_at_cpu.seed is None and ours_at_cpu.budget_overrides == {}


@pytest.mark.parametrize("name", ["nnUNetTrainerDA5_tinyBudget", "nnUNetTrainerDA5_cpuBudget_seed01",
                                  "nnUNetTrainerNoSuchTrainer_cpuBudget", "nnUNetTrainerDA5", "cpuBudget",
                                  "nnUNetTrainer__x_cpuBudget"])
def test_names_that_are_no_budget_trainer_resolve_to_nothing(name):
    with contextlib.redirect_stdout(io.StringIO()):
        assert resolve_budget_trainer(name) is None
    with pytest.raises(AttributeError):
        getattr(budget_module, name)
