"""Feather-light Fourier multi-source transfer on the embedded cross-domain data (CPU-sized).

Reproduces the design of Zakazov et al. (DART 2022) Tables 2-3 with nnU-Net 2d on the MNI152 tissue demo
dataset: a stock nnU-Net model (12 epochs x 25 iterations, seeded, in-process) is trained on real
slabs, turned into a multi-source-transfer model with ``nnext fda attach`` (donors = its fold-0 training
cases), and tested on held-out real slabs ("no shift") and three simulated scanners (subtle = mild,
medium = moderate, severe).

beta is chosen on *validation* targets only, never on test cases, in the paper's two set-ups: "optimal per
pair" (the best beta per target domain) and "averaged optimal" (one beta for all). Validation targets are
the model's fold-0 validation slabs (not trained on) passed through the same simulated scanner settings
as each test domain (``simulate_scanner`` with the dataset's seed, applied per slab).

A third set-up shows what an untuned user gets: beta fixed at the trainer default 0.03.

Conditions (paper names): no adaptation; "None" = one random donor; "MST" = 7 random donors;
"SR-SIM+" = 7 donors chosen by SR-SIM (2D selection: a 2d nnU-Net sees single slices). Predictions use
nnU-Net's predictor without mirroring (identically for all conditions); metrics come from
``nnext evaluate``'s ``evaluate_folder`` (Dice and surface Dice at 2 mm). Runtime: the network part of
prediction on the preprocessed test cases, plain vs MST with random donors (the n_MST x cost) vs MST with
SR-SIM (the selection overhead), in the same process.

    python benchmarks/fourier_mst.py --workdir benchmarks/results/fourier_mst        # 2 trainers x 2 seeds
    python benchmarks/fourier_mst.py --workdir /tmp/fda_quick --quick                # 1 seed, short training
    python benchmarks/fourier_mst.py --workdir benchmarks/results/fourier_mst --timing-only   # runtime again, idle

Two source models per seed: stock ``nnUNetTrainer`` and ``nnUNetTrainerNoDA`` (no augmentation, closer to the
paper's plain U-Net), both trained in-process with the same CPU budget.

Writes ``results.json``, ``results.md``, ``dice_per_domain_<trainer>.png`` and ``beta_grid_<trainer>.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from nnunet_ext.utils.nnunet_paths import fold_folder, model_folder
from nnunet_ext.utils.plotting import default_style
from bench_common import machine_facts, prepare_demo_workspace, seed_everything, trainer_class

DATASET_ID = 989
BUILD_SEED = 0  # seed of the demo dataset: its simulated scanners
SEVERITY_NAMES = {"mild": "subtle", "moderate": "medium", "severe": "severe"}
CONDITIONS = {  # name -> bank settings (None: transfer off)
    "no adaptation": None,
    "None (1 random donor)": {"n_mst": 1, "selection": "random"},
    "MST (7 random donors)": {"n_mst": 7, "selection": "random"},
    "SR-SIM+ MST (7 donors)": {"n_mst": 7, "selection": "srsim"},
}
TRAINER_NOTES = {
    "nnUNetTrainer": "stock nnU-Net: its intensity augmentation already covers part of the shift",
    "nnUNetTrainerNoDA": "nnU-Net without data augmentation, closer to the paper's plain U-Net training",
}
FIXED_BETA = 0.03  # nnUNetTrainerFourierMST's default (the paper's Fig. 3 value): what a user gets untuned
BETAS = [0.0, 0.01, 0.03, 0.05, 0.1]


def train(work: Path, dataset_dir: Path, trainer: str, seed: int, epochs: int, iterations: int) -> Path:
    """A stock nnU-Net trainer in-process with a CPU budget (epochs x iterations); returns the model folder."""
    import torch

    results = work / "runs" / trainer / f"seed{seed}" / "results"
    model = model_folder(dataset_dir.name, trainer, results_root=results)
    if (fold_folder(model, 0) / "checkpoint_final.pth").is_file():
        return model
    os.environ["nnUNet_results"] = str(results)
    pre = work / "nnUNet_preprocessed" / dataset_dir.name
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    seed_everything(seed)
    instance = trainer_class(trainer)(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()),
                                      device=torch.device("cpu"))
    instance.num_epochs, instance.num_iterations_per_epoch, instance.num_val_iterations_per_epoch = epochs, iterations, 5
    instance.run_training()
    return model


def validation_targets(work: Path, dataset_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Fold-0 validation slabs, clean and through each simulated scanner of the test domains."""
    import shutil

    import SimpleITK as sitk

    from nnunet_ext.dataset_conversion.demo_data import simulate_scanner

    split = json.loads((work / "nnUNet_preprocessed" / dataset_dir.name / "splits_final.json").read_text())[0]
    targets = {}
    for name, severity in [("no shift", None)] + [(SEVERITY_NAMES[s], s) for s in SEVERITY_NAMES]:
        folder = work / "validation" / name.replace(" ", "_")
        images, labels = folder / "images", folder / "labels"
        if not images.is_dir():
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for case in split["val"]:
                image = sitk.ReadImage(str(dataset_dir / "imagesTr" / f"{case}_0000.nii.gz"))
                if severity:
                    image = simulate_scanner(image, severity, BUILD_SEED)
                sitk.WriteImage(image, str(images / f"{case}_0000.nii.gz"))
                shutil.copy2(dataset_dir / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz")
        targets[name] = (images, labels)
    return targets


def domain_label(domain: str) -> str:
    for severity, name in SEVERITY_NAMES.items():
        if domain.endswith(f"_sim_{severity}"):
            return name
    return "no shift"


def predict_and_evaluate(predictor, dataset_dir: Path, out: Path) -> dict[str, dict[str, float]]:
    from nnunet_ext.evaluation.per_domain import evaluate_folder

    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(dataset_dir / "imagesTs"), str(out))
    result = evaluate_folder(out, dataset_dir / "labelsTs", dataset_dir / "dataset.json",
                             dataset_dir / "domains.json", tolerance_mm=2.0)
    return {domain_label(d): {"dice": v["foreground_mean"]["dice"]["mean"],
                              "surface_dice": v["foreground_mean"]["surface_dice"]["mean"]}
            for d, v in result["domains"].items()}


