"""`cascade` command line: one entry point for everything a user does.

cascade models build [DATASET | --data FILE --label-column COL] [--out DIR] [options]
cascade models card DIR [--json]
cascade datasets
cascade policy schema [--out policies/policy.schema.json]
cascade policy validate FILE...
cascade evaluate POLICY [--split test] [--json]    cascade calibrate POLICY [--target-...]
cascade serve [--runtime ray|edge] POLICY...        cascade reload POLICY...
cascade config POLICY... [--package ZIP | --kuberay] [--ingress-replicas N] [-o FILE]
cascade plan POLICY --qps N [--json]               cascade footprint POLICY... [--budget-mb MB]
cascade bench URL --model NAME [--rate RPS | --ramp START:END] [--duration S] [options]
cascade profile URL --model NAME [--rows N] [--requests N] [--concurrency C] [--binary]
cascade shadow URL [CANDIDATE] [--model NAME] [--sample-rate R] [--report | --stop]
cascade promote URL --model NAME [--write PATH]
cascade status URL [--model NAME] [--token-file PATH] [--json]

One module per command group; each registers its parsers with the function that runs them
(``set_defaults(run=...)``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cascade.cli.bench import add_bench_command
from cascade.cli.config import add_config_command
from cascade.cli.evaluate import add_evaluate_commands
from cascade.cli.footprint import add_footprint_command
from cascade.cli.models import add_models_commands
from cascade.cli.plan import add_plan_command
from cascade.cli.policy import add_policy_commands
from cascade.cli.profile import add_profile_command
from cascade.cli.serve import add_serve_command
from cascade.cli.shadow import add_shadow_commands
from cascade.cli.status import add_status_command
from cascade.errors import CascadeError

__all__ = ["build_parser", "main"]

_TRAINING_STACK = frozenset(
    {"sklearn", "scipy", "skl2onnx", "onnx", "pandas", "tqdm", "threadpoolctl", "ruamel",
     "matplotlib"}
)  # fmt: skip
"""The ``[train]`` extra's modules: a command that needs one says how to install it."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line's parser."""
    parser = argparse.ArgumentParser(
        prog="cascade",
        description="Route requests through tiny/small/large model tiers by a policy file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_models_commands(commands)
    add_evaluate_commands(commands)
    add_serve_command(commands)
    add_footprint_command(commands)
    add_config_command(commands)
    add_plan_command(commands)
    add_bench_command(commands)
    add_profile_command(commands)
    add_policy_commands(commands)
    add_shadow_commands(commands)
    add_status_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except CascadeError as exc:
        print(f"cascade: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _TRAINING_STACK:
            raise
        print(f"cascade: error: `cascade {args.command}` needs the training stack, which a "
              f'serving install leaves out: pip install "cascade[train]" ({exc})',
              file=sys.stderr)  # fmt: skip
        return 1
