"""ODEx vs sequential fine-tuning, EWC, LwF and joint training on the embedded demo streams (CPU-sized).

The design of Gonzalez et al. (DART 2022) Tables 1-2 at a CPU budget: nnU-Net 2d on the two demo streams
built by ``nnext stream demo`` (real MRI shipped in packages, 4 stages each):

    transformed       Dataset950: MNI152 grey/white matter, stage k through TorchIO contrast stretching and
                      a random affine of strength k/3
    shifting-source   Dataset951: brain mask, sources shifting from MNI152 (stage 0) to Colin27 (stage 3)

Methods (trainer classes found by nnU-Net's own lookup; every stream method trains E epochs x I iterations
per stage, joint training the same total number of iterations on the union of the stages):

    Joint     nnUNetTrainer on every stage's training cases (upper bound, Table 1's first row)
    Seq       nnUNetTrainerSequential (forgetting baseline)
    EWC, LwF  nnUNetTrainerEWC / nnUNetTrainerLwF
    ODEx      nnUNetTrainerODEx; ablations ODEx-inf (xi = -inf, a new expert every stage), ODEx-B (no
              history), DiceEx (Table 2)

Every training run is a child process (``_train`` sub-command of this script) so that its wall time and
peak resident memory (``ru_maxrss`` from ``os.wait4``) are its own. The model after each stage is evaluated
on every stage's held-out test cases with ``nnext evaluate-continual --model`` (R, mean Dice, BWT, FWT
against a randomly initialised network of the same plans, stage gain, pool size). Inference cost: one
network forward of a patch (what nnU-Net's sliding window runs) of ODEx's final pool vs the sequential
model (median of interleaved pairs), and the whole prediction of the test folder with nnU-Net's predictor
(median of interleaved repeats).

    python benchmarks/odex.py --workdir /tmp/bench_odex                 # 2 seeds, both scenarios
    python benchmarks/odex.py --workdir /tmp/bench_odex_quick --quick   # smoke: 1 seed, 1 epoch per stage

The paper's own experiment, for someone with its data and a GPU: build the streams with ``nnext convert
hippocampus-stream`` / ``nnext stream ...`` (documentation/continual.md), preprocess them with
``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres``, then pass them instead of the demo streams (the
stock ``$nnUNet_raw`` / ``$nnUNet_preprocessed``; the paper's budget is 200 epochs x 250 iterations):

    python benchmarks/odex.py --workdir WORKDIR --dataset SHIFTING_ID TRANSFORMED_ID -c 3d_fullres \
        --device cuda --epochs-per-stage 200 --iterations 250 --seeds 0 1 2

With ``--device cuda`` the memory column compares peak GPU memory (``torch.cuda.max_memory_allocated``, the
paper's claim), otherwise peak resident memory.

Writes ``results.json``, ``results.md`` and ``odex_benchmark.png`` (plus one ``continual.*`` report per
scenario and seed under ``reports/``) in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nnunet_ext.utils import nnunet_paths
from nnunet_ext.utils.plotting import default_style
from bench_common import machine_facts, seed_everything, time_calls, trainer_class

SCENARIOS = {"transformed": 950, "shifting-source": 951}


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str
    stream: bool = True


METHODS = (Method("Joint", "nnUNetTrainer", stream=False), Method("Seq", "nnUNetTrainerSequential"),
           Method("EWC", "nnUNetTrainerEWC"), Method("LwF", "nnUNetTrainerLwF"), Method("ODEx", "nnUNetTrainerODEx"),
           Method("ODEx-inf", "nnUNetTrainerODEx_xiNegInf"), Method("ODEx-B", "nnUNetTrainerODEx_noHistory"),
           Method("DiceEx", "nnUNetTrainerDiceEx"))
BY_NAME = {m.name: m for m in METHODS}
DEFAULT_METHODS = ("Joint", "Seq", "EWC", "LwF", "ODEx", "ODEx-inf", "ODEx-B")
INIT_CHECKPOINT = "checkpoint_init.pth"  # the randomly initialised network: the FWT baseline


# ------------------------------------------------------------------------------------------ workspace
def prepare_streams(work: Path, scenarios: list[str], num_stages: int | None = None) -> dict[str, Path]:
    """Build (once) each demo stream under ``work`` and plan/preprocess it (2d) with the stock command.

    ``num_stages``: stages of a stream built here; a stream already in ``work`` must have as many (``None``:
    whatever is there, as the training children use it).
    """
    from nnunet_ext.dataset_conversion.demo_stream import NUM_STAGES, build_demo_stream
    from nnunet_ext.streams import read_stream
    from nnunet_ext.utils import nnunet_commands as cmd

    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    for d in (raw, pre):
        d.mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre))
    folders = {}
    for scenario in scenarios:
        dataset_id = SCENARIOS[scenario]
        existing = sorted(raw.glob(f"Dataset{dataset_id}_*"))
        if existing:
            dataset_dir = existing[0]
            stream = read_stream(dataset_dir / "stream.json")
            if num_stages is not None and len(stream) != num_stages:
                raise SystemExit(f"{dataset_dir} holds a {len(stream)}-stage stream, not {num_stages}: use another "
                                 f"--workdir")
            if "stratify_by" not in stream.extra:  # built before the stages shared their anatomy (commit 97cbd31)
                raise SystemExit(f"{dataset_dir} holds a demo stream with randomly dealt slabs (built by an older "
                                 f"version): use another --workdir")
        else:
            dataset_dir = build_demo_stream(scenario.replace("-", "_"), dataset_id, raw,
                                            num_stages=num_stages or NUM_STAGES)
        if not (pre / dataset_dir.name / "nnUNetPlans.json").is_file():
            cmd.run_command(cmd.plan_and_preprocess_argv(dataset_id, ["2d"]),
                            cmd.nnunet_env(raw, pre, work / "unused_results"), work / f"plan_{dataset_id}.log")
        folders[scenario] = dataset_dir
    return folders


def prepare_datasets(datasets: list[str], configuration: str, plans_name: str = "nnUNetPlans") -> dict[str, Path]:
    """Raw dataset folders (ids, names or paths) of user-built streams, checked to be preprocessed for
    ``configuration`` with plans ``plans_name``; keyed by the folder name (the benchmark's scenario name)."""
    from nnunet_ext.cli.main import UserError
    from nnunet_ext.cli.stream import resolve_dataset
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ext.streams import read_stream

    try:
        pre_root = nnunet_paths.nnunet_folder("preprocessed")
    except ValueError as e:
        raise SystemExit(f"--dataset needs the stock nnU-Net variables ($nnUNet_raw for ids and names too): {e}") from None
    folders = {}
    for dataset in datasets:
        try:
            folder = resolve_dataset(dataset)
        except UserError as e:
            raise SystemExit(str(e)) from None
        read_stream(folder)  # a dataset without a valid stream.json fails here, naming the file
        plans = pre_root / folder.name / f"{plans_name}.json"
        manager = PlansManager(str(plans)) if plans.is_file() else None
        known = manager is not None and configuration in manager.available_configurations
        if not known or not (plans.parent / manager.get_configuration(configuration).data_identifier).is_dir():
            raise SystemExit(f"{folder.name} is not preprocessed for {configuration!r} with plans {plans_name!r} in "
                             f"{pre_root}: run nnUNetv2_plan_and_preprocess -d DATASET_ID -c {configuration} (and "
                             f"nnUNetv2_preprocess -plans_name {plans_name} for other plans) first")
        folders[folder.name] = folder
    return folders


def run_dir_of(work: Path, scenario: str, method: str, seed: int) -> Path:
    return work / "runs" / scenario / method / f"seed{seed}"


def model_folder(run_dir: Path, dataset_dir: Path, method: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
    """The model folder ``method``'s training run in ``run_dir`` wrote (its own ``nnUNet_results``)."""
    return nnunet_paths.model_folder(dataset_dir.name, BY_NAME[method].trainer, plans, configuration,
                                     results_root=run_dir / "results")


# ------------------------------------------------------------------------------------------ one training run
def train_child(args: argparse.Namespace) -> int:
    """``_train``: one training run in this (child) process; writes ``train.json`` into the run folder."""
    import torch

    method, dataset_dir = BY_NAME[args.method], args.dataset_dir
    os.environ.update(nnUNet_results=str(args.run_dir / "results"), nnUNet_n_proc_DA="0")
    pre = nnunet_paths.dataset_folder("preprocessed", dataset_dir.name)  # set by the parent (demo) or the user
    plans = json.loads((pre / f"{args.plans}.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8 pops this key (set by nnUNetv2_train's --c)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device(args.device)
    trainer = trainer_class(method.trainer)(plans, args.configuration, 0, dataset_json, device=device)
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = args.iterations, 2
    from nnunet_ext.streams import read_stream

    stream = read_stream(dataset_dir / "stream.json")
    if method.stream:
        trainer.epochs_per_stage = args.epochs_per_stage
    else:  # joint training: the union of the stages, the same number of iterations as a stream run
        tr = [c for s in stream.stages for c in s.train]
        val = [c for s in stream.stages for c in (s.val or s.train)]
        trainer.do_split = lambda: (list(tr), list(val))
    trainer.num_epochs = args.epochs_per_stage * len(stream)
    trainer.initialize()
    if method.name == "Seq":  # the FWT baseline: this run's network before any training
        trainer.save_checkpoint(os.path.join(trainer.output_folder, INIT_CHECKPOINT))
    steps = time_calls(trainer, "train_step")
    # the method's own work at stage boundaries (ODEx: feature passes, decisions)
    hooks = [time_calls(trainer, hook) for hook in ("on_stage_start", "on_stage_end") if hasattr(trainer, hook)]
    t0 = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t0
    fold = Path(trainer.output_folder)
    decisions = json.loads((fold / "odex_decisions.json").read_text())["decisions"] \
        if (fold / "odex_decisions.json").is_file() else None
    pool_size = len(trainer.network.experts) if hasattr(trainer.network, "experts") else 1
    out = {"method": method.name, "trainer": method.trainer, "scenario": args.scenario, "seed": args.seed,
           "epochs_per_stage": args.epochs_per_stage, "iterations_per_epoch": args.iterations,
           "configuration": args.configuration, "plans": args.plans, "device": args.device,
           "train_s": train_s, "iterations": len(steps),
           "median_iteration_s": statistics.median(t for _, t in steps[3:]),
           "stage_hooks_s": sum(t for calls in hooks for _, t in calls),
           "pool_size": pool_size, "decisions": decisions}
    if device.type == "cuda":  # the paper's memory claim is about GPU memory
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    (args.run_dir / "train.json").write_text(json.dumps(out, indent=2))
    return 0


def launch_training(work: Path, scenario: str, dataset_dir: Path, method: str, seed: int, epochs_per_stage: int,
                    iterations: int, threads: int, configuration: str, device: str, plans: str = "nnUNetPlans") -> dict:
    """Run :func:`train_child` in a child process; adds its peak resident memory (MB) to ``train.json``."""
    run_dir = run_dir_of(work, scenario, method, seed)
    if (run_dir / "train.json").is_file():  # a finished run is reused if it ran with these settings
        done = json.loads((run_dir / "train.json").read_text())
        wanted = {"epochs_per_stage": epochs_per_stage, "iterations_per_epoch": iterations,
                  "configuration": configuration, "device": device, "plans": plans}
        have = {k: done.get(k, {"configuration": "2d", "device": "cpu", "plans": "nnUNetPlans"}.get(k))
                for k in wanted}
        if have != wanted:
            raise SystemExit(f"{run_dir} ran with {have}, not {wanted}: use another --workdir")
        return done
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    for stale in (work / "reports" / scenario / f"seed{seed}" / "predictions" / method,
                  work / "reports" / scenario / f"seed{seed}" / "continual.json"):
        if stale.is_dir():
            shutil.rmtree(stale)  # predictions of an earlier model of this method
        elif stale.is_file():
            stale.unlink()
    run_dir.mkdir(parents=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "_train", "--dataset-dir", str(dataset_dir),
            "--scenario", scenario, "--method", method, "--seed", str(seed), "--epochs-per-stage", str(epochs_per_stage),
            "--iterations", str(iterations), "--threads", str(threads), "--run-dir", str(run_dir),
            "--configuration", configuration, "--device", device, "--plans", plans]
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not (run_dir / "train.json").is_file():
        raise RuntimeError(f"training {method} ({scenario}, seed {seed}) failed; see {run_dir / 'train.log'}")
    result = json.loads((run_dir / "train.json").read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    (run_dir / "train.json").write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------ evaluation
def _stream_test_inputs(dataset_dir: Path) -> dict[str, list[str]]:
    """The image files of the stream's test cases (``imagesTs`` may hold more: other scanners' copies)."""
    from nnunet_ext.streams import read_stream

    ending = json.loads((dataset_dir / "dataset.json").read_text())["file_ending"]
    cases = [c for s in read_stream(dataset_dir / "stream.json").stages for c in s.test]
    return nnunet_paths.case_image_files(dataset_dir / "imagesTs", cases, ending)


def _predict_folder(model: Path, checkpoint: str, dataset_dir: Path, out: Path, device: str) -> float:
    """Predict the stream's test cases (no mirroring); returns the seconds the prediction took."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device(device),
                                perform_everything_on_device=device != "cpu", allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _stream_test_inputs(dataset_dir)
    t0 = time.perf_counter()
    predictor.predict_from_files_sequential(list(inputs.values()), [str(out / c) for c in inputs])
    return time.perf_counter() - t0


def evaluate_seed(work: Path, scenario: str, dataset_dir: Path, methods: list[str], seed: int,
                  runs: dict[str, dict], configuration: str, device: str, plans: str = "nnUNetPlans") -> dict:
    """``nnext evaluate-continual`` of every method of one scenario and seed; returns its ``continual.json``."""
    report = work / "reports" / scenario / f"seed{seed}"
    if (report / "continual.json").is_file():
        return json.loads((report / "continual.json").read_text())
    preds = work / "predictions" / scenario / f"seed{seed}"
    argv = [sys.executable, "-m", "nnunet_ext", "evaluate-continual", "--stream", str(dataset_dir / "stream.json"),
            "--ref", str(dataset_dir / "labelsTs"), "--disable-tta", "-o", str(report),
            "--title", f"{scenario}, seed {seed}", "--device", device]
    from nnunet_ext.streams import read_stream

    num_stages = len(read_stream(dataset_dir / "stream.json"))
    for name in methods:
        folder = model_folder(run_dir_of(work, scenario, name, seed), dataset_dir, name, configuration, plans)
        if BY_NAME[name].stream:
            earlier = report / "predictions" / name  # kept from an earlier evaluation of the same model
            if all((earlier / f"after{k}").is_dir() for k in range(num_stages)):
                argv += ["--method", f"{name}={earlier / 'after{stage}'}"]
            else:
                argv += ["--model", f"{name}={folder}"]
            argv += ["--pool-size", f"{name}={runs[name]['pool_size']}"]
        else:  # joint: one final model, shown as the same predictions "after" every stage (only its Dice counts)
            final = preds / name / "final"
            if not final.is_dir():
                _predict_folder(folder, "checkpoint_final.pth", dataset_dir, final, device)
            argv += ["--method", f"{name}={preds / name / 'after{stage}'}"]
            for k in range(num_stages):
                link = preds / name / f"after{k}"
                if not link.exists():
                    link.symlink_to(final.name)
    seq = model_folder(run_dir_of(work, scenario, "Seq", seed), dataset_dir, "Seq", configuration, plans)
    baseline = preds / "random_init"
    if not baseline.is_dir():
        _predict_folder(seq, INIT_CHECKPOINT, dataset_dir, baseline, device)
    argv += ["--baseline", str(baseline)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return json.loads((report / "continual.json").read_text())


def inference_cost(work: Path, scenario: str, dataset_dir: Path, seed: int, configuration: str, device: str,
                   plans: str = "nnUNetPlans", repeats: int = 7) -> dict:
    """ODEx's final pool vs the sequential model: one patch forward and the whole test-folder prediction."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely

    nets, folders = {}, {}
    for name in ("Seq", "ODEx"):
        folders[name] = model_folder(run_dir_of(work, scenario, name, seed), dataset_dir, name, configuration, plans)
        manager = PlansManager(str(folders[name] / "plans.json"))
        cm = manager.get_configuration(configuration)
        dataset_json = json.loads((folders[name] / "dataset.json").read_text())
        ckpt = load_checkpoint_safely(nnunet_paths.fold_folder(folders[name], 0) / "checkpoint_final.pth")
        net = trainer_class(ckpt["trainer_name"]).build_network_architecture(
            manager, cm, len(dataset_json["channel_names"]), len(dataset_json["labels"]), enable_deep_supervision=False)
        net.load_state_dict(ckpt["network_weights"])
        nets[name] = net.to(device).eval()
    x = torch.randn(1, len(dataset_json["channel_names"]), *cm.patch_size, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    forward = {n: [] for n in nets}
    with torch.inference_mode():
        for n in nets:
            nets[n](x)  # warm-up
        for _ in range(repeats):
            for n, net in nets.items():
                sync()
                t0 = time.perf_counter()
                net(x)
                sync()
                forward[n].append(time.perf_counter() - t0)
    predict = {n: [] for n in nets}
    for r in range(2):
        for n in nets:
            predict[n].append(_predict_folder(folders[n], "checkpoint_final.pth", dataset_dir,
                                              work / "timing" / scenario / f"seed{seed}" / n / str(r), device))
    med = {n: statistics.median(v) for n, v in forward.items()}
    pmed = {n: statistics.median(v) for n, v in predict.items()}
    return {"forward_s": med, "predict_s": pmed, "forward_ratio": med["ODEx"] / med["Seq"],
            "predict_ratio": pmed["ODEx"] / pmed["Seq"],
            "model_mb": {n: (nnunet_paths.fold_folder(f, 0) / "checkpoint_final.pth").stat().st_size / 2**20
                         for n, f in folders.items()}}


# ------------------------------------------------------------------------------------------ report
def _ms(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))


def _median_or_nan(values: list[float | None]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _peak_mb(run: dict) -> float:
    """Peak GPU memory of a CUDA run, else peak resident memory."""
    return run.get("peak_gpu_mb", run["peak_rss_mb"])


def summarize(scenarios: list[str], methods: list[str], seeds: list[int], reports: dict, runs: dict,
              costs: dict) -> dict:
    table: dict = {}
    for sc in scenarios:
        table[sc] = {}
        for m in methods:
            tr = [runs[sc][m][s] for s in seeds]
            seq = [runs[sc]["Seq"][s] for s in seeds]
            row = table[sc][m] = {
                "pool_size": [t["pool_size"] for t in tr],
                "train_ratio": statistics.median(t["train_s"] / q["train_s"] for t, q in zip(tr, seq)),
                "memory_ratio": statistics.median(_peak_mb(t) / _peak_mb(q) for t, q in zip(tr, seq)),
                "train_s": statistics.median(t["train_s"] for t in tr),
                "iteration_ratio": statistics.median(t["median_iteration_s"] / q["median_iteration_s"]
                                                     for t, q in zip(tr, seq)),
                "stage_hooks_s": _median_or_nan([t.get("stage_hooks_s") for t in tr]),  # absent in older runs
            }
            if reports:
                summ = [reports[sc][s]["methods"][m]["summary"] for s in seeds]
                row.update({"dice": _ms([x["dice"] for x in summ]), "bwt": _ms([x["bwt"] for x in summ]),
                            "fwt": _ms([x["fwt"] for x in summ]), "stage_gain": _ms([x["stage_gain"] for x in summ]),
                            "R": np.mean([reports[sc][s]["methods"][m]["R"] for s in seeds], axis=0).tolist()})
        table[sc]["_inference"] = {
            "forward_ratio": statistics.median(costs[sc][s]["forward_ratio"] for s in seeds),
            "predict_ratio": statistics.median(costs[sc][s]["predict_ratio"] for s in seeds),
            "memory": "peak GPU memory" if "peak_gpu_mb" in runs[sc]["Seq"][seeds[0]] else "peak memory",
            "model_mb": costs[sc][seeds[0]]["model_mb"]}
    return table


def markdown(table: dict, methods: list[str]) -> str:
    def cell(v: tuple[float, float] | None) -> str:
        return "n/a" if v is None or np.isnan(v[0]) else f"{v[0]:.3f} ± {v[1]:.3f}"

    lines = []
    for sc, rows in table.items():
        lines += [f"### {sc}", "", "| method | Dice | BWT | FWT | stage gain | pool size per seed | train time / Seq "
                  f"| iteration time / Seq | {rows['_inference']['memory']} / Seq |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in methods:
            r = rows[m]
            joint = not BY_NAME[m].stream
            lines.append(f"| {m} | {cell(r.get('dice'))} | {'' if joint else cell(r.get('bwt'))} | "
                         f"{'' if joint else cell(r.get('fwt'))} | {'' if joint else cell(r.get('stage_gain'))} | "
                         f"{r['pool_size']} | {r['train_ratio']:.3f} | {r['iteration_ratio']:.3f} | {r['memory_ratio']:.3f} |")
        inf, odex = rows["_inference"], rows["ODEx"]
        lines += ["", f"ODEx training: {odex['train_s']:.0f} s (median), of which {odex['stage_hooks_s']:.1f} s at "
                      f"stage boundaries (feature passes, decisions; a fixed cost per stage, independent of the "
                      f"stage's length); sequential {rows['Seq']['train_s']:.0f} s.", f"Inference, ODEx final pool / sequential model (median over seeds): one patch forward "
                      f"{inf['forward_ratio']:.3f}x, whole test-folder prediction {inf['predict_ratio']:.3f}x; "
                      f"checkpoint size {inf['model_mb']['ODEx']:.1f} MB vs {inf['model_mb']['Seq']:.1f} MB.", ""]
    return "\n".join(lines)


@default_style()
def plot(table: dict, methods: list[str], out: Path) -> None:
    """Per scenario: the mean over seeds of the Dice on each test stage after the last stage, per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(table), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for ax, (sc, rows) in zip(axes, table.items()):
        for m in methods:
            R = np.array(rows[m]["R"])
            ax.plot(range(len(R)), R[-1], marker="o", label=f"{m} (BWT {rows[m]['bwt'][0]:+.2f})"
                    if BY_NAME[m].stream else m, linestyle="-" if BY_NAME[m].stream else "--")
        ax.set_xticks(range(len(R)), [f"stage {j}" for j in range(len(R))])
        ax.set_ylabel("Dice on the stage's test cases after the last stage")
        ax.set_title(sc)
        ax.legend(fontsize="small")
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_train":
        p = argparse.ArgumentParser()
        for flag, typ in (("--dataset-dir", Path), ("--scenario", str), ("--method", str), ("--seed", int),
                          ("--epochs-per-stage", int), ("--iterations", int), ("--threads", int), ("--run-dir", Path),
                          ("--configuration", str), ("--device", str), ("--plans", str)):
            p.add_argument(flag, type=typ, required=True)
        return train_child(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("benchmarks/results/odex"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS),
                   help="demo streams to build and run (default both)")
    p.add_argument("--dataset", nargs="+", default=None, metavar="DATASET",
                   help="run these raw datasets' stream.json instead of the demo streams (ids, names or paths; "
                        "preprocessed for -c in $nnUNet_preprocessed)")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-p", "--plans", default="nnUNetPlans",
                   help="plans identifier, as nnUNetv2_train's -p (default nnUNetPlans; with --dataset only)")
    p.add_argument("--device", default="cpu", help="device for training and prediction (default cpu; e.g. cuda)")
    p.add_argument("--methods", nargs="+", choices=list(BY_NAME), default=list(DEFAULT_METHODS))
    p.add_argument("--stages", type=int, default=4, help="stages of the demo streams (default 4; the paper has 5)")
    p.add_argument("--epochs-per-stage", type=int, default=4, help="epochs per stage (default 4)")
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch (default 25)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per training run (default 2)")
    p.add_argument("--timing-only", action="store_true",
                   help="train and time only (no evaluate-continual): training time, memory, pool size, inference")
    p.add_argument("--quick", action="store_true", help="1 epoch x 5 iterations per stage, seed 0: the script only")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs_per_stage, args.iterations, args.seeds = 1, 5, [0]
    methods = list(dict.fromkeys(["Seq", *args.methods]))  # Seq: the ratios' and FWT baseline's reference
    if "ODEx" not in methods:
        p.error("--methods must include ODEx")
    work = args.workdir.resolve()
    if args.dataset and {"--scenarios", "--stages"} & {a.split("=")[0] for a in argv}:
        p.error("--scenarios and --stages choose and build demo streams; with --dataset the streams are the "
                "datasets' own")
    if args.dataset:
        folders = prepare_datasets(args.dataset, args.configuration, args.plans)
    elif args.configuration != "2d" or args.plans != "nnUNetPlans":
        p.error("the demo streams are 2d slabs with stock plans: -c other than 2d and -p need --dataset")
    else:
        folders = prepare_streams(work, args.scenarios, args.stages)
    args.scenarios = list(folders)
    t_start = time.perf_counter()
    runs: dict = {sc: {m: {} for m in methods} for sc in args.scenarios}
    reports: dict = {sc: {} for sc in args.scenarios}
    costs: dict = {sc: {} for sc in args.scenarios}
    jobs = [(sc, s, m) for sc in args.scenarios for s in args.seeds for m in methods]
    for i, (sc, seed, m) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {sc} seed {seed}: {m} ({BY_NAME[m].trainer}, {args.epochs_per_stage} epochs x "
              f"{args.iterations} iterations per stage) ... ", end="", flush=True)
        r = launch_training(work, sc, folders[sc], m, seed, args.epochs_per_stage, args.iterations, args.threads,
                            args.configuration, args.device, args.plans)
        runs[sc][m][seed] = r
        print(f"{r['train_s']:.0f} s, peak {_peak_mb(r):.0f} MB, pool {r['pool_size']}", flush=True)
    for sc in args.scenarios:
        for seed in args.seeds:
            if not args.timing_only:
                print(f"evaluating {sc} seed {seed} (nnext evaluate-continual)", flush=True)
                reports[sc][seed] = evaluate_seed(work, sc, folders[sc], methods, seed,
                                                  {m: runs[sc][m][seed] for m in methods}, args.configuration,
                                                  args.device, args.plans)
            print(f"timing inference ({sc} seed {seed})", flush=True)
            costs[sc][seed] = inference_cost(work, sc, folders[sc], seed, args.configuration, args.device, args.plans)
    table = summarize(args.scenarios, methods, args.seeds, None if args.timing_only else reports, runs, costs)
    if not args.timing_only:
        plot(table, methods, work / "odex_benchmark.png")
    machine = machine_facts()
    total_min = (time.perf_counter() - t_start) / 60
    md = markdown(table, methods)
    header = (f"Command: python benchmarks/odex.py {' '.join(argv)}\nMachine: {machine}\nSeeds: {args.seeds}; "
              f"{args.epochs_per_stage} epochs x {args.iterations} iterations per stage (joint: the same total), "
              f"mean ± sd over seeds; {total_min:.1f} min (runs finished earlier are reused).\n\n")
    (work / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                   "machine": machine, "runs": runs, "table": table,
                                                   "costs": costs, "total_minutes": total_min}, indent=2))
    (work / "results.md").write_text(header + md + "\n")
    print(header + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