def measure_runtime(predictor, dataset_dir: Path, beta: float, repeats: int = 3,
                    max_cases: int | None = None) -> dict[str, float]:
    """Network part of prediction on the preprocessed test cases: plain, MST with 7 random donors, MST with
    7 SR-SIM donors; after one warm-up each, the three timed in turn ``repeats`` times (so a load change on a
    shared machine hits all three alike); medians. ``beta`` > 0 so that the transfer does its real work."""
    import torch
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from nnunet_ext.cli.fda import configure_predictor_bank

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    files = create_lists_from_splitted_dataset_folder(str(dataset_dir / "imagesTs"), ".nii.gz")[:max_cases]
    cases = [torch.from_numpy(preprocessor.run_case(f, None, predictor.plans_manager, predictor.configuration_manager,
                                                    predictor.dataset_json)[0]) for f in files]
    settings = {"plain": None, "mst_random": "random", "mst_srsim": "srsim"}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for repeat in range(repeats + 1):
        for name, selection in settings.items():
            predictor.network.enabled = selection is not None
            if selection is not None:
                configure_predictor_bank(predictor, beta=beta, n_mst=7, selection=selection)
            t0 = time.perf_counter()
            for data in cases[:1] if repeat == 0 else cases:  # repeat 0: warm-up
                predictor.predict_logits_from_preprocessed_data(data)
            if repeat:
                times[name].append(time.perf_counter() - t0)
    predictor.network.enabled = True
    med = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    return {**med, "cases": len(cases), "repeats": repeats, "beta": beta,
            "mst_over_plain": med["mst_random_s"] / med["plain_s"],
            "selection_overhead": med["mst_srsim_s"] / med["mst_random_s"] - 1.0,
            "srsim_mst_over_plain": med["mst_srsim_s"] / med["plain_s"]}


