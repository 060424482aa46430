"""Entry point of the ``nnext`` command.

Every sub-command lives in its own module of this package and exposes ``register(subparsers)``, which
adds an ``argparse`` sub-parser and sets ``func`` (called with the parsed namespace, returns an exit
code). Sub-command modules are imported lazily by name so ``nnext --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from nnunet_ext import __version__

#: sub-command modules in ``nnunet_ext.cli``, in the order ``nnext --help`` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = ("doctor", "demo", "demo_data", "convert", "stream", "evaluate", "evaluate_continual", "plot_layer_speed", "fda", "plans", "catenorm", "odex")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback, exit code 2."""


def raw_root(value: str | None) -> Path:
    """The nnU-Net raw folder: ``--raw-root`` if given, else ``$nnUNet_raw``."""
    if value:
        return Path(value)
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise UserError("--raw-root not given and nnUNet_raw is not set; pass --raw-root DIR or export nnUNet_raw=DIR")
    return Path(env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnext",
        description="nnunet-ext: domain-robust segmentation methods for nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"nnunet_ext.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"nnext {args.command}: error: {e}", file=sys.stderr)
        return 2


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
