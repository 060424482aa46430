"""``nnext benchmark``: every trainer of a list on one dataset with domains, one trainer x domain matrix.

Runs the stock ``nnUNetv2_plan_and_preprocess`` (if the dataset is not preprocessed yet), then for every row,
seed and fold ``nnUNetv2_train`` (or ``nnext fda attach`` for test-time rows) and ``nnUNetv2_predict`` on all
of ``imagesTs``, evaluates per domain and writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``:
Dice, surface Dice and HD95 per trainer and test domain (mean ± sd over seeds), the share of stock nnU-Net's
in-domain-to-shifted gap each row closes, each row against nnU-Net's DA5, and costs against stock
``nnUNetTrainer`` measured in the same run. Stock ``nnUNetTrainer``, ``nnUNetTrainerNoDA`` and
``nnUNetTrainerDA5`` are always rows. Finished steps are reused, so a stopped benchmark continues where it
stopped; a failing run is reported and the others go on; an incomplete matrix says so (exit code 1; a
``--shard`` exits 0 when its own runs are done, even before the other shards finish).

Rows: ``TRAINER`` (train from scratch), ``TRAINER@BASE`` (fine-tune from the BASE row's model with
``-pretrained_weights``), ``fda@BASE`` (Fourier multi-source transfer attached to the BASE row's model).
Budgets (``--budget``) apply to any trainer: ``micro``, ``smoke``, ``demo``, ``cpu``, ``paper`` (see nnext
benchmark --list-budgets); each seed trains its own ``<trainer>_<budget>Budget_seed<S>`` results folder.

Example (the simulated multi-scanner brains, trained on one scanner, tested on all)::

    nnext demo-data brain-scanners            # Dataset992, 2 mm (documentation/benchmark.md: the 4 mm run)
    nnext benchmark 992 -tr nnUNetTrainerAvaGrad nnUNetTrainerGIN fda@nnUNetTrainer fda@nnUNetTrainerDA5 \\
        --budget cpu --seeds 0 1 2 --folds 0 -o bench_992

Cluster: ``--print-commands`` prints each run's commands; ``--shard I/N`` runs the I-th of N parts (a run stays
with the run it builds on) and several jobs can share ``-o`` and ``nnUNet_results``; afterwards
``--collect-only`` writes the matrix from the finished runs. Multi-GPU training: ``--num-gpus N`` (nnU-Net's
``-num_gpus``).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

from nnunet_ext.cli.main import UserError

EXAMPLE = ("example: nnext benchmark 992 -tr nnUNetTrainerGIN fda@nnUNetTrainer --budget cpu --seeds 0 1 2 "
           "--folds 0 -o bench_992")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="run trainers with the stock nnU-Net commands; trainer x domain matrix",
                              description=__doc__.replace("``", ""), epilog=EXAMPLE,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", metavar="DATASET",
                   help="nnU-Net dataset id or name in $nnUNet_raw, with domains.json (nnext convert, nnext demo-data)")
    p.add_argument("-tr", "--trainers", nargs="+", default=[], metavar="ROW",
                   help="rows besides the baselines: TRAINER, TRAINER@BASE (fine-tune) or fda@BASE (test-time)")
    p.add_argument("--budget", default="cpu", help="named training budget for every trainer (default: cpu)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--folds", nargs="+", default=["0"], help="folds of splits_final.json, or all (default: 0)")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default: 2d)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-o", "--output", type=Path, help="benchmark folder (predictions, logs, matrix); default "
                                                      "./benchmark_DATASET_BUDGET")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"), help="torch device (default: cpu)")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per training run (nnU-Net's -num_gpus; default 1)")
    p.add_argument("--disable-tta", action="store_true",
                   help="predict without nnU-Net's mirroring test-time augmentation (faster; every row alike)")
    p.add_argument("--tolerance-mm", type=float, default=None,
                   help="surface Dice tolerance in mm (default: the largest voxel spacing of the configuration)")
    p.add_argument("--labels", nargs="+", type=int, metavar="LABEL",
                   help="matrix over these label values only (mean of their per-domain means), written as "
                        "benchmark_labels_<L>_....{json,md,png} beside the default one (e.g. with --collect-only)")
    p.add_argument("--shard", metavar="I/N", help="run only part I of N (0-based) of the runs")
    p.add_argument("--print-commands", action="store_true", help="print every run's commands and exit")
    p.add_argument("--collect-only", action="store_true", help="run nothing; write the matrix from finished runs")
    p.add_argument("--list-budgets", action="store_true", help="list the named budgets and exit")
    p.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from nnunet_ext.benchmark import matrix, report, rows, runner
    from nnunet_ext.trainers.budget import BUDGETS

    if args.list_budgets:
        for name, budget in BUDGETS.items():
            print(f"{name:8s} {budget.epochs} epochs x {budget.iterations} iterations (val {budget.val_iterations}) "
                  f"for a 1000-epoch trainer: {budget.description}")
        return 0
    if args.dataset is None:
        raise UserError(f"give a DATASET (id or name). {EXAMPLE}")
    if args.budget not in BUDGETS:
        raise UserError(f"unknown budget {args.budget!r}; known: {', '.join(BUDGETS)} (nnext benchmark --list-budgets)")
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    if args.print_commands + args.collect_only + (args.shard is not None) > 1:
        raise UserError("--print-commands, --collect-only and --shard exclude each other")
    try:
        row_list = rows.with_baselines([rows.parse_row(spec) for spec in args.trainers])
        shard = rows.parse_shard(args.shard) if args.shard is not None else None
    except ValueError as e:
        raise UserError(str(e)) from None
    settings, bench = _setup(args, [r.spec for r in row_list], runner)
    output = bench.output

    labels = _check_labels(args.labels, bench)
    runs = rows.plan_runs(row_list, settings.seeds, settings.folds)
    if args.print_commands:
        env = "nnUNet_n_proc_DA=0 " if settings.device == "cpu" else ""
        for run in runs:
            print(f"# {run.key}")
            for argv in bench.commands(run):
                print((env if argv[0] == "nnUNetv2_train" else "") + shlex.join(argv))
        print(f"# then: nnext benchmark {shlex.join(sys.argv[2:]).replace('--print-commands', '--collect-only')}")
        return 0

    from nnunet_ext.utils.progress import StepProgress

    mine = runs if shard is None else rows.shard_runs(runs, *shard)
    records: dict[str, runner.RunRecord] = {}
    if args.collect_only:
        records = {run.key: bench.load(run) for run in runs}
    else:
        with StepProgress(f"nnext benchmark {settings.dataset}", total=len(mine) + 1) as progress:
            runner.ensure_preprocessed(bench, progress)
            progress.step("dataset preprocessed")
            for run in mine:
                record = bench.execute(run, progress)
                records[run.key] = record
                progress.step(f"{run.key}: {record.status}" + (f" ({record.error[:200]})" if record.error else ""))
        if shard is not None:
            others = [run for run in runs if run.key not in records]
            records.update({run.key: bench.load(run) for run in others})
    problems = {k: {"status": r.status, "error": r.error} for k, r in records.items() if r.status != "done"}
    domains_with_tests = [d for d in bench.domains.domains
                          if any(bench.domains.cases[c]["domain"] == d for c in bench.test_cases())]
    result = {
        "format_version": 1,
        "complete": not problems,
        "n_runs": len(runs),
        "problems": problems,
        "command": shlex.join(["nnext", *sys.argv[1:]]),
        "settings": settings.to_json(),
        "budget": vars(BUDGETS[settings.budget]),
        "labels": labels,
        "machine": _machine(),
        "versions": _versions(),
        "matrix": matrix.build_matrix(list(settings.rows), settings.seeds, bench.fold_source_domains(),
                                      domains_with_tests,
                                      {k: r.evaluation for k, r in records.items() if r.status == "done"},
                                      {k: r.costs for k, r in records.items() if r.status == "done"},
                                      [int(label) for label in labels] if labels else None),
        "runs": {k: {"status": r.status, "error": r.error, "steps": r.steps, "costs": r.costs}
                 for k, r in records.items()},
    }
    paths = report.write_outputs(result, output)
    print(f"{'complete' if not problems else 'INCOMPLETE'}: {len(runs) - len(problems)} of {len(runs)} runs; "
          f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    own = [records[run.key] for run in mine] if shard is not None else list(records.values())
    return 0 if all(r.status == "done" for r in own) else 1  # a shard answers for its own runs


def _check_labels(labels: list[int] | None, bench) -> dict[str, str] | None:
    """``{label: name}`` of ``--labels`` from the dataset's ``dataset.json``; refuses unknown or background."""
    if not labels:
        return None
    names = {v: k for k, v in bench.dataset_json["labels"].items() if isinstance(v, int)}
    bad = [label for label in labels if label not in names or label == 0]
    if bad or len(set(labels)) != len(labels):
        raise UserError(f"--labels {labels}: each must be a foreground label of {bench.raw / 'dataset.json'}, once "
                        f"(known: {', '.join(f'{v} {k}' for v, k in sorted(names.items()) if v != 0)})")
    return {str(label): names[label] for label in labels}


