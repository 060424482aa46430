"""``nnext doctor``: is this installation able to run nnunet-ext? Every problem comes with a one-line fix.

Checks versions, the nnU-Net path variables (set, existing, writable), trainer discovery (a real
lookup through nnU-Net's own ``recursive_find_trainer_class_by_name``), the compute device and the
optional embedded-data sources. Exit code 1 when any check fails (warnings do not fail).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nnunet_ext import _autodiscover

Status = Literal["ok", "warn", "fail"]
PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
PROBE_TRAINER = "nnUNetTrainerCPU_smoke"
TORCH_FIX = "pip install torch==2.14.1 torchvision==0.29.1  (a matched pair; see documentation/installation.md)"


@dataclass
class Check:
    """One line of the report. ``fix`` is a one-line remedy, empty when the check passed."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions() -> list[Check]:
    checks = [Check("python", "ok" if sys.version_info >= (3, 10) else "fail", platform.python_version(),
                    "" if sys.version_info >= (3, 10) else "use Python >= 3.10")]
    for dist, fix in (
        ("torch", TORCH_FIX),
        ("torchvision", TORCH_FIX),
        ("nnunetv2", "pip install 'nnunetv2>=2.8.1,<2.9'"),
        ("nnunet-ext", "pip install -e .  (from the nnunet-ext checkout)"),
    ):
        version = _version(dist)
        checks.append(Check(dist, "ok" if version else "fail", version or "not installed", "" if version else fix))
    nnunet_version = _version("nnunetv2")
    if nnunet_version:
        major_minor = tuple(int(p) for p in nnunet_version.split(".")[:2] if p.isdigit())
        if major_minor != (2, 8):
            checks[3] = Check("nnunetv2", "fail", f"{nnunet_version} (nnunet-ext is tested with 2.8.x)",
                              "pip install 'nnunetv2>=2.8.1,<2.9'")
    try:
        import torchvision  # noqa: F401  nnU-Net's trainer search imports modules that import torchvision
    except Exception as e:  # a mismatched pair fails with RuntimeError/OSError, not only ImportError
        checks.append(Check("torch/torchvision import", "fail", f"{type(e).__name__}: {e}"[:200], TORCH_FIX))
    return checks


def check_path_vars(environ: dict[str, str] | os._Environ | None = None) -> list[Check]:
    environ = os.environ if environ is None else environ
    checks = []
    for var in PATH_VARS:
        value = environ.get(var)
        if not value:
            checks.append(Check(var, "fail", "not set", f"export {var}=/path/to/{var}  (and mkdir -p it)"))
        elif not Path(value).is_dir():
            checks.append(Check(var, "fail", f"{value} does not exist", f"mkdir -p {value}"))
        elif not os.access(value, os.W_OK | os.X_OK):
            checks.append(Check(var, "fail", f"{value} is not writable", f"chmod u+w {value} or point {var} elsewhere"))
        else:
            checks.append(Check(var, "ok", f"{value} (writable)"))
    return checks


def check_discovery(environ: dict[str, str] | os._Environ | None = None) -> list[Check]:
    environ = os.environ if environ is None else environ
    value = environ.get(_autodiscover.ENV_VAR, "")
    entries = [os.path.abspath(p) for p in value.split(os.pathsep) if p]
    registered = os.path.abspath(_autodiscover.TRAINER_FOLDER) in entries
    checks = []
    if _autodiscover.opted_out(environ):
        checks.append(Check("auto-discovery", "warn" if registered else "fail",
                            f"disabled by {_autodiscover.OPT_OUT_VAR}",
                            "" if registered else f"unset {_autodiscover.OPT_OUT_VAR} or add "
                            f"{_autodiscover.TRAINER_FOLDER} to {_autodiscover.ENV_VAR} yourself"))
    checks.append(Check(
        _autodiscover.ENV_VAR, "ok" if registered else "fail", value or "not set",
        "" if registered else "reinstall nnunet-ext (pip install .) so its .pth start-up hook is installed, "
        f"or export {_autodiscover.ENV_VAR}={_autodiscover.TRAINER_FOLDER}",
    ))
    checks.append(lookup_check(PROBE_TRAINER))
    return checks


def lookup_check(trainer_name: str) -> Check:
    """Resolve ``trainer_name`` exactly as nnUNetv2_train / nnUNetv2_predict do."""
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        with contextlib.redirect_stdout(io.StringIO()):
            cls = recursive_find_trainer_class_by_name(trainer_name)
    except Exception as e:
        return Check(f"lookup {trainer_name}", "fail", f"{type(e).__name__}: {e}"[:300],
                     "run 'nnext doctor' again after fixing the checks above; see documentation/installation.md")
    if not cls.__module__.startswith("nnunet_ext.trainers"):
        return Check(f"lookup {trainer_name}", "fail", f"resolved to {cls.__module__}.{cls.__name__}",
                     "a class with this name shadows ours (nnunetv2 built-ins win); report it to nnunet-ext")
    return Check(f"lookup {trainer_name}", "ok", f"{cls.__module__}.{cls.__name__}")


def check_device() -> list[Check]:
    try:
        import torch
    except Exception as e:
        return [Check("device", "fail", f"torch does not import: {e}"[:200], TORCH_FIX)]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return [Check("device", "ok", f"cuda x{torch.cuda.device_count()} ({names})")]
    detail = f"cpu only ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return [Check("device", "warn", detail, "no GPU: pass -device cpu to nnUNetv2_train / nnUNetv2_predict")]


def check_data_sources() -> list[Check]:
    from nnunet_ext.dataset_conversion.demo_data import available_demo_datasets

    return [
        Check(f"demo data {name}", "ok" if reason is None else "warn", "available" if reason is None else "missing",
              reason or "")
        for name, reason in available_demo_datasets().items()
    ]


def run_checks() -> list[Check]:
    checks = check_versions() + check_path_vars() + check_discovery() + check_device()
    try:
        checks += check_data_sources()
    except Exception as e:
        checks.append(Check("demo data", "fail", f"{type(e).__name__}: {e}"[:200], "reinstall nnunet-ext"))
    return checks


def print_report(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title="nnext doctor", show_lines=False)
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console(width=max(120, Console().width))
    console.print(table)
    failed = [c for c in checks if c.status == "fail"]
    console.print(f"{len(failed)} problem(s)." if failed else "Everything needed works.")


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    print_report(checks)
    return 1 if any(c.status == "fail" for c in checks) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check the installation; every problem gets a one-line fix",
                              description=__doc__)
    p.set_defaults(func=run)
