"""Run the stock nnU-Net console commands as subprocesses, streaming their output to a log file.

The demo, the benchmarks and the end-to-end tests call ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train`` and ``nnUNetv2_predict`` exactly as a user types them, so what they show is what a
user gets (including our trainer discovery).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


def nnunet_env(raw: Path, preprocessed: Path, results: Path, base: Mapping[str, str] | None = None,
               **extra: str) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with nnU-Net's three path variables set."""
    env = dict(os.environ if base is None else base)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results))
    env["PYTHONUNBUFFERED"] = "1"  # stream progress lines through the pipe as they happen
    # nnU-Net spawns 8 export workers by default (each imports torch): on 2-4 cores that costs minutes
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    env.update(extra)
    return env


@dataclass(frozen=True)
class CommandResult:
    """What a finished command cost.

    Attributes:
        seconds: wall time.
        max_rss_mb: peak resident memory of the largest process of the command's process tree (the command and
            the children it waited for, e.g. nnU-Net's data-augmentation workers), in MiB (Linux ``wait4``).
    """

    seconds: float
    max_rss_mb: float | None


def run_command(argv: list[str], env: Mapping[str, str], log_file: Path,
                on_line: Callable[[str], None] | None = None, cwd: Path | None = None) -> CommandResult:
    """Run ``argv``; append its combined output to ``log_file``; call ``on_line`` for every line.

    Returns:
        Its wall time and peak memory.

    Raises:
        FileNotFoundError: the command is not on PATH (names the package that provides it).
        RuntimeError: the command exited non-zero; the message holds its last lines and the log path.
    """
    if shutil.which(argv[0], path=env.get("PATH")) is None:
        raise FileNotFoundError(f"{argv[0]} not found on PATH; install nnU-Net: pip install 'nnunetv2>=2.8.1,<2.9'")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()  # the log is what a user tails while a long step runs
            tail = (tail + [line.rstrip()])[-25:]
            if on_line is not None:
                on_line(line.rstrip())
        code, max_rss_mb = _wait(proc)
        seconds = time.perf_counter() - start
    if code != 0:
        last = "\n".join(tail)
        raise RuntimeError(f"{' '.join(argv)} failed with exit code {code}. Last lines:\n{last}\nFull log: {log_file}")
    return CommandResult(seconds, max_rss_mb)


def _wait(proc: subprocess.Popen) -> tuple[int, float | None]:
    """Exit code and peak resident memory (MiB) of ``proc``'s tree; ``wait4`` where the OS has it."""
    if not hasattr(os, "wait4"):
        return proc.wait(), None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0  # Linux reports KiB


def plan_and_preprocess_argv(dataset_id: int, configurations: list[str], num_processes: int = 2) -> list[str]:
    return ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *configurations,
            "-np", *[str(num_processes)] * len(configurations), "--verify_dataset_integrity"]


def train_argv(dataset_id: int, configuration: str, fold: int | str, trainer: str, device: str = "cpu",
               extra: list[str] | None = None) -> list[str]:
    return ["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", device,
            *(extra or [])]


def predict_argv(input_dir: Path, output_dir: Path, dataset_id: int, configuration: str, fold: int | str,
                 trainer: str, device: str = "cpu") -> list[str]:
    return ["nnUNetv2_predict", "-i", str(input_dir), "-o", str(output_dir), "-d", str(dataset_id),
            "-c", configuration, "-f", str(fold), "-tr", trainer, "-device", device, "-npp", "1", "-nps", "1",
            "--disable_progress_bar"]