def _setup(args: argparse.Namespace, specs: list[str], runner):
    from nnunet_ext.utils.nnunet_paths import dataset_name

    try:
        name = dataset_name(args.dataset)
        dataset_id = int(name[len("Dataset"):len("Dataset") + 3])
        tolerance = args.tolerance_mm
        settings = runner.BenchmarkSettings(
            dataset=name, dataset_id=dataset_id, rows=tuple(specs), budget=args.budget, seeds=tuple(args.seeds),
            folds=tuple(str(f) for f in args.folds), configuration=args.configuration, plans=args.plans,
            device=args.device, tta=not args.disable_tta, tolerance_mm=tolerance if tolerance is not None else 0.0,
            num_gpus=args.num_gpus)
        output = args.output or Path(f"benchmark_{name}_{args.budget}")
        bench = runner.Benchmark(settings, output)
        runner.check_settings(bench)
        if tolerance is None:
            settings = runner.BenchmarkSettings.from_json({**settings.to_json(),
                                                           "tolerance_mm": runner.default_tolerance(bench)})
            bench = runner.Benchmark(settings, output)
        if not args.print_commands:
            output.mkdir(parents=True, exist_ok=True)
            runner.load_or_save_settings(settings, output)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    return settings, bench


def _machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, {platform.platform()}"


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("nnunet-ext", "nnunetv2", "torch"))
