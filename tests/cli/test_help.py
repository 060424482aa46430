"""Every ``nnext`` sub-command's --help is plain text (no docstring markup) and describes every argument."""

from __future__ import annotations

import argparse

import pytest

from nnunet_ext.cli.main import build_parser, plain_text, walk_parsers

PARSERS = dict(walk_parsers(build_parser()))
UNDOCUMENTED_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def test_every_sub_command_is_walked() -> None:
    assert {"nnext demo", "nnext doctor", "nnext convert cc359", "nnext stream check", "nnext fda attach"} <= set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_is_plain_text_and_every_argument_is_described(command: str) -> None:
    parser = PARSERS[command]
    text = parser.format_help()
    for markup in ("``", ":func:`", ":class:`", ":mod:`", "**"):
        assert markup not in text, f"{command} --help shows {markup!r}"
    undescribed = [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
                   if not isinstance(action, UNDOCUMENTED_ACTIONS) and not (action.help or "").strip()]
    assert not undescribed, f"{command}: no help for {undescribed}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            silent = [choice.dest for choice in action._choices_actions if not (choice.help or "").strip()]
            assert not silent, f"{command}: sub-commands without help {silent}"


def test_plain_text_keeps_ordinary_asterisks() -> None:
    assert plain_text("files *_sa.nii.gz and ``x``; :class:`~a.B`") == "files *_sa.nii.gz and x; B"
