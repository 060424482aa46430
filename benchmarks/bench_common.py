"""Shared set-up of the benchmark scripts in this folder (imported as a sibling module when a script runs).

Every benchmark trains on an embedded demo dataset in its own work folder (``nnUNet_raw``,
``nnUNet_preprocessed``, per-run ``nnUNet_results``), seeds python/numpy/torch per run and records the machine.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
from nnunet_ext.utils.plotting import default_style
from nnunet_ext.utils.seeding import seed_everything

__all__ = ["machine_facts", "plot_dice_per_domain", "prepare_demo_workspace", "seed_everything", "time_calls",
           "trainer_class"]


def trainer_class(name: str):
    """A trainer class by name, through nnU-Net's own lookup (finds ours via the discovery folder)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def prepare_demo_workspace(work: Path, dataset_id: int, seed: int = 0, configurations: tuple[str, ...] = ("2d",)) -> Path:
    """Build (once) the MNI152 tissue demo dataset under ``work`` and plan/preprocess it with the stock command.

    Sets ``nnUNet_raw`` / ``nnUNet_preprocessed`` for this process and ``nnUNet_n_proc_DA=0`` (fastest for
    in-process training on 2 cores; planning runs before, as a subprocess, because it crashes with 0).

    Returns:
        The raw dataset folder.
    """
    from nnunet_ext.dataset_conversion.demo_data import build_demo_dataset, demo_dataset_folder
    from nnunet_ext.utils import nnunet_commands as cmd

    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    for d in (raw, pre):
        d.mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre))
    dataset_dir = demo_dataset_folder("mni_tissue", dataset_id, raw)
    if not dataset_dir.is_dir():
        build_demo_dataset("mni_tissue", dataset_id, raw, seed=seed)
    if not (pre / dataset_dir.name / "nnUNetPlans.json").is_file():
        cmd.run_command(cmd.plan_and_preprocess_argv(dataset_id, list(configurations)),
                        cmd.nnunet_env(raw, pre, work / "unused_results"), work / "plan.log")
    os.environ["nnUNet_n_proc_DA"] = "0"
    return dataset_dir


def machine_facts() -> dict[str, object]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "platform": platform.platform()}


def time_calls(trainer, method: str) -> list[tuple[int, float]]:
    """Wrap ``trainer.<method>`` so each call appends ``(current_epoch, seconds)`` to the returned list."""
    calls: list[tuple[int, float]] = []
    original = getattr(trainer, method)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        calls.append((trainer.current_epoch, time.perf_counter() - t0))
        return out

    setattr(trainer, method, timed)
    return calls


def plot_dice_per_domain(table: dict, out: Path, title: str) -> None:
    """Grouped bars: ``table[config]["dice"][domain] = (mean, sd)`` over seeds, one group per domain."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(table)
    domains = list(next(iter(table.values()))["dice"])
    with default_style():  # in-process nnU-Net training has set seaborn's font_scale=2.5 globally
        fig = Figure(figsize=(8, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            means = [table[n]["dice"][d][0] for d in domains]
            stds = [table[n]["dice"][d][1] for d in domains]
            ax.bar(np.arange(len(domains)) - 0.4 + width * (i + 0.5), means, width * 0.9, yerr=stds, label=n,
                   capsize=2)
        ax.set_xticks(np.arange(len(domains)), domains, rotation=20, ha="right")
        ax.set_ylabel("mean foreground Dice (mean ± sd over seeds)")
        low = min(table[n]["dice"][d][0] - table[n]["dice"][d][1] for n in names for d in domains)
        ax.set_ylim(max(0.0, np.floor(low * 10) / 10 - 0.1), 1)  # differences of a few points stay visible
        ax.legend(fontsize="small", ncols=min(len(names), 4), loc="upper right")
        ax.set_title(title)
        fig.savefig(out, dpi=110)
