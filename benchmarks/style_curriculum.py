"""Style curriculum learning (LSCL) on the embedded cross-domain data (CPU-sized).

Follows the protocol of Liu et al. (MICCAI 2021): one segmentation model is trained first (stock nnU-Net 2d,
in-process, seed ``--pretrain-seed``), then fine-tuned from that checkpoint (the stock ``-pretrained_weights``
loading) with each condition for the same number of epochs and batches, once per seed in ``--seeds`` (the
seeds vary the fine-tuning: batches, augmentation, styles):

- ``stock``: the pretrained model, no fine-tuning;
- ``stock fine-tuned``: stock nnU-Net training continued with the fine-tuning learning rate (1 update/batch);
- ``stock fine-tuned, equal updates``: the same with 4x the batches per epoch, i.e. as many parameter updates
  as SCL / LSCL make (n + 1 = 4 per batch), so a gain cannot come from the update count alone;
- ``random stylisation``: ``nnUNetTrainerStyleCurriculum_finetune_random`` (the paper's WaveCT-AIN row);
- ``SCL``: ``nnUNetTrainerStyleCurriculum_finetune_scl`` (raw gradient sign);
- ``LSCL``: ``nnUNetTrainerStyleCurriculum_finetune`` (n 3, eps 0.25, 4 x 4 LGS);
- ``LSCL + rotation TTA``: the LSCL model predicted with the network's 0/90/180/270-degree TTA.

Training data: real MNI152 slabs only (one domain; style images are other training slabs after nnU-Net's
augmentation); ``--profile tiny`` (default, 64 x 64 in-plane, fast on 2 CPU cores) or ``demo``. Test: held-out
real slabs ("no shift") and their three simulated-scanner copies (mild, moderate, severe), never used for any
choice. Predictions use nnU-Net's predictor without mirroring, for all conditions alike; Dice, HD95 and ASSD
per domain from ``nnext evaluate``'s ``evaluate_folder``. Cost: mean wall time per training epoch of each
fine-tuning condition relative to ``stock fine-tuned`` (same process, same batches per epoch). Finished
trainings and predictions are cached in the work folder, so a rerun with fewer seeds only summarises.

    python benchmarks/style_curriculum.py --workdir /tmp/bench_lscl                 # defaults: 3 seeds
    python benchmarks/style_curriculum.py --workdir /tmp/bench_lscl_quick --quick   # checks the script only

Writes ``results.json``, ``results.md``, ``dice_per_domain.png`` and ``curriculum_loss.png``.
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
from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely
from nnunet_ext.utils.nnunet_paths import dataset_folder, fold_folder, model_folder
from nnunet_ext.utils.plotting import default_style
from bench_common import (
    machine_facts,
    prepare_demo_workspace,
    seed_everything,
    trainer_class,
)

DATASET_IDS = {"tiny": 987, "demo": 988}
BUILD_SEED = 0
FINETUNE_LR = 1e-3
FINETUNES = {  # condition -> (trainer, batches per epoch as a multiple of --finetune-iterations); None: none
    "stock": None,
    "stock fine-tuned": ("nnUNetTrainer", 1),
    "stock fine-tuned, equal updates": ("nnUNetTrainer", 4),  # n + 1 = 4: as many updates as SCL / LSCL
    "random stylisation": ("nnUNetTrainerStyleCurriculum_finetune_random", 1),
    "SCL": ("nnUNetTrainerStyleCurriculum_finetune_scl", 1),
    "LSCL": ("nnUNetTrainerStyleCurriculum_finetune", 1),
}
CONDITIONS = [*FINETUNES, "LSCL + rotation TTA"]
DOMAINS = {"mni152": "no shift", "mni152_sim_mild": "mild", "mni152_sim_moderate": "moderate",
           "mni152_sim_severe": "severe"}


def _instance(name: str, results: Path, dataset_dir: Path, epochs: int, iterations: int):
    import torch

    os.environ["nnUNet_results"] = str(results)
    pre = dataset_folder("preprocessed", dataset_dir.name)
    plans = dict(json.loads((pre / "nnUNetPlans.json").read_text()), continue_training=False)
    trainer = trainer_class(name)(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()),
                                  device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, iterations, 2
    return trainer


def _model_dir(results: Path, dataset_dir: Path, name: str) -> Path:
    return model_folder(dataset_dir.name, name, results_root=results)


def train(run_dir: Path, dataset_dir: Path, name: str, seed: int, epochs: int, iterations: int,
          pretrained: Path | None = None, tag: str | None = None, val_iterations: int = 1,
          reinit_heads: bool = False) -> tuple[Path, float]:
    """Train ``name`` in-process (optionally from ``pretrained``); returns the model folder and s per epoch."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    results = run_dir / (tag or name)
    model = _model_dir(results, dataset_dir, name)
    timing = results / "epoch_seconds.json"
    if (fold_folder(model, 0) / "checkpoint_final.pth").is_file() and timing.is_file():
        return model, json.loads(timing.read_text())["mean"]
    seed_everything(seed)
    trainer = _instance(name, results, dataset_dir, epochs, iterations)
    trainer.num_val_iterations_per_epoch = val_iterations
    if pretrained is not None:
        trainer.initial_lr = FINETUNE_LR
        trainer.initialize()
        if reinit_heads:  # exactly nnUNetv2_train -pretrained_weights: the 1x1 segmentation heads start anew
            load_pretrained_weights(trainer.network, str(pretrained))
        else:  # same task: keep every weight, heads included
            trainer.network.load_state_dict(load_checkpoint_safely(pretrained, map_location="cpu")["network_weights"])
    trainer.run_training()
    log = getattr(trainer.logger, "local_logger", trainer.logger).my_fantastic_logging  # nnU-Net 2.8: MetaLogger
    seconds = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    timing.write_text(json.dumps({"epochs": seconds, "mean": statistics.mean(seconds)}))
    return model, statistics.mean(seconds)


