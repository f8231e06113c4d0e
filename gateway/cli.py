"""`voxgate` command line. Each command group registers its own sub-parsers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    import gateway.emulator.cli as emulator_cli
    from gateway import admin_cli, run_cli

    parser = argparse.ArgumentParser(prog="voxgate", description="Realtime API gateway and cost-control proxy")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_cli.register(sub)
    admin_cli.register(sub)
    emulator_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
