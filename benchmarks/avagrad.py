"""AvaGrad with early stopping vs SGD / Adam on the embedded cross-domain data (CPU-sized).

Reproduces the design of Sheikh et al. (DART 2022) Tables 1-2 at a CPU budget: nnU-Net 2d on the MNI152
tissue demo dataset (real training slabs; test on held-out real slabs and three simulated scanners), with

    SGD-E     stock nnU-Net (SGD, lr 1e-2, poly), E epochs          (the paper's S-1000)
    SGD-E/20  the same, E/20 epochs                                  (S-50)
    Adam-E/20 nnunetv2's nnUNetTrainerAdam, E/20 epochs              (A-50)
    AG-E/20   nnUNetTrainerAvaGrad (lr 10, eps 0.1), E/20 epochs     (AG-50)
    AG-E/10   the same, E/10 epochs

An "epoch" here is ``--iterations`` training iterations (nnU-Net: 250), so E = ``--full-epochs`` is the
CPU stand-in for nnU-Net's 1000 epochs. Every run trains in-process with nnU-Net's own trainer classes
(only ``num_epochs`` / ``num_iterations_per_epoch`` are overridden), seeds python/numpy/torch, predicts
the test images with nnU-Net's predictor (without mirroring test-time augmentation, to save CPU time,
identically for every configuration) and evaluates with ``nnext evaluate``'s ``evaluate_folder``.
Per-iteration time is measured around ``train_step`` in the same process. Layer speed (Fig. 2) comes from
two extra runs (SGD and AvaGrad, seed 0, E/10 epochs) with ``LayerSpeedMixin``.

    python benchmarks/avagrad.py --workdir benchmarks/results/avagrad            # full: ~1 h on 2 cores
    python benchmarks/avagrad.py --workdir /tmp/avagrad_quick --quick            # smoke: ~5 min

Writes ``results.json``, ``results.md``, ``dice_per_domain.png`` and ``layer_speed.png`` in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import (
    machine_facts,
    plot_dice_per_domain,
    prepare_demo_workspace,
    seed_everything,
    time_calls,
    trainer_class,
)

from nnunet_ext.dataset_conversion.demo_data import DEMO_DATASETS

DATASET_ID = DEMO_DATASETS["mni_tissue"].default_id


@dataclass(frozen=True)
class Config:
    name: str
    trainer: str
    epochs: int
    layer_speed: bool = False


def configs(full_epochs: int) -> list[Config]:
    e20, e10 = max(1, round(full_epochs / 20)), max(2, round(full_epochs / 10))
    if e10 <= e20:
        raise ValueError(f"--full-epochs {full_epochs} is too small: E/10 and E/20 round to the same budget")
    return [
        Config(f"SGD-{full_epochs}", "nnUNetTrainer", full_epochs),
        Config(f"SGD-{e20}", "nnUNetTrainer", e20),
        Config(f"Adam-{e20}", "nnUNetTrainerAdam", e20),
        Config(f"AG-{e20}", "nnUNetTrainerAvaGrad", e20),
        Config(f"AG-{e10}", "nnUNetTrainerAvaGrad", e10),
    ]


def train_predict_evaluate(cfg: Config, seed: int, work: Path, dataset_dir: Path, iterations: int) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.evaluation.per_domain import evaluate_folder

    run_dir = work / "runs" / cfg.name / f"seed{seed}"
    os.environ["nnUNet_results"] = str(run_dir / "results")
    pre = work / "nnUNet_preprocessed" / dataset_dir.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key (set by nnUNetv2_train's --c)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    seed_everything(seed)
    trainer = trainer_class(cfg.trainer)(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = cfg.epochs, iterations, 2
    steps = time_calls(trainer, "train_step")
    t0 = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t0
    step_times = [s for _, s in steps]
    fold_dir = Path(trainer.output_folder)

    # no mirroring TTA: 4x cheaper on CPU, the same for every configuration
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold_dir.parent), use_folds=(0,))
    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential(str(dataset_dir / "imagesTs"), str(pred_dir))
    predict_s = time.perf_counter() - t0
    result = evaluate_folder(pred_dir, dataset_dir / "labelsTs", dataset_dir / "dataset.json",
                             dataset_dir / "domains.json", tolerance_mm=2.0)
    steady = step_times[min(3, len(step_times) - 1):]  # skip warm-up iterations
    return {
        "config": cfg.name, "trainer": cfg.trainer, "epochs": cfg.epochs, "iterations": cfg.epochs * iterations,
        "seed": seed, "train_s": train_s, "predict_s": predict_s,
        "median_iteration_s": statistics.median(steady),
        "dice": {d: v["foreground_mean"]["dice"]["mean"] for d, v in result["domains"].items()},
        "surface_dice": {d: v["foreground_mean"]["surface_dice"]["mean"] for d, v in result["domains"].items()},
        "fold_dir": str(fold_dir),
    }


def summarize(runs: list[dict], cfgs: list[Config]) -> tuple[dict, str]:
    domains = list(runs[0]["dice"])
    base = cfgs[0].name
    base_train = statistics.median(r["train_s"] for r in runs if r["config"] == base)
    base_iter = statistics.median(r["median_iteration_s"] for r in runs if r["config"] == base)
    table: dict = {}
    for cfg in cfgs:
        rs = [r for r in runs if r["config"] == cfg.name]
        if not rs:
            continue
        table[cfg.name] = {
            "n_seeds": len(rs), "iterations": rs[0]["iterations"],
            "dice": {d: (statistics.mean(r["dice"][d] for r in rs),
                         statistics.stdev(r["dice"][d] for r in rs) if len(rs) > 1 else float("nan"))
                     for d in domains},
            "surface_dice": {d: statistics.mean(r["surface_dice"][d] for r in rs) for d in domains},
            "train_time_ratio_vs_" + base: statistics.median(r["train_s"] for r in rs) / base_train,
            "iteration_time_ratio_vs_" + base: statistics.median(r["median_iteration_s"] for r in rs) / base_iter,
            "median_iteration_s": statistics.median(r["median_iteration_s"] for r in rs),
        }
    lines = ["| domain | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(f"{t['dice'][d][0]:.3f} ± {t['dice'][d][1]:.3f}" for t in table.values()) + " |")
    lines.append("| surface Dice (2 mm), mean over domains | " + " | ".join(
        f"{statistics.mean(t['surface_dice'].values()):.3f}" for t in table.values()) + " |")
    lines.append("| training iterations | " + " | ".join(str(t["iterations"]) for t in table.values()) + " |")
    lines.append(f"| training wall time / {base} (median) | " + " | ".join(
        f"{t['train_time_ratio_vs_' + base]:.3f}" for t in table.values()) + " |")
    lines.append(f"| time per iteration / {base} (median) | " + " | ".join(
        f"{t['iteration_time_ratio_vs_' + base]:.3f}" for t in table.values()) + " |")
    return table, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/results/avagrad"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--full-epochs", type=int, default=60, help="E, the SGD budget in epochs (default 60)")
    p.add_argument("--iterations", type=int, default=10, help="training iterations per epoch (default 10)")
    p.add_argument("--quick", action="store_true", help="E=20, 1 seed: checks the script, not the method")
    args = p.parse_args(argv)
    if args.quick:
        args.full_epochs, args.seeds = 20, [0]

    from nnunet_ext.evaluation.layer_speed import plot_layer_speed

    work = args.workdir.resolve()
    dataset_dir = prepare_demo_workspace(work, DATASET_ID)

    cfgs = configs(args.full_epochs)
    e10 = cfgs[-1].epochs
    jobs = [(c, s) for s in args.seeds for c in cfgs]
    jobs += [(Config("SGD-layerspeed", "nnUNetTrainerSGD_layerspeed", e10, True), args.seeds[0]),
             (Config("AG-layerspeed", "nnUNetTrainerAvaGrad_layerspeed", e10, True), args.seeds[0])]
    runs, speed_dirs = [], []
    for i, (cfg, seed) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {cfg.name} ({cfg.trainer}, {cfg.epochs} x {args.iterations} iterations), seed {seed}",
              flush=True)
        r = train_predict_evaluate(cfg, seed, work, dataset_dir, args.iterations)
        print(f"    train {r['train_s']:.0f} s, {r['median_iteration_s']:.3f} s/iteration, "
              f"Dice {', '.join(f'{d} {v:.3f}' for d, v in r['dice'].items())}", flush=True)
        (speed_dirs if cfg.layer_speed else runs).append(r if not cfg.layer_speed else r["fold_dir"])
    table, md = summarize(runs, cfgs)
    spreads = plot_layer_speed(speed_dirs, work / "layer_speed.png", labels=["SGD (nnU-Net)", "AvaGrad"])
    plot_dice_per_domain(table, work / "dice_per_domain.png",
                         "AvaGrad benchmark: nnU-Net 2d, MNI152 tissue, simulated scanners")
    machine = machine_facts()
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, "runs": runs, "table": table,
                                                   "layer_speed_spread": spreads}, indent=2))
    header = (f"Command: python benchmarks/avagrad.py {' '.join(argv or sys.argv[1:])}\n"
              f"Machine: {machine}\nSeeds: {args.seeds}; E = {args.full_epochs} epochs x {args.iterations} "
              f"iterations; mean ± sd over seeds of the mean foreground Dice per domain.\n\n")
    spread_md = "\n\nLayer speed (fastest/slowest layer mean update): " + ", ".join(
        f"{k} {v:.1f}x" for k, v in spreads.items())
    (work / "results.md").write_text(header + md + spread_md + "\n")
    print(header + md + spread_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
