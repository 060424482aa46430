"""Training cost of GIN / GIN-IPA per iteration vs stock nnU-Net, in one process on the tiny demo data (CPU).

Not an accuracy benchmark (the cross-scanner rows come from ``nnext benchmark``). Every trainer in
``--trainers`` is built in-process on the same 2d plans (seeded), and all of them run ``train_step`` on the
**same** batches, drawn once from stock nnU-Net's training data loader (its augmentation, single-threaded),
in an interleaved order (iteration ``i``: every trainer once, the order rotated by ``i``) so that load
changes on a shared machine hit all trainers alike. ``train_step`` is what GIN changes: the augmentation on
the device, the forward/backward pass (GIN-IPA: twice the samples), the optimizer step. Reported per trainer:
the median ``train_step`` time and its ratio to stock; and the ratio of a whole iteration, adding the median
time stock nnU-Net's loader took to produce a batch (identical for every trainer here, DA5 excepted).

    python benchmarks/gin.py --workdir /tmp/bench_gin                     # 40 timed iterations per trainer
    python benchmarks/gin.py --workdir /tmp/bench_gin_quick --quick       # checks the script

Writes ``results.json`` and ``results.md`` into the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench_common import machine_facts, prepare_demo_workspace, seed_everything, trainer_class

DATASET_ID = 986
BUILD_SEED = 0
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerGIN", "nnUNetTrainerGINIPA", "nnUNetTrainerGINIPA_keepBatch"]


def _trainer(name: str, work: Path, dataset_dir: Path, seed: int):
    import torch

    os.environ["nnUNet_results"] = str(work / "results" / name)
    pre = work / "nnUNet_preprocessed" / dataset_dir.name
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    seed_everything(seed)
    trainer = trainer_class(name)(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()),
                                  device=torch.device("cpu"))
    trainer.initialize()
    trainer.network.train()
    return trainer


def measure(work: Path, dataset_dir: Path, names: list[str], iterations: int, warmup: int, seed: int) -> dict:
    trainers = {n: _trainer(n, work, dataset_dir, seed) for n in names}
    loader, _ = trainers[names[0]].get_dataloaders()
    batches, load_s = [], []
    for _ in range(warmup + iterations):
        t0 = time.perf_counter()
        batches.append(next(loader))
        load_s.append(time.perf_counter() - t0)
    step_s: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for i, batch in enumerate(batches):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            t0 = time.perf_counter()
            trainers[n].train_step(batch)
            if i >= warmup:
                step_s[n].append(time.perf_counter() - t0)
    load = statistics.median(load_s[warmup:])
    base = statistics.median(step_s[names[0]])
    rows = {n: {"median_train_step_s": statistics.median(s), "train_step_ratio": statistics.median(s) / base,
                "iteration_ratio": (load + statistics.median(s)) / (load + base)} for n, s in step_s.items()}
    return {"batch_size": trainers[names[0]].batch_size,
            "patch_size": list(trainers[names[0]].configuration_manager.patch_size),
            "median_batch_load_s": load, "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "rows": rows, "step_seconds": step_s}


def markdown(result: dict, names: list[str]) -> str:
    lines = ["| trainer | median train_step (s) | train_step / stock | iteration / stock (with data loading) |",
             "|---|---|---|---|"]
    for n in names:
        r = result["rows"][n]
        lines.append(f"| `{n}` | {r['median_train_step_s']:.4f} | {r['train_step_ratio']:.2f}x | "
                     f"{r['iteration_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True, help="work folder (dataset, plans, results)")
    p.add_argument("--trainers", nargs="+", default=TRAINERS, help="trainer names; the first is the baseline")
    p.add_argument("--iterations", type=int, default=40, help="timed iterations per trainer (default 40)")
    p.add_argument("--warmup", type=int, default=3, help="untimed first iterations (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of every trainer's construction")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids oversubscription on a shared 2-core machine)")
    p.add_argument("--quick", action="store_true", help="3 timed iterations: checks the script")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup = 3, 1

    import torch

    from nnunet_ext.dataset_conversion.demo_data import build_demo_dataset, demo_dataset_folder

    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    raw = work / "nnUNet_raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not demo_dataset_folder("mni_tissue", DATASET_ID, raw).is_dir():
        build_demo_dataset("mni_tissue", DATASET_ID, raw, seed=BUILD_SEED, profile="tiny")
    dataset_dir = prepare_demo_workspace(work, DATASET_ID, seed=BUILD_SEED)
    result = measure(work, dataset_dir, args.trainers, args.iterations, args.warmup, args.seed)
    machine = machine_facts()
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, **result}, indent=2))
    header = (f"Command: python benchmarks/gin.py {' '.join(argv or sys.argv[1:])}\nMachine: {machine}; load average "
              f"before/after {result['load_average_before']} / {result['load_average_after']}\n"
              f"Data: MNI152 tissue demo, profile tiny, 2d, batch {result['batch_size']}, patch "
              f"{result['patch_size']}; {args.iterations} timed iterations per trainer on the same batches "
              f"(stock loader: median {result['median_batch_load_s']:.4f} s per batch).\n")
    md = markdown(result, args.trainers)
    (work / "results.md").write_text(header + md + "\n")
    print(header + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