def predict_and_evaluate(model: Path, dataset_dir: Path, out: Path, rotation_tta: bool = False) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.evaluation.per_domain import evaluate_folder
    from nnunet_ext.networks.style_curriculum import with_rotation_tta

    cached = out / "metrics.json"
    if cached.is_file():  # e.g. the shared pretrained model, predicted once for all seeds
        return json.loads(cached.read_text())
    out.mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False, verbose=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    if rotation_tta:  # the predictor reloads these parameters before every case: switch TTA in them
        predictor.list_of_parameters = [with_rotation_tta(p, True) for p in predictor.list_of_parameters]
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential(str(dataset_dir / "imagesTs"), str(out))
    seconds = time.perf_counter() - t0
    result = evaluate_folder(out, dataset_dir / "labelsTs", dataset_dir / "dataset.json",
                             dataset_dir / "domains.json", tolerance_mm=2.0)
    metrics = {DOMAINS.get(d, d): {m: v["foreground_mean"][m]["mean"] for m in ("dice", "hd95", "assd")}
               for d, v in result["domains"].items()}
    cached.write_text(json.dumps({"domains": metrics, "predict_s": seconds}))
    return {"domains": metrics, "predict_s": seconds}


def run_seed(work: Path, dataset_dir: Path, seed: int, args) -> dict:
    run_dir = work / "runs" / f"seed{seed}"
    t0 = time.perf_counter()  # one pretrained model (seed --pretrain-seed) shared by all fine-tuning seeds
    base, base_epoch_s = train(work / "runs" / f"pretrain_seed{args.pretrain_seed}", dataset_dir, "nnUNetTrainer",
                               args.pretrain_seed, args.pretrain_epochs, args.iterations, tag="pretrain")
    pretrain_s = time.perf_counter() - t0
    print(f"  pretrained model ready ({pretrain_s:.0f} s, {base_epoch_s:.1f} s/epoch)", flush=True)
    checkpoint = fold_folder(base, 0) / "checkpoint_final.pth"
    models, epoch_s, curriculum = {"stock": base}, {}, {}
    for condition, spec in FINETUNES.items():
        if spec is None:
            continue
        name, factor = spec
        t0 = time.perf_counter()
        models[condition], epoch_s[condition] = train(run_dir, dataset_dir, name, seed, args.finetune_epochs,
                                                      factor * args.finetune_iterations, pretrained=checkpoint,
                                                      tag=f"ft_{name}" + (f"_x{factor}" if factor > 1 else ""),
                                                      reinit_heads=args.reinit_heads)
        log = fold_folder(models[condition], 0) / "style_curriculum.json"
        if log.is_file():
            curriculum[condition] = json.loads(log.read_text())["epochs"]
        print(f"  {condition}: fine-tuned in {time.perf_counter() - t0:.0f} s ({epoch_s[condition]:.1f} s/epoch)",
              flush=True)
    results = {}
    for condition in CONDITIONS:
        tta = condition == "LSCL + rotation TTA"
        model = models["LSCL" if tta else condition]
        pred_dir = (base.parents[2] if condition == "stock" else run_dir) / "pred" / condition.replace(" ", "_")
        results[condition] = predict_and_evaluate(model, dataset_dir, pred_dir, rotation_tta=tta)
        d = results[condition]["domains"]
        print(f"  {condition}: " + ", ".join(f"{k} {v['dice']:.3f}" for k, v in d.items()), flush=True)
    return {"seed": seed, "pretrain_s": pretrain_s, "pretrain_epoch_s": base_epoch_s, "epoch_s": epoch_s,
            "results": results, "curriculum": curriculum}