def run_seed(work: Path, dataset_dir: Path, trainer: str, seed: int, epochs: int, iterations: int,
             betas: list[float]) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.cli.fda import attach, configure_predictor_bank, select_beta

    t0 = time.perf_counter()
    model = train(work, dataset_dir, trainer, seed, epochs, iterations)
    train_s = time.perf_counter() - t0
    run_dir = work / "runs" / trainer / f"seed{seed}"
    mst_model = run_dir / "mst_model"
    if not mst_model.is_dir():
        attach(model, mst_model)
    bank = json.loads((mst_model / "fda_bank.json").read_text())["folds"]["0"]

    grid_file = run_dir / "beta_grid.json"  # the slow part: reused when the script is run again
    t0 = time.perf_counter()
    if grid_file.is_file() and json.loads(grid_file.read_text())["betas"] == list(betas):
        grid = json.loads(grid_file.read_text())
    else:
        targets = [(n, i, lab) for n, (i, lab) in validation_targets(work, dataset_dir).items()]
        grid = select_beta(mst_model, targets, betas, ["0"], "checkpoint_final.pth",
                           progress=lambda m: print("    " + m, flush=True))
        grid_file.write_text(json.dumps(grid, indent=2))
    select_s = time.perf_counter() - t0
    per_pair = grid["optimal_per_pair"]
    averaged = grid["averaged_optimal"]
    print(f"  beta: averaged optimal {averaged}, per pair {per_pair} ({select_s:.0f} s)", flush=True)

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False, verbose=False)
    predictor.initialize_from_trained_model_folder(str(mst_model), use_folds=(0,))
    results: dict[str, dict] = {}
    for condition, settings in CONDITIONS.items():
        predictor.network.enabled = settings is not None
        if settings is None:
            results[condition] = {"averaged": predict_and_evaluate(predictor, dataset_dir,
                                                                   run_dir / "pred" / "plain")}
            results[condition]["per_pair"] = results[condition]["fixed"] = results[condition]["averaged"]
            continue
        by_beta = {}
        for beta in sorted({averaged, FIXED_BETA, *per_pair.values()}):
            configure_predictor_bank(predictor, beta=beta, **settings)
            tag = f"{settings['selection']}_n{settings['n_mst']}_beta{beta}"
            by_beta[beta] = predict_and_evaluate(predictor, dataset_dir, run_dir / "pred" / tag)
        results[condition] = {"averaged": by_beta[averaged], "fixed": by_beta[FIXED_BETA],
                              "per_pair": {dom: by_beta[per_pair[dom]][dom] for dom in by_beta[averaged]}}
        print(f"  {condition}: " + ", ".join(f"{d} {v['dice']:.3f}" for d, v in results[condition]["averaged"].items()),
              flush=True)

    timing = measure_runtime(predictor, dataset_dir, FIXED_BETA, repeats=1)
    return {"trainer": trainer, "seed": seed, "train_s": train_s, "select_beta_s": select_s, "beta_grid": grid, "results": results,
            "timing": timing,
            "bank": {"num_donors": bank["num_donors"], "megabytes": bank["bank_megabytes"]}}


