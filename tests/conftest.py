"""Shared fixtures: one tiny real-MRI nnU-Net dataset, planned and trained once per test session."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_ext.utils import nnunet_commands as cmd

TINY_ID = 997
SMOKE_TRAINER = "nnUNetTrainerCPU_smoke"
#: the tiny brain-scanners dataset (6 subjects x 6 simulated scanners, 4 mm)
SCANNERS_ID = 989
#: its single-source fold of siemens_3 (fold order: siemens_15, siemens_3, ge_15, ge_3, philips_15, philips_3)
SCANNERS_SOURCE_FOLD = 1
#: stock nnU-Net at the benchmark tests' budget, seed 0: the source model of the site-adaptation tests (the benchmark
#: e2e trains the same run on the same fold, so in the default run it is trained once)
SCANNERS_SOURCE_TRAINER = "nnUNetTrainer_microBudget_seed0"


def environ_with(updates: dict[str, str | None]) -> dict[str, str]:
    """A copy of ``os.environ`` with ``updates`` applied; a value of None removes the variable."""
    env = dict(os.environ)
    for k, v in updates.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@dataclass
class NnunetWorkspace:
    root: Path
    raw: Path
    preprocessed: Path
    results: Path
    dataset_id: int
    dataset_dir: Path
    env: dict[str, str]

    def model_dir(self, trainer: str = SMOKE_TRAINER, configuration: str = "2d") -> Path:
        return self.results / self.dataset_dir.name / f"{trainer}__nnUNetPlans__{configuration}"


def _planned_workspace(root: Path, dataset_id: int, build) -> NnunetWorkspace:
    raw, pre, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for d in (raw, pre, res):
        d.mkdir()
    dataset_dir = build(raw)
    env = cmd.nnunet_env(raw, pre, res)
    cmd.run_command(cmd.plan_and_preprocess_argv(dataset_id, ["2d"]), env, root / "logs" / "plan.log")
    return NnunetWorkspace(root, raw, pre, res, dataset_id, dataset_dir, env)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> NnunetWorkspace:
    """The tiny MNI152 tissue dataset, built and preprocessed (2d) with the stock planner."""
    from nnunet_ext.dataset_conversion.demo_data import build_demo_dataset

    return _planned_workspace(tmp_path_factory.mktemp("nnunet"), TINY_ID,
                              lambda raw: build_demo_dataset("mni_tissue", TINY_ID, raw, seed=0, profile="tiny"))


@pytest.fixture(scope="session")
def scanners_workspace(tmp_path_factory) -> NnunetWorkspace:
    """The tiny brain-scanners dataset (one single-source fold per scanner), built and preprocessed (2d) with the
    stock planner; shared by the benchmark and site-adaptation tests."""
    from nnunet_ext.dataset_conversion.demo_data import demo_dataset

    def build(raw):
        return demo_dataset("brain_scanners").build(SCANNERS_ID, raw, seed=0, profile="tiny")

    return _planned_workspace(tmp_path_factory.mktemp("scanners"), SCANNERS_ID, build)


@pytest.fixture(scope="session")
def scanners_source_model(scanners_workspace) -> Path:
    """Stock nnU-Net (micro budget, seed 0) trained with ``nnUNetv2_train`` on the siemens_3 fold: the source model
    of the site-adaptation tests (its model folder). The benchmark e2e (first in the default run) trains the same run
    in the shared results folder, and then it is used; otherwise it is trained in a results folder of its own, so
    the benchmark's folder never holds a run it did not train."""
    ws = scanners_workspace
    shared = ws.model_dir(SCANNERS_SOURCE_TRAINER)
    if (shared / f"fold_{SCANNERS_SOURCE_FOLD}" / "checkpoint_final.pth").is_file():
        return shared
    results = ws.root / "source_results"
    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", SCANNERS_SOURCE_FOLD, SCANNERS_SOURCE_TRAINER),
                    dict(ws.env, nnUNet_n_proc_DA="0", nnUNet_results=str(results)), ws.root / "logs" / "source.log")
    model_dir = results / ws.dataset_dir.name / f"{SCANNERS_SOURCE_TRAINER}__nnUNetPlans__2d"
    assert (model_dir / f"fold_{SCANNERS_SOURCE_FOLD}" / "checkpoint_final.pth").is_file()
    return model_dir