def _ms(values: list[float], digits: int = 3) -> str:
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{sd}"


def summarize(runs: list[dict]) -> tuple[dict, str]:
    domains = list(DOMAINS.values())
    table: dict = {}
    lines = [f"\n### Per domain (Table 1 layout): mean foreground Dice / HD95 mm, mean ± sd over {len(runs)} seeds\n",
             "| condition | " + " | ".join(domains) + " | mean Dice | mean HD95 |", "|---|" + "---|" * (len(domains) + 2)]
    for c in CONDITIONS:
        cells = []
        for d in domains:
            dice = [r["results"][c]["domains"][d]["dice"] for r in runs]
            hd = [r["results"][c]["domains"][d]["hd95"] for r in runs]
            assd = [r["results"][c]["domains"][d]["assd"] for r in runs]
            table.setdefault(c, {})[d] = {"dice_mean": statistics.mean(dice),
                                          "dice_sd": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                                          "hd95_mean": statistics.mean(hd), "assd_mean": statistics.mean(assd)}
            cells.append(f"{_ms(dice)} / {_ms(hd, 2)}")
        mean_dice = [statistics.mean(r["results"][c]["domains"][d]["dice"] for d in domains) for r in runs]
        mean_hd = [statistics.mean(r["results"][c]["domains"][d]["hd95"] for d in domains) for r in runs]
        table[c]["mean"] = {"dice": statistics.mean(mean_dice), "hd95": statistics.mean(mean_hd)}
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {_ms(mean_dice)} | {_ms(mean_hd, 2)} |")

    lines += ["\n### Shifted domains only (Table 3 layout; mild + moderate + severe, mean over seeds)\n",
              "| condition | Dice | HD95 mm | ASSD mm |", "|---|---|---|---|"]
    for c in CONDITIONS:
        shifted = [d for d in domains if d != "no shift"]
        vals = {m: statistics.mean(table[c][d][f"{m}_mean"] for d in shifted) for m in ("dice", "hd95", "assd")}
        table[c]["shifted"] = vals
        lines.append(f"| {c} | {vals['dice']:.3f} | {vals['hd95']:.2f} | {vals['assd']:.2f} |")

    base = [r["epoch_s"]["stock fine-tuned"] for r in runs]
    lines += ["\n### Cost per training epoch (same batches per epoch; the equal-updates baseline 4x; median over seeds)\n",
              "| condition | s / epoch | relative to stock fine-tuned |", "|---|---|---|"]
    table["cost"] = {}
    for c, spec in FINETUNES.items():
        if spec is None:
            continue
        s = [r["epoch_s"][c] for r in runs]
        ratio = statistics.median(x / b for x, b in zip(s, base))
        table["cost"][c] = {"epoch_s": statistics.median(s), "relative": ratio}
        lines.append(f"| {c} | {statistics.median(s):.1f} | {ratio:.2f} |")
    predict = {c: statistics.median(r["results"][c]["predict_s"] for r in runs) for c in ("LSCL", "LSCL + rotation TTA")}
    table["predict_s"] = predict
    lines.append(f"\nPrediction of the test cases: LSCL {predict['LSCL']:.1f} s, with rotation TTA "
                 f"{predict['LSCL + rotation TTA']:.1f} s (median over seeds).")

    lines += ["\n### Curriculum loss per step (Fig. 3a), mean over epochs and seeds\n",
              "| condition | loss z_0 .. z_n | mean Gamma z_0 .. z_n | batches with loss(z_n) > loss(z_0) |",
              "|---|---|---|---|"]
    table["curriculum"] = {}
    for c in ("SCL", "LSCL"):
        epochs = [e for r in runs for e in r["curriculum"].get(c, [])]
        if not epochs:
            continue
        loss = np.mean([e["mean_loss_per_step"] for e in epochs], axis=0)
        gamma = np.mean([e["mean_gamma_per_step"] for e in epochs], axis=0)
        rising = float(np.average([e["fraction_rising"] for e in epochs], weights=[e["batches"] for e in epochs]))
        table["curriculum"][c] = {"loss_per_step": loss.tolist(), "gamma_per_step": gamma.tolist(), "rising": rising}
        lines.append(f"| {c} | {' -> '.join(f'{v:.4f}' for v in loss)} | {' -> '.join(f'{v:.3f}' for v in gamma)} "
                     f"| {100 * rising:.0f}% |")
    return table, "\n".join(lines)


