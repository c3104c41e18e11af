"""`cascade footprint`: what serving policies on the edge costs in memory and disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_footprint_command", "run_footprint"]


def add_footprint_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    footprint = commands.add_parser(
        "footprint",
        help="memory and disk each tier needs, and the edge process's RSS",
        description="Per tier: the model file's size and the memory its loaded session adds "
        "(RSS delta). Then a fresh edge process (as `cascade serve --runtime edge` builds it) "
        "answers one request per policy and reports its RSS. Remote tiers are not called. "
        "Missing models of bundled datasets are built first.",
    )
    footprint.add_argument("policies", nargs="+", type=Path, help="policy files")
    footprint.add_argument("--budget-mb", type=float, default=None, metavar="MB",
                           help="exit 1 when the edge process's RSS exceeds MB")  # fmt: skip
    footprint.add_argument("--json", action="store_true", help="print one JSON object")
    footprint.set_defaults(run=run_footprint)


def run_footprint(args: argparse.Namespace) -> int:
    from cascade.bench import format_footprint, measure_footprint

    found = measure_footprint([str(p) for p in args.policies], budget_mb=args.budget_mb)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print(format_footprint(found))
    return 1 if found.within_budget is False else 0
