"""``nnext demo``: the whole chain on embedded real MRI, with the stock nnU-Net commands underneath.

build data (``nnext demo-data``) -> ``nnUNetv2_plan_and_preprocess`` -> ``nnUNetv2_train`` per trainer
-> ``nnUNetv2_predict`` on the held-out in-domain slabs and every simulated-scanner domain ->
``nnext evaluate`` per trainer -> one comparison table (printed) and figure.

Everything lives in ``--workdir`` (its own ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results``),
so the demo never touches a user's nnU-Net folders. Steps already finished in that folder are reused.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_ext.cli.demo_data import DATASETS

#: trainers ``nnext demo`` runs by default: stock nnU-Net first, then methods as they land
DEMO_TRAINERS: dict[str, str] = {
    "nnUNetTrainerCPU_demo": "stock nnU-Net (SGD, poly LR, default augmentation), CPU budget 12 x 25 iterations",
    "nnUNetTrainerAvaGrad_demo": "AvaGrad with early stopping (Sheikh et al. 2022), 3 x 25 iterations",
}
#: surface Dice tolerance: one voxel of the demo profile's 2 mm grid (1 mm would only count exact matches)
DEMO_TOLERANCE_MM = 2.0
_EPOCH_RE = re.compile(r"\bEpoch (\d+)\s*$")  # nnU-Net logs "<timestamp>: Epoch 3"


@dataclass
class DemoConfig:
    workdir: Path
    dataset: str = "mni-tissue"
    trainers: tuple[str, ...] = tuple(DEMO_TRAINERS)
    configuration: str = "2d"
    fold: int = 0
    seed: int = 0
    profile: str = "demo"
    device: str = "cpu"
    overwrite: bool = False
    id_override: int | None = None

    @property
    def builder_name(self) -> str:
        return DATASETS[self.dataset][0]

    @property
    def dataset_id(self) -> int:
        return self.id_override if self.id_override is not None else DATASETS[self.dataset][1]


def run_demo(cfg: DemoConfig) -> dict:
    """Run the chain; return ``{trainer: evaluation result}`` and write the comparison report."""
    from rich.console import Console

    from nnunet_ext.dataset_conversion.demo_data import build_demo_dataset, demo_dataset_folder
    from nnunet_ext.evaluation.per_domain import compare_report, evaluate_folder, write_report
    from nnunet_ext.utils import nnunet_commands as cmd
    from nnunet_ext.utils.nnunet_paths import fold_folder, model_folder
    from nnunet_ext.utils.progress import StepProgress

    console = Console()
    work = cfg.workdir.resolve()
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    logs = work / "logs"
    for d in (raw, pre, res, logs):
        d.mkdir(parents=True, exist_ok=True)
    env = cmd.nnunet_env(raw, pre, res)
    train_env = dict(env)
    train_env.setdefault("nnUNet_n_proc_DA", "0")  # fastest on 2 CPU cores; planning needs the default
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}

    with StepProgress("demo", total=2 + 3 * len(cfg.trainers)) as progress:
        step = progress.step

        t0 = time.perf_counter()
        step("building embedded real-MRI dataset")
        dataset_dir = demo_dataset_folder(cfg.builder_name, cfg.dataset_id, raw)
        if dataset_dir.is_dir() and not cfg.overwrite:
            progress.note(f"reusing {dataset_dir}")
        else:
            dataset_dir = build_demo_dataset(cfg.builder_name, cfg.dataset_id, raw, seed=cfg.seed, profile=cfg.profile,
                                             overwrite=cfg.overwrite)
        timings["build data"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        step("nnUNetv2_plan_and_preprocess")
        plans_file = pre / dataset_dir.name / "nnUNetPlans.json"
        if cfg.overwrite or not plans_file.is_file():
            cmd.run_command(cmd.plan_and_preprocess_argv(cfg.dataset_id, [cfg.configuration]), env,
                            logs / "plan_and_preprocess.log")
        timings["plan and preprocess"] = time.perf_counter() - t0

        for trainer in cfg.trainers:
            model_dir = fold_folder(model_folder(dataset_dir.name, trainer, configuration=cfg.configuration,
                                                 results_root=res), cfg.fold)
            t0 = time.perf_counter()
            step(f"nnUNetv2_train -tr {trainer}")
            if cfg.overwrite or not (model_dir / "checkpoint_final.pth").is_file():
                def on_line(line: str, trainer=trainer) -> None:
                    m = _EPOCH_RE.search(line)
                    if m:
                        progress.note(f"{trainer} epoch {m.group(1)}")

                argv = cmd.train_argv(cfg.dataset_id, cfg.configuration, cfg.fold, trainer, cfg.device)
                if (model_dir / "checkpoint_latest.pth").is_file() and not cfg.overwrite:
                    argv.append("--c")
                cmd.run_command(argv, train_env, logs / f"train_{trainer}.log", on_line=on_line)
            timings[f"train {trainer}"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            step(f"nnUNetv2_predict -tr {trainer}")
            pred_dir = work / "predictions" / trainer
            shutil.rmtree(pred_dir, ignore_errors=True)  # stale cases would fail the evaluation
            cmd.run_command(cmd.predict_argv(dataset_dir / "imagesTs", pred_dir, cfg.dataset_id, cfg.configuration,
                                             cfg.fold, trainer, cfg.device), env, logs / f"predict_{trainer}.log")
            timings[f"predict {trainer}"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            step(f"nnext evaluate ({trainer})")
            result = evaluate_folder(pred_dir, dataset_dir / "labelsTs", dataset_dir / "dataset.json",
                                     dataset_dir / "domains.json", tolerance_mm=DEMO_TOLERANCE_MM)
            write_report(result, work / "evaluation" / trainer, title=f"{trainer} on {dataset_dir.name}")
            results[trainer] = result
            timings[f"evaluate {trainer}"] = time.perf_counter() - t0

    compare_report(results, work / "evaluation", title=f"nnext demo: {dataset_dir.name}, fold {cfg.fold}")
    console.print((work / "evaluation" / "comparison.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print("Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    console.print(f"Figure: {work / 'evaluation' / 'comparison.png'}; per-trainer reports in {work / 'evaluation'}")
    return results


def run(args: argparse.Namespace) -> int:
    trainers = tuple(args.trainers) if args.trainers else tuple(DEMO_TRAINERS)
    cfg = DemoConfig(workdir=Path(args.workdir), dataset=args.dataset, trainers=trainers, fold=args.fold,
                     seed=args.seed, profile=args.profile, device=args.device, overwrite=args.overwrite,
                     id_override=args.id)
    run_demo(cfg)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the main job: build real-MRI data, plan, train, predict on shifted domains, evaluate",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="nnext_demo", help="folder for all outputs (default: ./nnext_demo)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mni-tissue",
                   help="embedded real-MRI dataset to build (default mni-tissue)")
    p.add_argument("--trainers", nargs="+", metavar="TRAINER",
                   help="trainer class names (default: " + ", ".join(DEMO_TRAINERS) + ")")
    p.add_argument("--id", type=int, help="dataset id inside the workdir (default: 990 mni-tissue, 991 colin)")
    p.add_argument("--fold", type=int, default=0, help="nnU-Net fold to train and predict with (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated scanner effects")
    p.add_argument("--profile", choices=("demo", "tiny"), default="demo", help="dataset size")
    p.add_argument("--device", default=os.environ.get("NNEXT_DEVICE", "cpu"), help="cpu or cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="rebuild data and retrain instead of reusing")
    p.set_defaults(func=run)
