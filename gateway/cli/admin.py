"""The operator commands: ``voxgate migrate | tenant | key | policy | usage`` (`gateway.cli.command`
says how each runs and exits)."""

from __future__ import annotations

import argparse

from gateway.cli import alerts, costs, keys, migrate, policy, reconcile, tenants, usage


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate``, ``tenant``, ``key``, ``policy`` and ``usage`` to the ``voxgate`` command."""
    for group in (migrate, tenants, keys, policy, usage, alerts, costs):
        group.register(subparsers)
    reconcile.register(subparsers)  # under `costs`, after the group exists