@default_style()
def plot(runs: list[dict], table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(DOMAINS.values())
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(CONDITIONS)
    for k, c in enumerate(CONDITIONS):
        ax.bar(np.arange(len(domains)) + k * width, [table[c][d]["dice_mean"] for d in domains], width,
               yerr=[table[c][d]["dice_sd"] for d in domains], label=c, capsize=2)
    ax.set_xticks(np.arange(len(domains)) + width * (len(CONDITIONS) - 1) / 2, domains)
    ax.set_ylabel("mean foreground Dice (test)")
    ax.set_ylim(bottom=max(0.0, min(table[c][d]["dice_mean"] for c in CONDITIONS for d in domains) - 0.1))
    ax.set_title(f"LSCL fine-tuning on the MNI152 demo data, {len(runs)} seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "dice_per_domain.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for c, v in table["curriculum"].items():
        ax.plot(range(len(v["loss_per_step"])), v["loss_per_step"], marker="o", label=c)
        ax.set_xticks(range(len(v["loss_per_step"])))
    ax.set_xlabel("curriculum step i (z_i)")
    ax.set_ylabel("training loss (mean over batches)")
    ax.set_title("Loss across curriculum steps (paper Fig. 3a)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curriculum_loss.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/results/style_curriculum"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10, help="pretraining iterations (batches) per epoch")
    p.add_argument("--finetune-iterations", type=int, default=5, help="fine-tuning iterations (batches) per epoch")
    p.add_argument("--pretrain-seed", type=int, default=0, help="seed of the one pretrained model")
    p.add_argument("--profile", choices=sorted(DATASET_IDS), default="tiny",
                   help="demo dataset size: tiny (64 x 64 slabs, 2 test slabs per domain) or demo (3 per domain)")
    p.add_argument("--reinit-heads", action="store_true",
                   help="load the pretrained model as nnUNetv2_train -pretrained_weights does (segmentation heads "
                        "re-initialised); default: all weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids oversubscription on a shared 2-core machine)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 + 1 epochs x 3 iterations: checks the script")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.pretrain_epochs, args.finetune_epochs, args.iterations, args.finetune_iterations = [0], 2, 1, 3, 3

    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir.resolve()
    dataset_id = DATASET_IDS[args.profile]
    if args.profile != "demo":  # built here first; prepare_demo_workspace then only plans it
        from nnunet_ext.dataset_conversion.demo_data import build_demo_dataset, demo_dataset_folder

        raw = work / "nnUNet_raw"
        raw.mkdir(parents=True, exist_ok=True)
        if not demo_dataset_folder("mni_tissue", dataset_id, raw).is_dir():
            build_demo_dataset("mni_tissue", dataset_id, raw, seed=BUILD_SEED, profile=args.profile)
    dataset_dir = prepare_demo_workspace(work, dataset_id, seed=BUILD_SEED)
    runs = []
    for i, seed in enumerate(args.seeds, 1):
        print(f"[{i}/{len(args.seeds)}] seed {seed}: fine-tune {args.finetune_epochs} x {args.finetune_iterations} per "
              f"condition from the pretrained model, predict", flush=True)
        runs.append(run_seed(work, dataset_dir, seed, args))
    machine = machine_facts()
    table, md = summarize(runs)
    plot(runs, table, work)
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, "runs": runs, "tables": table}, indent=2))
    header = (f"Command: python benchmarks/style_curriculum.py {' '.join(argv or sys.argv[1:])}\nMachine: {machine}\n"
              f"Data: MNI152 tissue demo, profile {args.profile}. "
              f"Fine-tuning seeds {args.seeds}; one nnU-Net 2d model pretrained {args.pretrain_epochs} x "
              f"{args.iterations} iterations (stock, seed {args.pretrain_seed}), fine-tuned "
              f"{args.finetune_epochs} x {args.finetune_iterations} iterations per condition and seed, lr "
              f"{FINETUNE_LR} (poly); n 3, eps 0.25, 4 x 4 LGS, Fourier amplitude mixing.\n")
    (work / "results.md").write_text(header + md + "\n")
    print(header + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
