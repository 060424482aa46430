"""Entry point of the ``nnext`` command.

Every sub-command lives in its own module of this package and exposes ``register(subparsers)``, which
adds an ``argparse`` sub-parser and sets ``func`` (called with the parsed namespace, returns an exit
code). Sub-command modules are imported lazily by name so ``nnext --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from nnunet_ext import __version__
from nnunet_ext.utils.nnunet_paths import nnunet_folder

#: sub-command modules in ``nnunet_ext.cli``, in the order ``nnext --help`` lists them
SUBCOMMAND_MODULES: tuple[str, ...] = ("doctor", "demo", "demo_data", "convert", "stream", "evaluate",
                                       "evaluate_continual", "benchmark", "plot_layer_speed", "fda", "plans",
                                       "catenorm", "odex", "adapt")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback, exit code 2."""


def raw_root(value: str | None) -> Path:
    """The nnU-Net raw folder: ``--raw-root`` if given, else ``$nnUNet_raw``."""
    if value:
        return Path(value)
    try:
        return nnunet_folder("raw")
    except ValueError as e:
        raise UserError(f"--raw-root not given and {e}; or pass --raw-root DIR") from None


_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_STRONG = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)


def plain_text(text: str) -> str:
    """Docstring markup (reStructuredText) as the plain text a terminal shows.

    >>> plain_text("writes ``dataset.json`` (:func:`~nnunet_ext.domains.save_domains`); **new** folder")
    'writes dataset.json (save_domains); new folder'
    """
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return _STRONG.sub(r"\1", _LITERAL.sub(r"\1", text))


def walk_parsers(parser: argparse.ArgumentParser, prog: str = "nnext"
                 ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` for ``parser`` and every sub-command parser below it."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_parsers(sub, f"{prog} {name}")


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Strip docstring markup from every description, epilog and help text (module docstrings are reused
    as descriptions)."""
    for _, p in walk_parsers(parser):
        p.description = plain_text(p.description) if p.description else p.description
        p.epilog = plain_text(p.epilog) if p.epilog else p.epilog
        for action in p._actions:
            if isinstance(action.help, str):
                action.help = plain_text(action.help)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    choice.help = plain_text(choice.help) if choice.help else choice.help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnext",
        description="nnunet-ext: domain-robust segmentation methods for nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"nnunet_ext.cli.{name}").register(sub)
    _plain_help(parser)
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
