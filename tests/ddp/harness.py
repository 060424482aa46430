"""Run trainers through nnU-Net's own multi-GPU code path on CPU: two processes, the gloo backend.

:func:`run_ddp_trainings` calls nnU-Net's ``run_training(..., num_gpus=N)`` for every :class:`DDPRun`; that
function sets ``MASTER_ADDR`` / ``MASTER_PORT`` and hands ``run_ddp`` with its arguments to
``torch.multiprocessing.spawn``. The harness collects those calls and starts ``N`` processes once for all runs
(importing torch and nnU-Net costs more than a short run); each process calls nnU-Net's ``run_ddp`` for each
run in turn, unchanged: process group, ``get_trainer_from_args``, ``maybe_load_checkpoint``,
``run_training``, final validation, ``destroy_process_group``. Only what CUDA forces is patched, inside the
spawned processes:

- ``dist.init_process_group("nccl")`` -> ``"gloo"``, with a timeout so that a rank waiting for a collective
  the other rank never reaches fails instead of hanging the test run;
- ``torch.cuda.set_device`` -> nothing;
- the device: ``nnUNetTrainer.__init__`` sets ``cuda:<rank>`` whenever DDP is on; right after construction the
  trainer gets ``cpu`` and no ``GradScaler``, what a single-process CPU run has;
- nnU-Net's ``DistributedDataParallel(network, device_ids=[rank])``: ``device_ids`` is dropped for a module on
  the CPU (DDP takes device ids for CUDA modules only).

Everything else runs as nnU-Net wrote it: the batch size split over the ranks
(``_set_batch_size_and_oversample``), the DDP-aware Dice loss, ``dist.all_gather_object`` of losses and pseudo
Dice, rank-0-only checkpoints and logs, ``dist.barrier``. nnU-Net disables ``torch.compile`` on the CPU, so
the compiled path of a GPU run is not exercised.

Spawned processes cannot see pytest fixtures: the workspace travels as nnU-Net's environment variables, and a
run's ``instrument`` / ``probe`` are module-level functions (picklable). After ``run_ddp`` returns, each rank
saves ``probe(trainer)`` (a dict of tensors and plain values) to ``<out>/<run key>/rank<r>.pt``; an exception
is saved there instead, so the test decides what it expected (:func:`check_ranks`).
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch

#: seconds a rank waits for the other ranks in a collective before failing
COLLECTIVE_TIMEOUT = 180
#: an all-reduce operation -> how two ranks' inputs combine
COMBINE = {"sum": torch.add, "min": torch.minimum, "max": torch.maximum}

Instrument = Callable[[Any, ExitStack], None]
Probe = Callable[[Any], dict[str, Any]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DDPRun:
    """One ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -num_gpus N -device cuda``, run on CPU.

    Attributes:
        trainer: the trainer's class name, looked up by nnU-Net as ``-tr`` is.
        name: the run's key in the results (default: ``trainer``).
        settings: trainer attributes set right after construction, before ``initialize`` (a shorter run);
            ``num_epochs`` is derived again for trainers that derive it (stream trainers).
        validate: run nnU-Net's final validation (``perform_actual_validation``) as ``run_ddp`` does; False
            skips it to keep the run short.
        continue_training: ``--c``.
        instrument: ``instrument(trainer, stack)`` right after construction, in every rank (e.g. to record
            calls); context managers entered on ``stack`` are left after the run.
        probe: ``probe(trainer) -> dict`` once ``run_ddp`` has returned: what the rank reports.
        configuration: nnU-Net configuration.
        fold: the fold as ``nnUNetv2_train`` takes it.
    """

    trainer: str
    name: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    validate: bool = False
    continue_training: bool = False
    instrument: Instrument | None = None
    probe: Probe | None = None
    configuration: str = "2d"
    fold: str = "0"

    @property
    def key(self) -> str:
        return self.name or self.trainer


@dataclass
class RankResult:
    """What one rank reported: its ``probe`` dict, or the exception that ended its run."""

    rank: int
    values: dict[str, Any]
    error: str | None = None
    traceback: str | None = None


def run_ddp_trainings(runs: Sequence[DDPRun], dataset: str, env: Mapping[str, str], out: Path,
                      world_size: int = 2) -> dict[str, list[RankResult]]:
    """Train every run as ``nnUNetv2_train ... -num_gpus world_size`` does, on CPU with gloo (module docstring).

    Args:
        runs: the runs, trained one after the other in the same ``world_size`` processes.
        dataset: dataset name or id.
        env: environment of the runs (nnU-Net's path variables at least); ``nnUNet_n_proc_DA`` is set to 0.
        out: folder for the ranks' reports.
        world_size: number of processes (``-num_gpus``).

    Returns:
        run key -> one :class:`RankResult` per rank, in rank order.

    Raises:
        ValueError: two runs have the same key.
        torch.multiprocessing.ProcessExitedException: a rank died (killed, or a crash below Python).
        RuntimeError: a rank ended without its report.
    """
    from nnunetv2.run import run_training as rt

    if len({run.key for run in runs}) != len(runs):
        raise ValueError(f"run keys must be unique, got {[run.key for run in runs]}; give runs a name")
    env = {**env, "nnUNet_n_proc_DA": "0"}
    jobs: list[tuple[Callable, tuple]] = []

    def collect(fn, args=(), nprocs=1, join=True, **kwargs):
        if nprocs != world_size:
            raise AssertionError(f"nnU-Net asked for {nprocs} processes, the harness for {world_size}")
        jobs.append((fn, args))

    with mock.patch.dict(os.environ, env), mock.patch.object(rt.mp, "spawn", collect):
        for run in runs:
            rt.run_training(dataset, run.configuration, run.fold, run.trainer, num_gpus=world_size,
                            continue_training=run.continue_training, device=torch.device("cuda"))
    for run in runs:
        (out / run.key).mkdir(parents=True, exist_ok=True)
        for rank in range(world_size):
            (out / run.key / f"rank{rank}.pt").unlink(missing_ok=True)
    ports = [free_port() for _ in runs]
    with mock.patch.dict(os.environ, {**env, "MASTER_ADDR": "127.0.0.1"}):
        torch.multiprocessing.spawn(_rank_main, args=(jobs, list(runs), ports, out, world_size), nprocs=world_size,
                                    join=True)
    results: dict[str, list[RankResult]] = {}
    for run in runs:
        results[run.key] = []
        for rank in range(world_size):
            path = out / run.key / f"rank{rank}.pt"
            if not path.is_file():
                raise RuntimeError(f"rank {rank} of run {run.key} reported nothing ({path} is missing)")
            results[run.key].append(RankResult(**torch.load(path, weights_only=True)))
    return results


def check_ranks(results: list[RankResult]) -> list[dict[str, Any]]:
    """The ranks' values; fails with every failed rank's traceback if any rank raised."""
    failed = [r for r in results if r.error is not None]
    if failed:
        raise AssertionError("\n\n".join(f"rank {r.rank}: {r.error}\n{r.traceback}" for r in failed))
    return [r.values for r in results]


# ------------------------------------------------------------------------------------ inside a spawned rank
def _rank_main(rank: int, jobs: list[tuple[Callable, tuple]], runs: list[DDPRun], ports: list[int], out: Path,
               world_size: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the machine's cores
    for (run_ddp, args), run, port in zip(jobs, runs, ports):
        os.environ["MASTER_PORT"] = str(port)
        trainers: list = []
        report: dict[str, Any] = {"rank": rank, "values": {}}
        try:
            with ExitStack() as stack:
                stack.enter_context(_cpu_instead_of_cuda(run, trainers, stack))
                run_ddp(rank, *args)
                if run.probe is not None:
                    report["values"] = run.probe(trainers[0])
        except Exception as e:  # reported to the test, which decides whether it was expected
            report.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            if dist.is_initialized():  # run_ddp did not get to its cleanup; the next run needs a new group
                dist.destroy_process_group()
        torch.save(report, out / run.key / f"rank{rank}.pt")


@contextmanager
def _cpu_instead_of_cuda(run: DDPRun, trainers: list, stack: ExitStack) -> Iterator[None]:
    """The patches of the module docstring; ``trainers`` receives the trainer ``run_ddp`` builds."""
    import torch.distributed as dist
    from nnunetv2.run import run_training as rt
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from torch.nn.parallel import DistributedDataParallel

    init_process_group = dist.init_process_group
    get_trainer_from_args = rt.get_trainer_from_args

    def gloo_process_group(backend=None, *args, **kwargs):
        if backend != "nccl":
            raise AssertionError(f"nnU-Net asked for backend {backend!r}; the harness replaces 'nccl' (update it)")
        kwargs.setdefault("timeout", datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
        return init_process_group("gloo", *args, **kwargs)

    def cpu_trainer(*args, **kwargs):
        trainer = get_trainer_from_args(*args, **kwargs)
        trainer.device = torch.device("cpu")
        trainer.grad_scaler = None
        for name, value in run.settings.items():
            setattr(trainer, name, value)
        derived = trainer.epochs_from_settings() if hasattr(trainer, "epochs_from_settings") else None
        if derived is not None:
            trainer.num_epochs = derived
        if not run.validate:
            trainer.perform_actual_validation = lambda *a, **k: None
        if run.instrument is not None:
            run.instrument(trainer, stack)
        trainers.append(trainer)
        return trainer

    def cpu_ddp(module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)

    with mock.patch.object(dist, "init_process_group", gloo_process_group), \
            mock.patch.object(torch.cuda, "set_device", lambda device: None), \
            mock.patch.object(rt, "get_trainer_from_args", cpu_trainer), \
            mock.patch.object(trainer_module, "DDP", cpu_ddp):
        yield


def assert_identical(a: Any, b: Any, where: str = "value") -> None:
    """``a`` and ``b`` are equal bit for bit: tensors (dtype, shape, values; NaN equals NaN), dicts, lists, scalars."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise AssertionError(f"{where}: a tensor and a {type(b if isinstance(a, torch.Tensor) else a).__name__}")
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            raise AssertionError(f"{where}: keys differ: {sorted(map(str, set(a) ^ set(b)))}")
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            raise AssertionError(f"{where}: lengths {len(a)} and {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif not (a == b or (a != a and b != b)):  # floats: NaN == NaN here
        raise AssertionError(f"{where}: {a!r} != {b!r}")


def assert_all_reduced(records: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Each recorded all-reduce (``{"op", "input", "output"}`` per rank, in call order) gave every rank the same
    result, and that result combines the two ranks' inputs with the operation."""
    first, second = records
    if len(first) != len(second):
        raise AssertionError(f"the ranks made {len(first)} and {len(second)} reductions")
    for i, (a, b) in enumerate(zip(first, second)):
        if a["op"] != b["op"]:
            raise AssertionError(f"reduction {i}: {a['op']!r} on rank 0, {b['op']!r} on rank 1")
        torch.testing.assert_close(a["output"], COMBINE[a["op"]](a["input"], b["input"]),
                                   msg=lambda m, i=i: f"reduction {i}: {m}")
        assert_identical(a["output"], b["output"], f"reduction {i}")
