"""`cascade policy schema|validate`: policy files checked as the servers read them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_policy_commands", "run_policy"]

DEFAULT_SCHEMA = Path("policies") / "policy.schema.json"


def add_policy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="validate policy files, write their JSON Schema")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    schema = actions.add_parser(
        "schema",
        help="write the JSON Schema of policy files (editor completion and checks)",
    )
    schema.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_SCHEMA,
        help=f"where to write it (default: {DEFAULT_SCHEMA})",
    )
    validate = actions.add_parser(
        "validate",
        help="check policy files: schema, model files, ONNX inputs",
        description="Check each policy file as `cascade serve` would load it; print `ok` per "
        "valid file and every problem of the others as FILE:LINE field.path: problem.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    policy.set_defaults(run=run_policy)


def run_policy(args: argparse.Namespace) -> int:
    from cascade.errors import PolicyError
    from cascade.policy import read_policy, write_schema

    if args.policy_command == "schema":
        print(write_schema(args.out))
        return 0
    status = 0
    for file in args.files:
        try:
            policy = read_policy(file).policy
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        tiers = len(policy.tiers)
        kind = (
            f"routing {policy.routing.kind}"
            if policy.routing is not None
            else "ranking " + " -> ".join(s.name for s in policy.stages)
        )
        print(f"ok  {file} ({tiers} tier{'s' if tiers != 1 else ''}, {kind})")
    return status
