"""CateNorm vs stock nnU-Net on the embedded cross-domain data (CPU-sized).

The design of Xiao et al. (DART 2022) Tables 1-3 at a CPU budget: nnU-Net 2d on the MNI152 tissue demo
dataset (real training slabs; test on held-out real slabs and three simulated scanners), with

    stock          nnUNetTrainer (SGD, poly), E epochs x I iterations          (the paper's "Baseline")
    stock-equal-updates  nnUNetTrainer for 2E - W epochs: as many parameter updates as a CateNorm run
    CN-block1-4    nnUNetTrainerCateNorm: CateNorm in the first four encoder stages (never the bottleneck)
    CN-block1      nnUNetTrainerCateNorm_block1: CateNorm in encoder stage 1 only

stock and CateNorm get the same E x I training iterations (same budget); the CateNorm trainers spend the first
``--warmup`` epochs on the ordinary branch, then do two updates per iteration (plain, then CateNorm).
Every run trains in-process with the trainer classes found by nnU-Net's own lookup (only ``num_epochs``,
``num_iterations_per_epoch`` and ``warmup_epochs`` are overridden), seeds python/numpy/torch, predicts the
test images with nnU-Net's predictor (no mirroring, identically for every configuration) and evaluates with
``nnext evaluate``'s ``evaluate_folder``. CateNorm models are predicted twice: as saved (two-pass, what
``nnUNetv2_predict`` does) and with the ordinary branch only (paper Table 3b, "Ours, BN forward").

Measured beside Dice: parameter ratio to the plain network (paper Table 3a: 1.001x block 1, 1.073x blocks
1-4); median time per training iteration in stage two / stock (around ``train_step``, same process);
inference time ratio, both for the whole prediction of the test folder and for one network forward of a
patch-sized batch (median of 5; interleaved two-pass / plain: median of 7 pairs).

    python benchmarks/catenorm.py --workdir /tmp/bench_catenorm                 # ~25 min on 2 shared cores
    python benchmarks/catenorm.py --workdir /tmp/bench_catenorm_quick --quick   # smoke: ~4 min

Writes ``results.json``, ``results.md`` and ``dice_per_domain.png`` in the workdir.
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

DATASET_ID = 993


@dataclass(frozen=True)
class Config:
    name: str
    trainer: str
    equal_updates: bool = False  # stock with as many parameter updates as a CateNorm run (2E - W epochs)


CONFIGS = (Config("stock", "nnUNetTrainer"), Config("stock-equal-updates", "nnUNetTrainer", equal_updates=True),
           Config("CN-block1-4", "nnUNetTrainerCateNorm"), Config("CN-block1", "nnUNetTrainerCateNorm_block1"))


def _forward_seconds(network, shape, repeats: int = 5) -> float:
    import torch

    x = torch.randn(shape)
    network.eval()
    times = []
    with torch.no_grad():
        network(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved_two_pass_ratio(network, shape, repeats: int = 7) -> float:
    """Median two-pass / plain forward time, the two timed alternately (shared-CPU noise hits both alike)."""
    import torch

    x = torch.randn(shape)
    network.eval()
    plain, two = [], []
    with torch.no_grad():
        network(x)
        for _ in range(repeats):
            for branch, out in (("plain", plain), ("auto", two)):
                t0 = time.perf_counter()
                network(x, branch=branch)
                out.append(time.perf_counter() - t0)
    return statistics.median(two) / statistics.median(plain)


def _predict(predictor, images: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential(str(images), str(out))
    return time.perf_counter() - t0


def run_one(cfg: Config, seed: int, work: Path, dataset_dir: Path, epochs: int, iterations: int,
            warmup: int) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.evaluation.per_domain import evaluate_folder

    run_dir = work / "runs" / cfg.name / f"seed{seed}"
    if cfg.equal_updates:  # CateNorm makes W x I + 2 (E - W) x I parameter updates
        epochs = 2 * epochs - warmup
    os.environ["nnUNet_results"] = str(run_dir / "results")
    pre = work / "nnUNet_preprocessed" / dataset_dir.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key (set by nnUNetv2_train's --c)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    seed_everything(seed)
    trainer = trainer_class(cfg.trainer)(plans, "2d", 0, dataset_json, device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, 2
    is_cn = hasattr(trainer, "warmup_epochs")
    if is_cn:
        trainer.warmup_epochs = warmup
    step_times = time_calls(trainer, "train_step")
    t0 = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t0
    fold_dir = Path(trainer.output_folder)
    net = trainer.network
    n_params = sum(p.numel() for p in net.parameters())
    n_cond = sum(p.numel() for p in net.conditioning_parameters()) if is_cn else 0
    cm = trainer.configuration_manager
    shape = (1, trainer.num_input_channels, *cm.patch_size)  # nnU-Net's sliding window runs one patch at a time
    forward_s = _forward_seconds(net, shape)
    two_pass_ratio = _interleaved_two_pass_ratio(net, shape) if is_cn else None

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold_dir.parent), use_folds=(0,))
    predict_s = _predict(predictor, dataset_dir / "imagesTs", run_dir / "predictions")
    evaluations = {"as_saved": run_dir / "predictions"}
    if is_cn:  # paper Table 3b: the CateNorm-trained network through its ordinary branch only
        predictor.list_of_parameters = [{**params, "catenorm_active": torch.tensor(False)}
                                        for params in predictor.list_of_parameters]  # reloaded per prediction
        _predict(predictor, dataset_dir / "imagesTs", run_dir / "predictions_plain_forward")
        evaluations["plain_forward"] = run_dir / "predictions_plain_forward"
    dice = {}
    for key, folder in evaluations.items():
        result = evaluate_folder(folder, dataset_dir / "labelsTs", dataset_dir / "dataset.json",
                                 dataset_dir / "domains.json", tolerance_mm=2.0)
        dice[key] = {d: v["foreground_mean"]["dice"]["mean"] for d, v in result["domains"].items()}
    stage2 = [s for e, s in step_times if not is_cn or e >= warmup]
    stage1 = [s for e, s in step_times if is_cn and e < warmup][1:]
    return {
        "config": cfg.name, "trainer": cfg.trainer, "seed": seed, "epochs": epochs, "iterations": epochs * iterations,
        "updates": (warmup + 2 * (epochs - warmup)) * iterations if is_cn else epochs * iterations,
        "warmup_epochs": warmup if is_cn else None, "train_s": train_s, "predict_s": predict_s,
        "forward_s": forward_s, "median_iteration_s": statistics.median(s for _, s in step_times[3:]),
        "median_stage2_iteration_s": statistics.median(stage2[1:]), "params": n_params,
        "stage2_over_warmup_iteration": statistics.median(stage2[1:]) / statistics.median(stage1) if stage1 else None,
        "two_pass_over_plain_forward": two_pass_ratio,
        "params_plain": n_params - n_cond, "dice": dice["as_saved"], "dice_plain_forward": dice.get("plain_forward"),
    }


def parameter_ratios(preprocessed_dataset: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Parameters and inference FLOPs (one patch, two passes once stage two runs) of every configuration's
    network / the plain plans network (2d), counted with ``torch.utils.flop_counter`` (machine-independent)."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch.utils.flop_counter import FlopCounterMode

    pm = PlansManager(json.loads((preprocessed_dataset / "nnUNetPlans.json").read_text()))
    cm = pm.get_configuration("2d")
    n_out = len(json.loads((preprocessed_dataset / "dataset.json").read_text())["labels"])
    ratios, flops = {}, {}
    x = torch.randn(1, 1, *cm.patch_size)
    for cfg in CONFIGS:
        net = trainer_class(cfg.trainer).build_network_architecture(pm, cm, 1, n_out, False).eval()
        cond = sum(p.numel() for p in net.conditioning_parameters()) if hasattr(net, "conditioning_parameters") else 0
        total = sum(p.numel() for p in net.parameters())
        ratios[cfg.name] = total / (total - cond)
        if hasattr(net, "activate_catenorm"):
            net.activate_catenorm()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        flops[cfg.name] = counter.get_total_flops()
    return ratios, {k: v / flops["stock"] for k, v in flops.items()}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize(runs: list[dict]) -> tuple[dict, str]:
    domains = list(runs[0]["dice"])
    base = [r for r in runs if r["config"] == "stock"]
    base_iter = statistics.median(r["median_stage2_iteration_s"] for r in base)
    base_pred = statistics.median(r["predict_s"] for r in base)
    base_fwd = statistics.median(r["forward_s"] for r in base)
    table: dict = {}
    for cfg in CONFIGS:
        rs = [r for r in runs if r["config"] == cfg.name]
        if not rs:
            continue
        row = {"n_seeds": len(rs), "iterations": rs[0]["iterations"], "updates": rs[0]["updates"],
               "dice": {d: _mean_sd([r["dice"][d] for r in rs]) for d in domains},
               "param_ratio": rs[0]["params"] / rs[0]["params_plain"],
               "stage2_iteration_time_ratio": statistics.median(r["median_stage2_iteration_s"] for r in rs) / base_iter,
               "predict_time_ratio": statistics.median(r["predict_s"] for r in rs) / base_pred,
               "forward_time_ratio": statistics.median(r["forward_s"] for r in rs) / base_fwd,
               "train_time_ratio": statistics.median(r["train_s"] for r in rs) / statistics.median(
                   r["train_s"] for r in base)}
        if rs[0]["two_pass_over_plain_forward"] is not None:
            row["two_pass_over_plain_forward"] = statistics.median(r["two_pass_over_plain_forward"] for r in rs)
            row["stage2_over_warmup_iteration"] = statistics.median(r["stage2_over_warmup_iteration"] for r in rs)
        if rs[0]["dice_plain_forward"] is not None:
            row["dice_plain_forward"] = {d: _mean_sd([r["dice_plain_forward"][d] for r in rs]) for d in domains}
        for key, ref in (("stock", base), ("equal", [r for r in runs if r["config"] == "stock-equal-updates"])):
            if ref:
                row[f"paired_gain_vs_{key}"] = {d: _mean_sd([r["dice"][d] - b["dice"][d] for r in rs for b in ref
                                                             if b["seed"] == r["seed"]]) for d in domains}
        table[cfg.name] = row
    names = list(table)
    lines = ["| domain | " + " | ".join(names) + " | " + " | ".join(
        f"{n} plain forward" for n in names if "dice_plain_forward" in table[n]) + " |"]
    lines.append("|---" * (1 + len(names) + sum("dice_plain_forward" in table[n] for n in names)) + "|")
    for d in domains:
        cells = [f"{table[n]['dice'][d][0]:.3f} ± {table[n]['dice'][d][1]:.3f}" for n in names]
        cells += [f"{table[n]['dice_plain_forward'][d][0]:.3f} ± {table[n]['dice_plain_forward'][d][1]:.3f}"
                  for n in names if "dice_plain_forward" in table[n]]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in (("stock", "stock"), ("equal", "stock-equal-updates")):
        if f"paired_gain_vs_{key}" not in table[names[0]]:
            continue
        for d in domains:
            lines.append(f"| Dice gain vs {label}, {d} (paired by seed) | " + " | ".join(
                f"{table[n][f'paired_gain_vs_{key}'][d][0]:+.3f} ± {table[n][f'paired_gain_vs_{key}'][d][1]:.3f}"
                for n in names) + " |")
    for key, label in (("param_ratio", "parameters / plain network"),
                       ("stage2_iteration_time_ratio", "time per training iteration in stage two / stock (median)"),
                       ("train_time_ratio", "training wall time / stock (median)"),
                       ("predict_time_ratio", "prediction time of the test folder / stock (median)"),
                       ("forward_time_ratio", "one network forward of a patch / stock (median)")):
        lines.append(f"| {label} | " + " | ".join(f"{table[n][key]:.3f}" for n in names) + " |")
    for key, label in (("stage2_over_warmup_iteration", "same run: stage-two / warm-up iteration time (median)"),
                       ("two_pass_over_plain_forward", "same network: two-pass / plain forward, interleaved (median)")):
        lines.append(f"| {label} | " + " | ".join(
            f"{table[n][key]:.3f}" if key in table[n] else "—" for n in names) + " |")
    lines.append("| training iterations | " + " | ".join(str(table[n]["iterations"]) for n in names) + " |")
    lines.append("| parameter updates | " + " | ".join(str(table[n]["updates"]) for n in names) + " |")
    return table, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/results/catenorm"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15, help="epochs for every configuration (default 15)")
    p.add_argument("--iterations", type=int, default=10, help="training iterations per epoch (default 10)")
    p.add_argument("--warmup", type=int, default=4, help="CateNorm warm-up epochs (default 4)")
    p.add_argument("--configs", nargs="+", choices=[c.name for c in CONFIGS], default=[c.name for c in CONFIGS],
                   help="configurations to train (parameter ratios are reported for all)")
    p.add_argument("--quick", action="store_true", help="4 epochs, warm-up 1, 1 seed: checks the script only")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.warmup, args.seeds = 4, 1, [0]
    if not 0 <= args.warmup < args.epochs:
        p.error(f"--warmup must be in [0, --epochs), got {args.warmup}")

    work = args.workdir.resolve()
    dataset_dir = prepare_demo_workspace(work, DATASET_ID)
    pre = work / "nnUNet_preprocessed"

    param_ratios, flop_ratios = parameter_ratios(pre / dataset_dir.name)
    print("parameters / plain network:", param_ratios, "; inference FLOPs / plain network:", flop_ratios, flush=True)
    jobs = [(c, s) for s in args.seeds for c in CONFIGS if c.name in args.configs]
    runs = []
    t_start = time.perf_counter()
    for i, (cfg, seed) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {cfg.name} ({cfg.trainer}, {args.epochs} x {args.iterations} iterations), "
              f"seed {seed}", flush=True)
        r = run_one(cfg, seed, work, dataset_dir, args.epochs, args.iterations, args.warmup)
        print(f"    train {r['train_s']:.0f} s, stage-2 {r['median_stage2_iteration_s']:.3f} s/iteration, "
              f"Dice {', '.join(f'{d} {v:.3f}' for d, v in r['dice'].items())}", flush=True)
        runs.append(r)
    table, md = summarize(runs)
    plot_dice_per_domain(table, work / "dice_per_domain.png",
                         "CateNorm benchmark: nnU-Net 2d, MNI152 tissue, simulated scanners")
    machine = machine_facts()
    total_min = (time.perf_counter() - t_start) / 60
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, "runs": runs, "table": table,
                                                   "param_ratios": param_ratios, "flop_ratios": flop_ratios,
                                                   "total_minutes": total_min}, indent=2))
    header = (f"Command: python benchmarks/catenorm.py {' '.join(argv or sys.argv[1:])}\n"
              f"Machine: {machine}\nSeeds: {args.seeds}; {args.epochs} epochs x {args.iterations} iterations for "
              f"every configuration, CateNorm warm-up {args.warmup} epochs; mean ± sd over seeds of the mean "
              f"foreground Dice per domain; {total_min:.1f} min of training + evaluation.\n\n")
    md += "\n\nParameters / plain network (built from the plans, untrained): " + ", ".join(
        f"{k} {v:.4f}x" for k, v in param_ratios.items()) + "\n\nInference FLOPs of one patch / plain network " \
        "(two passes once stage two runs; torch.utils.flop_counter): " + ", ".join(
        f"{k} {v:.3f}x" for k, v in flop_ratios.items())
    (work / "results.md").write_text(header + md + "\n")
    print(header + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