def summarize(runs: list[dict]) -> tuple[dict, str]:
    domains = ["severe", "medium", "subtle", "no shift"]
    table: dict = {}
    lines = []
    titles = {"averaged": "beta: averaged optimal", "per_pair": "beta: optimal per pair",
              "fixed": f"beta fixed at {FIXED_BETA} (the trainer default, not tuned)"}
    for setup, title in titles.items():
        lines += [f"\n### {title} (mean foreground Dice; surface Dice at 2 mm in brackets; mean ± sd over "
                  f"{len(runs)} seeds)\n", "| condition | " + " | ".join(domains) + " | average |",
                  "|---|" + "---|" * (len(domains) + 1)]
        for condition in CONDITIONS:
            cells, means = [], []
            for d in domains:
                dice = [r["results"][condition][setup][d]["dice"] for r in runs]
                sdice = [r["results"][condition][setup][d]["surface_dice"] for r in runs]
                table.setdefault(setup, {}).setdefault(condition, {})[d] = {
                    "dice_mean": statistics.mean(dice), "dice_sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                    "surface_dice_mean": statistics.mean(sdice)}
                means.append(statistics.mean(dice))
                sd = f" ± {statistics.stdev(dice):.3f}" if len(dice) > 1 else ""
                cells.append(f"{statistics.mean(dice):.3f}{sd} ({statistics.mean(sdice):.3f})")
            lines.append(f"| {condition} | " + " | ".join(cells) + f" | {statistics.mean(means):.3f} |")
    lines += runtime_lines(runs)
    table["timing_median"] = {k: statistics.median(r["timing"][k] for r in runs) for k in runs[0]["timing"]}
    betas = [(r["seed"], r["beta_grid"]["averaged_optimal"], r["beta_grid"]["optimal_per_pair"]) for r in runs]
    lines.append("\nSelected beta (validation targets): " + "; ".join(
        f"seed {s}: averaged {a}, per pair {p}" for s, a, p in betas))
    return table, "\n".join(lines)


def runtime_lines(runs: list[dict]) -> list[str]:
    t = runs[0]["timing"]
    lines = [f"\n### Runtime (network part of prediction, {t['cases']} preprocessed test cases, no mirroring, beta "
             f"{t['beta']}, median of {t['repeats']} interleaved repeats)\n",
             "| run | plain s | MST random s | MST SR-SIM s | MST / plain | SR-SIM selection overhead |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        x = r["timing"]
        lines.append(f"| {r['trainer']} seed {r['seed']} | {x['plain_s']:.2f} | {x['mst_random_s']:.2f} | "
                     f"{x['mst_srsim_s']:.2f} | {x['mst_over_plain']:.2f} | {100 * x['selection_overhead']:.1f}% |")
    med = {k: statistics.median(r["timing"][k] for r in runs) for k in ("mst_over_plain", "selection_overhead")}
    lines.append(f"\nMedian MST / plain: {med['mst_over_plain']:.2f} (target <= 7 x 1.05 = 7.35); median SR-SIM "
                 f"selection overhead: {100 * med['selection_overhead']:.1f}% (target <= 10%). Bank: "
                 f"{runs[0]['bank']['num_donors']} donors, {runs[0]['bank']['megabytes']} MB.")
    return lines


def timing_only(work: Path, dataset_dir: Path, jobs: list[tuple[str, int]], repeats: int) -> None:
    """Re-measure the runtime of finished runs (their MST model folders) on an otherwise idle machine."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    runs = []
    for trainer, seed in jobs:
        mst_model = work / "runs" / trainer / f"seed{seed}" / "mst_model"
        if not (mst_model / "fda_bank.json").is_file():
            print(f"skip {trainer} seed {seed}: no {mst_model}", flush=True)
            continue
        predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False, verbose=False)
        predictor.initialize_from_trained_model_folder(str(mst_model), use_folds=(0,))
        bank = json.loads((mst_model / "fda_bank.json").read_text())["folds"]["0"]
        runs.append({"trainer": trainer, "seed": seed, "timing": measure_runtime(predictor, dataset_dir, FIXED_BETA,
                                                                                 repeats),
                     "bank": {"num_donors": bank["num_donors"], "megabytes": bank["bank_megabytes"]}})
        print(f"{trainer} seed {seed}: {runs[-1]['timing']}", flush=True)
    text = f"Machine: {machine_facts()}; torch threads {torch.get_num_threads()}\n" + "\n".join(runtime_lines(runs))
    (work / "timing.json").write_text(json.dumps(runs, indent=2))
    (work / "timing.md").write_text(text + "\n")
    print(text)


@default_style()
def plot(runs: list[dict], table: dict, out: Path, trainer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = ["severe", "medium", "subtle", "no shift"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(CONDITIONS)
    for k, condition in enumerate(CONDITIONS):
        means = [table["averaged"][condition][d]["dice_mean"] for d in domains]
        sds = [table["averaged"][condition][d]["dice_sd"] for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, means, width, yerr=sds, label=condition, capsize=2)
    ax.set_xticks(np.arange(len(domains)) + width * (len(CONDITIONS) - 1) / 2, domains)
    ax.set_ylabel("mean foreground Dice (test)")
    ax.set_title(f"{trainer} + Fourier MST, beta averaged optimal, {len(runs)} seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"dice_per_domain_{trainer}.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in runs[0]["beta_grid"]["dice"]:
        curve = np.mean([r["beta_grid"]["dice"][name] for r in runs], axis=0)
        ax.plot(runs[0]["beta_grid"]["betas"], curve, marker="o", label=name)
    ax.plot(runs[0]["beta_grid"]["betas"], np.mean([r["beta_grid"]["mean_dice"] for r in runs], axis=0), "k--", marker="s", label="mean")
    ax.set_xlabel("beta")
    ax.set_ylabel("validation Dice (SR-SIM+ MST)")
    ax.set_title(trainer)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"beta_grid_{trainer}.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/results/fourier_mst"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--trainers", nargs="+", default=list(TRAINER_NOTES), help="stock trainers to adapt")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--betas", type=float, nargs="+", default=BETAS, help="beta grid searched on validation targets")
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="1 seed, 3 x 10 iterations: checks the script only")
    p.add_argument("--timing-only", action="store_true",
                   help="only re-measure the runtime of finished runs (run it on an idle machine); writes timing.md")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.iterations, args.trainers, args.betas = [0], 3, 10, ["nnUNetTrainer"], [0.0, 0.03]

    work = args.workdir.resolve()
    dataset_dir = prepare_demo_workspace(work, DATASET_ID, seed=BUILD_SEED)

    jobs = [(t, seed) for seed in args.seeds for t in args.trainers]
    if args.timing_only:
        timing_only(work, dataset_dir, jobs, args.repeats)
        return 0
    runs = []
    for i, (trainer, seed) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {trainer}, seed {seed}: train {args.epochs} x {args.iterations} iterations, attach, "
              f"select beta, predict", flush=True)
        runs.append(run_seed(work, dataset_dir, trainer, seed, args.epochs, args.iterations, args.betas))
        report(runs, args, argv, work, complete=i == len(jobs))
    return 0


def report(runs: list[dict], args: argparse.Namespace, argv: list[str] | None, work: Path, complete: bool) -> None:
    """Write results.json / results.md / plots for the runs so far (rewritten after every run)."""
    machine = machine_facts()
    tables, sections = {}, []
    for trainer in dict.fromkeys(r["trainer"] for r in runs):
        mine = [r for r in runs if r["trainer"] == trainer]
        tables[trainer], md = summarize(mine)
        plot(mine, tables[trainer], work, trainer)
        sections.append(f"## {trainer} ({TRAINER_NOTES.get(trainer, '')})\n{md}")
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, "complete": complete, "runs": runs,
                                                   "tables": tables}, indent=2))
    header = (f"Command: python benchmarks/fourier_mst.py {' '.join(argv or sys.argv[1:])}\nMachine: {machine}\n"
              f"Seeds {args.seeds}; nnU-Net 2d trained {args.epochs} x {args.iterations} iterations per run; "
              f"n_MST 7; beta grid {args.betas} on validation targets."
              f"{'' if complete else ' PARTIAL: not all runs finished yet.'}\n\n")
    (work / "results.md").write_text(header + "\n\n".join(sections) + "\n")
    print(header + "\n\n".join(sections), flush=True)


if __name__ == "__main__":
    sys.exit(main())
