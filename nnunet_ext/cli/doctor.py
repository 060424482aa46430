"""``nnext doctor``: is this installation able to run nnunet-ext? Every problem comes with a one-line fix.

Checks versions, the nnU-Net path variables (set, existing, a folder, writable), trainer discovery (the
folders in nnUNet_extTrainer and a real lookup through nnU-Net's own recursive_find_trainer_class_by_name),
other installed code that shadows the import name nnunet_ext or one of our trainer names, the compute
device and the optional embedded-data sources.

Exit code 1 when something is broken ("fail"); warnings ("warn") do not fail. nnU-Net's path variables
not set at all is a warning with the export lines to paste: nnext demo does not need them, the nnUNetv2_*
commands do. When the output is not a terminal, the report is plain text with every fix on one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from nnunet_ext import _autodiscover

Status = Literal["ok", "warn", "fail"]
PATH_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: where the export lines suggest putting nnU-Net's folders when none is set
SUGGESTED_ROOT = "$HOME/nnUNet_data"
IMPORT_NAME = "nnunet_ext"
#: our console script: tells our distribution apart from others named nnunet_ext (Lifelong-nnUNet's is)
OUR_ENTRY_POINT = "nnunet_ext.cli.main:main_exit"
_CLASS_RE = re.compile(r"^class\s+(nnUNetTrainer\w*)\b", re.MULTILINE)
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


def suggested_exports() -> list[str]:
    """Shell lines that set nnU-Net's three path variables under :data:`SUGGESTED_ROOT` and create them."""
    lines = [f'export {var}="{SUGGESTED_ROOT}/{var}"' for var in PATH_VARS]
    return lines + ["mkdir -p " + " ".join(f'"${var}"' for var in PATH_VARS)]


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _read_only_fs(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _not_writable(var: str, value: str, folder: Path, what: str) -> Check:
    """The check for ``var`` when ``folder`` (the value itself, or the ancestor it would be created in) is read-only."""
    if _read_only_fs(folder):
        return Check(var, "fail", f"{what}: {folder} is on a read-only file system",
                     f"point {var} at a folder on a writable disk: export {var}=/WRITABLE/DISK/{var}")
    if hasattr(os, "getuid") and folder.stat().st_uid != os.getuid():
        return Check(var, "fail", f"{what}: {folder} belongs to another user",
                     f"ask its owner for write access, or point {var} at your own folder: "
                     f"export {var}=$HOME/nnUNet_data/{var}")
    return Check(var, "fail", f"{what}: {folder} is not writable", f"chmod u+wx {shlex.quote(str(folder))}")


def path_var_check(var: str, value: str) -> Check:
    """One set path variable: it must be a writable folder, or creatable with ``mkdir -p``."""
    path = Path(value)
    quoted = shlex.quote(value)
    if path.is_dir():
        return Check(var, "ok", f"{value} (writable)") if _writable(path) else \
            _not_writable(var, value, path, f"{value} is not writable")
    if path.exists():
        return Check(var, "fail", f"{value} is a file, not a folder",
                     f"point {var} at a folder (export {var}={shlex.quote(value + '_folder')}), or move the file "
                     f"away and run mkdir -p {quoted}")
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return Check(var, "fail", f"{value} does not exist and cannot be created: {ancestor} is a file",
                     f"point {var} at a path that does not run through the file {ancestor}")
    if not _writable(ancestor):
        return _not_writable(var, value, ancestor, f"{value} does not exist and cannot be created")
    return Check(var, "fail", f"{value} does not exist", f"mkdir -p {quoted}")


def check_path_vars(environ: Mapping[str, str] | None = None) -> list[Check]:
    """nnU-Net's path variables. None set is a warning (not set up yet); some set and others not is a failure.

    With none set, ``nnext demo`` works (it uses its own folders) but ``nnUNetv2_*`` commands do not; with
    only some set, a half-configured nnU-Net fails in the middle of a run.
    """
    environ = os.environ if environ is None else environ
    values = {var: environ.get(var) for var in PATH_VARS}
    none_set = not any(values.values())
    checks = []
    for var, value in values.items():
        if value:
            checks.append(path_var_check(var, value))
        elif none_set:
            checks.append(Check(var, "warn", "not set yet (nnext demo does not need it; the nnUNetv2_* commands do)",
                                f'export {var}="{SUGGESTED_ROOT}/{var}"  (then mkdir -p "${var}")'))
        else:
            set_vars = [v for v in PATH_VARS if values[v]]
            checks.append(Check(var, "fail", f"not set, although {' and '.join(set_vars)} "
                                f"{'is' if len(set_vars) == 1 else 'are'} set",
                                f"export {var}=/path/to/{var}  (and mkdir -p it)"))
    return checks


def check_discovery(environ: Mapping[str, str] | None = None) -> list[Check]:
    environ = os.environ if environ is None else environ
    value = environ.get(_autodiscover.ENV_VAR, "")
    entries = [p for p in value.split(os.pathsep) if p]
    registered = os.path.abspath(_autodiscover.TRAINER_FOLDER) in [os.path.abspath(p) for p in entries]
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
    good = [p for p in entries if os.path.isdir(p)]
    for entry in entries:
        if not os.path.isdir(entry):
            what = "is a file, not a folder" if os.path.exists(entry) else "does not exist"
            checks.append(Check(f"{_autodiscover.ENV_VAR} entry", "warn",
                                f"{entry} {what}; nnU-Net finds no trainer there",
                                f"export {_autodiscover.ENV_VAR}={shlex.quote(os.pathsep.join(good))}"
                                if good else f"unset {_autodiscover.ENV_VAR}"))
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


def our_trainer_names() -> set[str]:
    """The ``nnUNetTrainer*`` class names nnunet-ext exports (what ``-tr`` accepts)."""
    import nnunet_ext.trainers as trainers

    return {name for name in trainers.__all__ if name.startswith("nnUNetTrainer")}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_ours(dist: importlib.metadata.Distribution) -> bool:
    """Our distribution has the ``nnext`` console script; Lifelong-nnUNet's, also named nnunet_ext, does not."""
    return any(ep.group == "console_scripts" and ep.value == OUR_ENTRY_POINT for ep in dist.entry_points)


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    """Import names a distribution provides, by :func:`importlib.metadata.packages_distributions`'s rule:
    ``top_level.txt`` if present, else the first part of every path in its file list (``RECORD``)."""
    text = dist.read_text("top_level.txt")
    if text:
        return set(text.split())
    return {f.parts[0] if len(f.parts) > 1 else f.stem for f in dist.files or []}


def _trainers_defined(files: Iterable[Path], names: set[str]) -> dict[str, Path]:
    """Which of ``names`` the Python ``files`` define as classes (a text search: nothing is imported)."""
    found: dict[str, Path] = {}
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for name in _CLASS_RE.findall(text):
            if name in names:
                found.setdefault(name, Path(path))
    return found


def _shown(found: Mapping[str, Path], limit: int = 6) -> str:
    names = sorted(found)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_shadowing(names: set[str] | None = None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Other code that provides the import name ``nnunet_ext`` or defines one of our trainer names.

    Looks at every installed distribution's file list (not ours), at nnunetv2's own trainer folder (files
    copied there by other add-ons included: nnU-Net's lookup searches it first) and at the other folders
    in ``nnUNet_extTrainer``. Classes are found by a text search, so nothing foreign is imported.

    Args:
        names: our trainer names (default :func:`our_trainer_names`).
        environ: environment to read ``nnUNet_extTrainer`` from (default ``os.environ``).

    Returns:
        One check per finding: "fail" where nnU-Net's lookup would pick the other class, "warn" otherwise;
        a single "ok" check when nothing shadows us.
    """
    environ = os.environ if environ is None else environ
    if names is None:
        try:
            names = our_trainer_names()
        except Exception as e:
            return [Check("shadowing", "warn", f"cannot import nnunet_ext.trainers ({type(e).__name__}: {e})"[:200],
                          "fix the failures above, then run nnext doctor again")]
    checks = []
    nnunetv2_files: set[Path] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        if _normalized(dist_name) == "nnunetv2":
            nnunetv2_files |= {Path(dist.locate_file(f)).resolve() for f in dist.files or []}
            continue
        if _is_ours(dist):
            continue
        tops = _top_level_names(dist)
        label = f"{dist_name} {dist.version} (in {dist.locate_file('')})"
        if IMPORT_NAME in tops:
            checks.append(Check(
                f"import name {IMPORT_NAME}", "warn", f"also installed by {label} (Lifelong-nnUNet uses this name)",
                "whichever comes first on sys.path wins and pip may overwrite the other's files: use a separate "
                "virtual environment for it (python -m venv), or remove it from this one (its files are listed "
                "in its RECORD)"))
        if IMPORT_NAME in tops or "nnunetv2" in tops or "nnunet" in _normalized(dist_name):
            found = _trainers_defined((dist.locate_file(f) for f in dist.files or [] if f.suffix == ".py"), names)
            if found:
                checks.append(Check(
                    "trainer names", "warn", f"{label} also defines {_shown(found)}",
                    "harmless while its files are neither in nnunetv2's trainer folder nor in nnUNet_extTrainer; "
                    "if they are, nnU-Net may pick its class instead of ours: keep it in another virtual "
                    "environment"))
    spec = importlib.util.find_spec("nnunetv2")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "training" / "nnUNetTrainer"
        found = _trainers_defined(sorted(folder.rglob("*.py")), names)
        for name, path in sorted(found.items()):
            built_in = path.resolve() in nnunetv2_files
            checks.append(Check(
                f"trainer {name}", "fail", f"{path} defines it; nnU-Net's lookup searches nnunetv2 first, "
                f"so -tr {name} gets that class, not ours",
                "report the name clash to nnunet-ext (nnunetv2 itself defines it)" if built_in else
                f"another add-on copied this file into nnunetv2: remove {shlex.quote(str(path))} or reinstall "
                "nnunetv2 (pip install --force-reinstall 'nnunetv2>=2.8.1,<2.9')"))
    ours = os.path.abspath(_autodiscover.TRAINER_FOLDER)
    entries = [os.path.abspath(p) for p in environ.get(_autodiscover.ENV_VAR, "").split(os.pathsep) if p]
    before_ours = True
    for entry in entries:
        if entry == ours:
            before_ours = False
            continue
        if not os.path.isdir(entry):
            continue
        found = _trainers_defined(sorted(Path(entry).rglob("*.py")), names)
        if found:
            checks.append(Check(
                "trainer names", "fail" if before_ours else "warn",
                f"{entry} in {_autodiscover.ENV_VAR} defines {_shown(found)}; "
                + ("it is searched before ours, so nnU-Net picks its classes" if before_ours else
                   "ours is searched first, so its classes of these names are unreachable"),
                f"rename those classes, or remove {entry} from {_autodiscover.ENV_VAR}"))
    if not checks:
        checks.append(Check("shadowing", "ok", f"no other code provides {IMPORT_NAME} or our {len(names)} trainer names"))
    return checks


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
    checks = check_versions() + check_path_vars() + check_discovery() + check_shadowing() + check_device()
    try:
        checks += check_data_sources()
    except Exception as e:
        checks.append(Check("demo data", "fail", f"{type(e).__name__}: {e}"[:200], "reinstall nnunet-ext"))
    return checks


def _paths_not_set_yet(checks: list[Check]) -> bool:
    return any(c.name in PATH_VARS and c.status == "warn" for c in checks)


def _conclusion(checks: list[Check]) -> list[str]:
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines = []
    if _paths_not_set_yet(checks):
        lines += ["", "nnU-Net's path variables are not set yet. nnext demo does not need them; the nnUNetv2_* "
                  "commands and nnext convert do. To set them (add these lines to ~/.bashrc to keep them):", ""]
        lines += [f"  {line}" for line in suggested_exports()]
        lines.append("")
    summary = f"{failed} problem(s)." if failed else "Everything needed works."
    return lines + [summary + (f" {warned} warning(s)." if warned else "")]


def print_report(checks: list[Check], stream: TextIO | None = None) -> None:
    """Print the report: a table on a terminal; otherwise plain lines, every fix whole on its own line."""
    stream = sys.stdout if stream is None else stream
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
        table = Table(title="nnext doctor", show_lines=False)
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
        Console(file=stream, width=max(120, Console(file=stream).width)).print(table)
    else:
        width = max(len(c.name) for c in checks)
        print("nnext doctor", file=stream)
        for c in checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}", file=stream)
            if c.fix:
                print(f"{'':<4}  {'':<{width}}  fix: {c.fix}", file=stream)
    print("\n".join(_conclusion(checks)), file=stream)


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    print_report(checks)
    return 1 if any(c.status == "fail" for c in checks) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check the installation; every problem gets a one-line fix",
                              description=__doc__)
    p.set_defaults(func=run)
