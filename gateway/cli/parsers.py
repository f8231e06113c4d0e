"""The argument parsers of the operator commands: a command's actions and the options each takes."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

from gateway.cli.command import Action, common_options, database_option, handler

# A parser's subcommands (a string: argparse's class is generic only to type checkers).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def command_actions(subparsers: Subparsers, command: str, help: str) -> Subparsers:
    """``voxgate <command> ACTION``: the command's parser; its actions are added with `add_action`."""
    parser = subparsers.add_parser(command, help=help)
    return parser.add_subparsers(dest=f"{command}_action", required=True, metavar="ACTION")


def add_action(
    actions: Subparsers, name: str, action: Action, *, json: bool = True, **parser: Any
) -> argparse.ArgumentParser:
    """One action of a command, run through `handler`: it takes ``--database-url`` and, unless `json`
    is False, ``--json``; the caller adds its own arguments."""
    added = actions.add_parser(name, parents=common_options() if json else [database_option()], **parser)
    added.set_defaults(handler=handler(action))
    return added
