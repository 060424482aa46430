"""Run a benchmark with the stock nnU-Net commands, caching every finished step.

For each run (:mod:`nnunet_ext.benchmark.rows`) the runner does, as a user would type them:

1. **train** (``train``/``finetune`` rows): ``nnUNetv2_train DATASET CONFIG FOLD -tr NAME -p PLANS -device D``
   with ``NAME = budget_trainer_name(trainer, budget, seed)``; fine-tuning adds ``-pretrained_weights`` with the
   base run's ``checkpoint_final.pth``. A fold folder with ``checkpoint_final.pth`` is finished and skipped; one
   with only ``checkpoint_latest.pth`` (an interrupted run) is resumed with ``--c``.
2. **attach** (test-time rows): ``nnext fda attach BASE_MODEL -o OUT/attached/... -f FOLD``.
3. **predict** every image of the dataset's ``imagesTs`` (all domains): ``nnUNetv2_predict`` (or
   ``nnUNetv2_predict_from_modelfolder`` for attached models) into a temporary folder renamed when complete.
4. **evaluate** per domain with :func:`nnunet_ext.evaluation.per_domain.evaluate_folder` against ``labelsTs``
   and ``domains.json``.

Each step writes a small JSON record (wall time, peak resident memory of the command's process tree, the
command) into ``OUT/runs/<row>/seed<S>/fold_<F>/``; a step whose record exists is not run again, so an
interrupted benchmark continues where it stopped and several jobs (``--shard``) can share ``OUT`` and
``nnUNet_results``. A failing step is recorded with its error and the other runs go on.

Costs per run (:func:`run_costs`): training seconds per iteration from nnU-Net's own epoch timestamps in the
checkpoint (median over epochs of epoch time / ``num_iterations_per_epoch``; the epoch time includes nnU-Net's
validation iterations, identically for every trainer), prediction seconds per case (wall time of the predict
command / cases, model loading included), peak resident memory (training and prediction commands), and the
numbers stored in ``network_weights`` (parameters and buffers, e.g. a Fourier style bank).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nnunet_ext.benchmark.rows import ATTACH_METHODS, Row, Run
from nnunet_ext.domains import DOMAINS_FILENAME, DomainMetadata, load_domains
from nnunet_ext.utils import nnunet_commands as cmd
from nnunet_ext.utils.atomic import write_json_atomic
from nnunet_ext.utils.nnunet_paths import dataset_folder, fold_folder, model_folder, nnunet_folder

SETTINGS_FILENAME = "settings.json"
#: settings that must match when an output folder is reused (rows, seeds and folds may grow)
IDENTITY_KEYS = ("dataset", "configuration", "plans", "budget", "device", "tta", "tolerance_mm")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that defines a benchmark; saved as ``OUT/settings.json``.

    Attributes:
        dataset: nnU-Net dataset name (``DatasetXXX_Name``).
        dataset_id: its id.
        rows: row strings, baselines included (:func:`~nnunet_ext.benchmark.rows.with_baselines`).
        budget: name of a budget in :data:`nnunet_ext.trainers.budget.BUDGETS`.
        seeds: seeds; each is its own trainer name and results folder.
        folds: nnU-Net folds (``splits_final.json`` entries, or ``"all"``).
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``, ...).
        plans: plans identifier (``nnUNetPlans``).
        device: ``cpu``, ``cuda`` or ``mps``.
        tta: nnU-Net's mirroring test-time augmentation at prediction (stock default: on).
        tolerance_mm: surface Dice tolerance.
        num_gpus: ``-num_gpus`` for training (nnU-Net's DDP); 1 = single device.
    """

    dataset: str
    dataset_id: int
    rows: tuple[str, ...]
    budget: str
    seeds: tuple[int, ...]
    folds: tuple[str, ...]
    configuration: str = "2d"
    plans: str = "nnUNetPlans"
    device: str = "cpu"
    tta: bool = True
    tolerance_mm: float = 1.0
    num_gpus: int = 1

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchmarkSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class RunRecord:
    """What happened to one run: ``status`` is ``done``, ``failed``, ``waiting`` (its base is not finished)
    or ``pending`` (not run in this invocation)."""

    run: Run
    status: str = "pending"
    error: str | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    costs: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """The folders and steps of one benchmark (see the module docstring).

    Args:
        settings: what to run.
        output: the benchmark folder ``OUT``.
    """

    def __init__(self, settings: BenchmarkSettings, output: Path):
        self.settings = settings
        self.output = Path(output)
        self.raw = dataset_folder("raw", settings.dataset)
        self.preprocessed = nnunet_folder("preprocessed") / settings.dataset
        self.domains: DomainMetadata = load_domains(self.raw / DOMAINS_FILENAME)
        self.dataset_json = json.loads((self.raw / "dataset.json").read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ names and folders
    def trainer_name(self, trainer: str, seed: int) -> str:
        from nnunet_ext.trainers.budget import budget_trainer_name

        return budget_trainer_name(trainer, self.settings.budget, seed)

    def fold_dir(self, row: Row, seed: int, fold: str) -> Path:
        """Where the model of a ``train``/``finetune`` row's run lives (in ``nnUNet_results``), or the attached
        model folder of a test-time row (in ``OUT/attached``)."""
        if row.kind == "attach":
            return fold_folder(self.output / "attached" / Run(row, seed, fold).key, fold)
        name = self.trainer_name(row.trainer, seed)
        return fold_folder(model_folder(self.settings.dataset, name, self.settings.plans, self.settings.configuration),
                           fold)

    def run_dir(self, run: Run) -> Path:
        return self.output / "runs" / run.key

    def env(self, training: bool = False) -> dict[str, str]:
        env = cmd.nnunet_env(nnunet_folder("raw"), nnunet_folder("preprocessed"), nnunet_folder("results"))
        if training and self.settings.device == "cpu":
            env.setdefault("nnUNet_n_proc_DA", "0")  # fastest on a few CPU cores; planning needs the default
        return env

    # ------------------------------------------------------------------ commands
    def train_argv(self, run: Run) -> list[str]:
        s = self.settings
        extra = ["-p", s.plans]
        fold_dir = self.fold_dir(run.row, run.seed, run.fold)
        if (fold_dir / "checkpoint_latest.pth").is_file():
            extra.append("--c")  # an interrupted run: nnU-Net resumes it
        elif run.row.kind == "finetune":
            base = self.fold_dir(_base_row(run.row), run.seed, run.fold) / "checkpoint_final.pth"
            extra += ["-pretrained_weights", str(base)]
        if s.num_gpus > 1:
            extra += ["-num_gpus", str(s.num_gpus)]
        return cmd.train_argv(s.dataset_id, s.configuration, run.fold, self.trainer_name(run.row.trainer, run.seed),
                              s.device, extra)

    def attach_argv(self, run: Run) -> list[str]:
        base_model = self.fold_dir(_base_row(run.row), run.seed, run.fold).parent
        out = self.fold_dir(run.row, run.seed, run.fold).parent
        return [sys.executable, "-m", "nnunet_ext", "fda", "attach", str(base_model), "-o", str(out), "-f", run.fold]

    def predict_argv(self, run: Run, output: Path) -> list[str]:
        s = self.settings
        images = self.raw / "imagesTs"
        if run.row.kind == "attach":
            argv = ["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(output), "-m",
                    str(self.fold_dir(run.row, run.seed, run.fold).parent), "-f", run.fold, "-device", s.device,
                    "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        else:
            argv = cmd.predict_argv(images, output, s.dataset_id, s.configuration, run.fold,
                                    self.trainer_name(run.row.trainer, run.seed), s.device)
            argv += ["-p", s.plans]
        return argv + ([] if s.tta else ["--disable_tta"])

    def commands(self, run: Run) -> list[list[str]]:
        """The shell commands of one run, as :meth:`execute` would run them (for ``--print-commands``)."""
        first = self.attach_argv(run) if run.row.kind == "attach" else self.train_argv(run)
        return [first, self.predict_argv(run, self.run_dir(run) / "predictions")]

    # ------------------------------------------------------------------ steps
    def execute(self, run: Run, progress=None) -> RunRecord:
        """Run the missing steps of ``run``; never raises for a failing step (the record says what failed)."""
        record = RunRecord(run)
        try:
            if run.row.base is not None:
                base = self.fold_dir(_base_row(run.row), run.seed, run.fold) / "checkpoint_final.pth"
                if not base.is_file():
                    record.status = "waiting"
                    record.error = f"its base run ({run.row.base}, seed {run.seed}, fold {run.fold}) has no {base}"
                    return record
            record.steps["train" if run.row.kind != "attach" else "attach"] = self._model_step(run, progress)
            record.steps["predict"] = self._predict_step(run, progress)
            record.evaluation = self._evaluate_step(run, progress)
            record.costs = run_costs(self, run, record.steps)
            record.status = "done"
        except Exception as e:  # noqa: BLE001 - one failing run must not stop the others; the record names it
            record.status = "failed"
            record.error = f"{type(e).__name__}: {e}"
        return record

    def load(self, run: Run) -> RunRecord:
        """The record of a run from its files, without running anything (``--collect-only``)."""
        record = RunRecord(run)
        folder = self.run_dir(run)
        steps = {name: _read_json(folder / f"{name}.json") for name in ("train", "attach", "predict")}
        record.steps = {k: v for k, v in steps.items() if v is not None}
        record.evaluation = _read_json(folder / "evaluation.json")
        if record.evaluation is not None:
            record.costs = run_costs(self, run, record.steps)
            record.status = "done"
        return record

    def _model_step(self, run: Run, progress) -> dict[str, Any]:
        folder = self.run_dir(run)
        name = "attach" if run.row.kind == "attach" else "train"
        final = self.fold_dir(run.row, run.seed, run.fold) / "checkpoint_final.pth"
        record = _read_json(folder / f"{name}.json")
        if final.is_file():
            return record or {"seconds": None, "max_rss_mb": None, "command": None, "note": "trained before"}
        argv = self.attach_argv(run) if name == "attach" else self.train_argv(run)
        if progress is not None:
            progress.note(f"{run.key}: {name} ({' '.join(argv[:4])} ...)")
        result = cmd.run_command(argv, self.env(training=name == "train"), folder / f"{name}.log")
        record = {"seconds": result.seconds, "max_rss_mb": result.max_rss_mb, "command": argv}
        write_json_atomic(folder / f"{name}.json", record)
        return record

    def _predict_step(self, run: Run, progress) -> dict[str, Any]:
        folder = self.run_dir(run)
        record = _read_json(folder / "predict.json")
        final = folder / "predictions"
        if record is not None and final.is_dir():
            return record
        tmp = folder / ".predictions.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        argv = self.predict_argv(run, tmp)
        if progress is not None:
            progress.note(f"{run.key}: predict {len(self.test_cases())} test cases")
        result = cmd.run_command(argv, self.env(), folder / "predict.log")
        os.replace(tmp, final)
        record = {"seconds": result.seconds, "max_rss_mb": result.max_rss_mb, "cases": len(self.test_cases()),
                  "command": argv}
        write_json_atomic(folder / "predict.json", record)
        return record

    def _evaluate_step(self, run: Run, progress) -> dict[str, Any]:
        from nnunet_ext.evaluation.per_domain import evaluate_folder

        path = self.run_dir(run) / "evaluation.json"
        cached = _read_json(path)
        if cached is not None:
            return cached
        result = evaluate_folder(self.run_dir(run) / "predictions", self.raw / "labelsTs", self.raw, self.domains,
                                 tolerance_mm=self.settings.tolerance_mm)
        write_json_atomic(path, result)
        return result

    # ------------------------------------------------------------------ dataset facts
    def test_cases(self) -> list[str]:
        return sorted(c for c, info in self.domains.cases.items() if info.get("split") == "test")

    def fold_source_domains(self) -> dict[str, list[str]]:
        """Per fold, the domains of its training cases (in ``domains.json`` order): the in-domain columns."""
        order = list(self.domains.domains)
        sources: dict[str, list[str]] = {}
        splits = None
        for fold in self.settings.folds:
            if fold == "all":
                cases = [c for c, info in self.domains.cases.items() if info.get("split") == "train"]
            else:
                if splits is None:
                    splits = _read_splits(self.preprocessed)
                index = int(fold)
                if not 0 <= index < len(splits):
                    raise ValueError(f"fold {fold}: {self.preprocessed / 'splits_final.json'} has {len(splits)} folds "
                                     f"(0-{len(splits) - 1}); pass --folds within them")
                cases = splits[index]["train"]
            unknown = [c for c in cases if c not in self.domains.cases]
            if unknown:
                raise ValueError(f"fold {fold}: training cases without an entry in {self.raw / DOMAINS_FILENAME}: "
                                 f"{unknown[:5]}; add them to domains.json")
            names = {self.domains.cases[c]["domain"] for c in cases}
            sources[fold] = [d for d in order if d in names]
        return sources


def _base_row(row: Row) -> Row:
    from nnunet_ext.benchmark.rows import parse_row

    return parse_row(row.base)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _read_splits(preprocessed: Path) -> list[dict[str, list[str]]]:
    path = preprocessed / "splits_final.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: numbered folds need nnU-Net's splits file. Give the raw "
                                f"dataset a splits_final.json (nnUNetv2_plan_and_preprocess copies it) or use "
                                f"--folds all")
    return json.loads(path.read_text(encoding="utf-8"))


def run_costs(bench: Benchmark, run: Run, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Costs of a finished run (see the module docstring); cached as ``costs.json`` in the run folder."""
    path = bench.run_dir(run) / "costs.json"
    cached = _read_json(path)
    if cached is not None:
        return cached
    from nnunet_ext.utils.checkpoint_io import load_checkpoint_safely

    fold_dir = bench.fold_dir(run.row, run.seed, run.fold)
    checkpoint = load_checkpoint_safely(fold_dir / "checkpoint_final.pth", map_location="cpu")
    numbers = sum(int(v.numel()) for v in checkpoint["network_weights"].values() if hasattr(v, "numel"))
    costs: dict[str, Any] = {"model_numbers": numbers}
    if run.row.kind != "attach":
        log = checkpoint.get("logging", {})
        starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
        iterations = _debug_value(fold_dir, "num_iterations_per_epoch")
        epochs = [e - s for s, e in zip(starts, ends)]
        if epochs and iterations:
            costs["train_s_per_iteration"] = statistics.median(epochs) / iterations
            costs["train_epochs"] = len(epochs)
            costs["train_iterations"] = len(epochs) * iterations
    model_step = steps.get("train") or steps.get("attach") or {}
    costs["model_step_seconds"] = model_step.get("seconds")
    costs["model_step_max_rss_mb"] = model_step.get("max_rss_mb")
    predict = steps.get("predict") or {}
    if predict.get("seconds") is not None and predict.get("cases"):
        costs["predict_s_per_case"] = predict["seconds"] / predict["cases"]
    costs["predict_max_rss_mb"] = predict.get("max_rss_mb")
    write_json_atomic(path, costs)
    return costs


def _debug_value(fold_dir: Path, key: str) -> int | None:
    """An int attribute of the trainer from nnU-Net's ``debug.json`` (it records the trainer's attributes)."""
    debug = _read_json(fold_dir / "debug.json") or {}
    try:
        return int(debug[key])
    except (KeyError, TypeError, ValueError):
        return None


def check_settings(bench: Benchmark) -> None:
    """Refuse before anything runs: no test cases, a domain without test cases, trainers nnU-Net cannot find.

    Raises:
        ValueError: naming the problem and the fix.
    """
    tests = bench.test_cases()
    if not tests:
        raise ValueError(f"{bench.raw / DOMAINS_FILENAME} lists no test cases (split 'test'); the benchmark "
                         f"evaluates on imagesTs/labelsTs: convert the dataset with held-out test cases")
    with_tests = {bench.domains.cases[c]["domain"] for c in tests}
    used = {info["domain"] for info in bench.domains.cases.values()}
    empty = [d for d in bench.domains.domains if d in used and d not in with_tests]
    if empty:
        raise ValueError(f"domains without test cases: {empty}. Every domain needs test cases in imagesTs/labelsTs "
                         f"(split 'test' in {bench.raw / DOMAINS_FILENAME}) to get a column; add some or remove "
                         f"those cases from the dataset")
    for folder in ("imagesTs", "labelsTs"):
        if not (bench.raw / folder).is_dir():
            raise FileNotFoundError(f"{bench.raw / folder} does not exist but domains.json lists test cases")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.benchmark.rows import parse_row

    for spec in bench.settings.rows:
        row = parse_row(spec)
        if row.kind == "attach":
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's lookup narrates every folder it searches
                recursive_find_trainer_class_by_name(bench.trainer_name(row.trainer, bench.settings.seeds[0]))
        except RuntimeError:
            methods = f" nor a test-time method ({', '.join(ATTACH_METHODS)})" if row.kind == "finetune" else ""
            raise ValueError(f"row {spec!r}: {row.trainer!r} is neither a trainer nnU-Net's lookup finds{methods}; "
                             f"check the name (nnext doctor shows how trainers are found)") from None


def load_or_save_settings(settings: BenchmarkSettings, output: Path) -> None:
    """Write ``OUT/settings.json``; an existing one must agree on the identity settings (rows, seeds and folds
    may differ: the matrix covers what is asked now, finished runs are reused).

    Raises:
        ValueError: ``OUT`` holds a benchmark with other identity settings (dataset, budget, ...).
    """
    path = Path(output) / SETTINGS_FILENAME
    old = _read_json(path)
    if old is not None:
        clash = {k: (old.get(k), v) for k, v in settings.to_json().items() if k in IDENTITY_KEYS and old.get(k) != v}
        if clash:
            details = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in clash.items())
            raise ValueError(f"{output} holds a benchmark with other settings ({details}); use another -o folder")
    write_json_atomic(path, settings.to_json())


def default_tolerance(bench: Benchmark) -> float:
    """The surface Dice tolerance when none is given: the largest voxel spacing of the first test label (one
    voxel; a tolerance below the spacing only counts exactly matching boundaries)."""
    from nnunet_ext.utils.image_io import read_image

    ending = bench.dataset_json.get("file_ending", ".nii.gz")
    first = bench.raw / "labelsTs" / f"{bench.test_cases()[0]}{ending}"
    return float(max(read_image(first).GetSpacing()))


def ensure_preprocessed(bench: Benchmark, progress=None) -> None:
    """Run the stock ``nnUNetv2_plan_and_preprocess`` unless the configuration is already preprocessed.

    Raises:
        ValueError: the plans are not nnU-Net's default and do not exist (plan them with their planner first).
    """
    s = bench.settings
    plans_file = bench.preprocessed / f"{s.plans}.json"
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text(encoding="utf-8"))
        configuration = plans.get("configurations", {}).get(s.configuration)
        if configuration is None:
            raise ValueError(f"{plans_file} has no configuration {s.configuration!r} (it has "
                             f"{sorted(plans.get('configurations', {}))}); pass -c with one of them")
        if (bench.preprocessed / configuration.get("data_identifier", "")).is_dir():
            return
    elif s.plans != "nnUNetPlans":
        raise ValueError(f"{plans_file} does not exist; plan the dataset with the planner of {s.plans} first "
                         f"(nnUNetv2_plan_and_preprocess -d {s.dataset_id} -pl PLANNER -c {s.configuration})")
    if progress is not None:
        progress.note(f"nnUNetv2_plan_and_preprocess -d {s.dataset_id} -c {s.configuration}")
    env = cmd.nnunet_env(nnunet_folder("raw"), nnunet_folder("preprocessed"), nnunet_folder("results"))
    cmd.run_command(cmd.plan_and_preprocess_argv(s.dataset_id, [s.configuration]), env,
                    bench.output / "logs" / "plan_and_preprocess.log")