@pytest.fixture(scope="session")
def smoke_model(tiny_workspace) -> Path:
    """fold 0 of the tiny dataset trained with the stock ``nnUNetv2_train`` and our smoke trainer."""
    env = dict(tiny_workspace.env, nnUNet_n_proc_DA="0")
    cmd.run_command(cmd.train_argv(TINY_ID, "2d", 0, SMOKE_TRAINER), env,
                    tiny_workspace.root / "logs" / "train_smoke.log")
    model_dir = tiny_workspace.model_dir()
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    return model_dir


@pytest.fixture(scope="session")
def adaptation_fold(scanners_workspace, scanners_source_model):
    """A site-adaptation fold of the scanners workspace: the siemens_3 source model -> ge_15, 1 labelled subject."""
    from nnunet_ext.adaptation import define_adaptation_fold
    from nnunet_ext.domains import load_domains

    ws = scanners_workspace
    return define_adaptation_fold(
        ws.preprocessed / ws.dataset_dir.name, load_domains(ws.dataset_dir / "domains.json"), SCANNERS_SOURCE_FOLD,
        scanners_source_model / f"fold_{SCANNERS_SOURCE_FOLD}" / "checkpoint_final.pth", "ge_15", 1, seed=0)


def use_workspace_env(ws, monkeypatch, results):
    """Point nnU-Net's environment variables at the workspace (results in ``results``) for in-process trainers."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.setenv(var, ws.env[var])
    monkeypatch.setenv("nnUNet_results", str(results))


def make_trainer(cls, ws, monkeypatch, tmp_path, epochs=2, iterations=3, fold=0):
    """An in-process trainer of ``cls`` on the workspace's 2d plans, ``fold``, CPU, a tiny budget."""
    use_workspace_env(ws, monkeypatch, tmp_path / "results")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    pre = ws.preprocessed / ws.dataset_dir.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key (set by nnUNetv2_train's --c)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    import torch

    trainer = cls(plans, "2d", fold, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, 1
    return trainer


def count_optimizer_steps(trainer) -> list[int]:
    """Count ``trainer.optimizer.step`` calls from now on: the returned one-element list holds the count."""
    calls = [0]
    step = trainer.optimizer.step

    def counted(*args, **kwargs):
        calls[0] += 1
        return step(*args, **kwargs)

    trainer.optimizer.step = counted
    return calls


def make_batch(trainer, n: int = 2, seed: int = 0) -> dict:
    """A seeded random nnU-Net training batch for ``trainer``'s 2d patch: data, deep-supervision targets, keys."""
    import torch

    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(n, 1, *patch, generator=g)
    target = [torch.randint(0, 3, (n, 1, *[round(p * s) for p, s in zip(patch, sc)]), generator=g).float()
              for sc in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": target, "keys": [f"case{i}" for i in range(n)]}


def train_with_stock_command(ws: NnunetWorkspace, trainer: str, tmp_path: Path) -> tuple[Path, dict]:
    """``nnUNetv2_train`` of ``trainer`` on the workspace (fold 0, single-threaded augmenter); returns the fold
    folder and its final checkpoint (loaded safely)."""
    from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely

    cmd.run_command(cmd.train_argv(ws.dataset_id, "2d", 0, trainer), dict(ws.env, nnUNet_n_proc_DA="0"),
                    tmp_path / "train.log")
    fold = ws.model_dir(trainer) / "fold_0"
    return fold, load_checkpoint_safely(fold / "checkpoint_final.pth")


def predict_and_evaluate(ws: NnunetWorkspace, trainer: str, tmp_path: Path) -> dict[str, float]:
    """Stock ``nnUNetv2_predict`` of the test images with ``trainer``'s model (found by nnU-Net's lookup), then
    ``nnext evaluate``; returns the mean foreground Dice per domain."""
    import subprocess
    import sys

    pred = tmp_path / "pred"
    cmd.run_command(cmd.predict_argv(ws.dataset_dir / "imagesTs", pred, ws.dataset_id, "2d", 0, trainer),
                    ws.env, tmp_path / "predict.log")
    assert f"Using trainer '{trainer}' from:" in (tmp_path / "predict.log").read_text()
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "nnunet_ext", "evaluate", str(pred), "--ref",
                           str(ws.dataset_dir / "labelsTs"), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    domains = json.loads((out / "evaluation.json").read_text())["domains"]
    return {d: v["foreground_mean"]["dice"]["mean"] for d, v in domains.items()}
