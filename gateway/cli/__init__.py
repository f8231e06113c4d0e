"""`voxgate` command line. Each command group registers its own sub-parsers.

A production install (`pip install voxgate`, no extras) runs every operator command: `serve`,
`migrate`, `tenant`, `key`, `policy`, `usage`. The development commands (`emulator`, `demo`)
need the dev extra; without it they are still listed and say what to install, one line.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

DEV_EXTRA_INSTALL = "pip install 'voxgate[dev]'"
_OWN_PACKAGES = frozenset({"gateway", "policies", "emulator", "migrations"})


def build_parser() -> argparse.ArgumentParser:
    from gateway import __version__
    from gateway.cli import admin as admin_cli
    from gateway.cli import run as run_cli

    parser = argparse.ArgumentParser(prog="voxgate", description="Realtime API gateway and cost-control proxy")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cli.register(sub)
    admin_cli.register(sub)
    emulator_cli = import_dev_module("emulator.cli")
    if isinstance(emulator_cli, ModuleType):
        emulator_cli.register(sub)
    else:
        _register_unavailable(sub, "emulator", "run a local emulator of the OpenAI Realtime API", emulator_cli)
    return parser


def import_dev_module(name: str) -> ModuleType | str:
    """Import `name`, or return the missing third-party module's name when a dev-only dependency
    (aiortc, av, pgserver...) is not installed. A missing module of voxgate's own is a bug: it raises."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing in _OWN_PACKAGES:
            raise
        return missing


def needs_dev_extra(command: str, missing: str) -> str:
    """The one line a dev-only command prints when the dev extra is not installed."""
    return f"voxgate {command} needs the dev extra: {DEV_EXTRA_INSTALL} (module {missing!r} is not installed)"


def _register_unavailable(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str, summary: str, missing: str
) -> None:
    # Takes any arguments, so `voxgate emulator --port 1` explains the extra instead of an argparse error.
    stub = sub.add_parser(command, help=f"{summary} (needs the dev extra)", add_help=False)
    stub.set_defaults(handler=functools.partial(_report_unavailable, command, missing), takes_any_arguments=True)


def _report_unavailable(command: str, missing: str, _: argparse.Namespace) -> int:
    print(needs_dev_extra(command, missing), file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
