"""`cascade plan`: replicas and CPUs per tier for a request rate (capacity planning)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from cascade.cli._types import count
from cascade.cli.evaluate import add_data_arguments

__all__ = ["add_plan_command", "format_plan", "run_plan"]


def _number(low: float, *, inclusive: bool, high: float = math.inf) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value >= low if inclusive else value > low) and value <= high
        if not ok:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            upper = f" and <= {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"must be a number {bound}{upper}, got {text!r}")
        return value

    return parse


def add_plan_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:

    plan = commands.add_parser(
        "plan",
        help="replicas and CPUs per tier for a request rate (capacity planning)",
        description="Turn the share of rows reaching each tier (the policy replayed on a "
        "labelled split), the model cards' per-row costs at each tier's batch size and the "
        "serving overheads into CPU cores, replicas and an autoscaling range per tier. The "
        "overheads default to what `python benchmarks/served_cost.py` measured here "
        "(benchmarks/results/served_cost.json, or --overheads FILE); without a measurement, "
        "to fallback figures, and the plan says which.",
    )
    add_data_arguments(plan)
    plan.add_argument("--qps", type=_number(0, inclusive=False), required=True, metavar="N",
                      help="requests per second to plan for")  # fmt: skip
    plan.add_argument("--rows-per-request", type=count, default=1, metavar="R",
                      help="rows in one request (default 1)")  # fmt: skip
    plan.add_argument("--split", choices=("calibration", "test", "train"), default="calibration",
                      help="split the escalation is measured on (default calibration)")  # fmt: skip
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    sizing = plan.add_argument_group("sizing")
    sizing.add_argument("--utilisation", type=_number(0, inclusive=False, high=1), default=0.7,
                        help="target busy share of each replica's CPUs (default 0.7)")  # fmt: skip
    sizing.add_argument("--cpus-per-replica", type=_number(0, inclusive=False), default=1.0,
                        metavar="N", help="cores one replica keeps busy (default 1: tiers "
                        "run onnxruntime with one intra-op thread)")  # fmt: skip
    sizing.add_argument("--ingress-cpu-ms", type=_number(0, inclusive=True), default=None,
                        metavar="MS", help="server CPU per request at the ingress "
                        "(default: the measured Ray figure, see --overheads)")  # fmt: skip
    sizing.add_argument("--hop-cpu-ms", type=_number(0, inclusive=True), default=None,
                        metavar="MS", help="server CPU per call to a deployment tier "
                        "(default: the measured Ray figure)")  # fmt: skip
    sizing.add_argument("--overheads", type=Path, default=None, metavar="FILE",
                        help="served_cost.json of benchmarks/served_cost.py (default: "
                        "benchmarks/results/served_cost.json when it exists)")  # fmt: skip
    sizing.add_argument("--coalesce-ms", type=_number(0, inclusive=True), default=2.0,
                        metavar="MS", help="the ingress's coalescing window, as "
                        "`cascade serve --coalesce-ms` (default 2)")  # fmt: skip
    plan.set_defaults(run=run_plan)


def _replicas(replicas: int | None, autoscaling: tuple[int, int] | None) -> tuple[str, str]:
    if replicas is None:
        return "in ingress", "-"
    span = "-" if autoscaling is None else f"{autoscaling[0]}–{autoscaling[1]}"
    return str(replicas), span


def format_plan(plan: Any) -> str:
    """The plan as a table, its totals, assumptions and notes.

    Example::

        print(format_plan(plan_capacity(loaded, 500, reach=reach)))
    """
    from cascade._table import table

    a = plan.assumptions
    rows = []
    for t in (*plan.tiers, plan.ingress):
        name = t.name if t.placement != "ingress" else "ingress (+ inline)"
        us = f"{t.us_per_row:.2f}"
        rows.append([name, t.placement if t.placement != "ingress" else "-",
                     f"{t.reach:.1%}", f"{t.rows_per_s:.1f}", f"{t.batch:.1f}", us,
                     f"{t.cpu_cores:.3f}", *_replicas(t.replicas, t.autoscaling)])  # fmt: skip
    header = ["tier", "placement", "share reaching", "rows/s", "batch", "µs/row", "CPU cores",
              "replicas", "autoscaling"]  # fmt: skip
    on = f" (share reaching measured on {plan.reach_measured_on})" if plan.reach_measured_on else ""
    lines = [
        f"{plan.policy} at {plan.qps:g} requests/s × {a.rows_per_request} row(s){on}",
        table(header, rows),
        "",
        f"total: {plan.total_cpu_cores:.2f} CPU cores busy; {plan.total_replicas} replicas × "
        f"{a.cpus_per_replica:g} CPU = {plan.total_cpus:g} CPUs to reserve",
        f"assumptions: {a.ingress_cpu_ms:g} ms CPU per request at the ingress, "
        f"{a.hop_cpu_ms:g} ms per call to a deployment tier ({a.overheads_source});\n  "
        "coalescing "
        f"{a.coalesce_ms:g} ms, replicas at {a.utilisation:.0%} utilisation, no cache hits, "
        f"normal gear;\n  autoscaling = the replicas needed at {a.autoscale_low:.0%} and at "
        f"{a.autoscale_high:g}× this rate",
    ]
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    from cascade.errors import PolicyError
    from cascade.evaluate import ensure_models, labelled_split
    from cascade.evaluate._plan import (
        measure_reach,
        plan_capacity,
        scorer_per_row_us,
        tier_cards,
    )
    from cascade.evaluate._served_cost import read_overheads
    from cascade.policy import read_policy

    loaded = read_policy(args.policy)
    if loaded.policy.routing is None:
        raise PolicyError(
            f"{args.policy}: a ranking policy (stages); `cascade plan` covers classification "
            "policies (routing)"
        )
    built = ensure_models(loaded, progress=not args.no_progress)
    if built:
        print(f"built {len(built)} missing model files for {loaded.policy.dataset}",
              file=sys.stderr)  # fmt: skip
    tier_cards(loaded)  # a tier without a card fails now, not after the replay
    X, _, label = labelled_split(
        loaded,
        split=args.split,
        data=args.data,
        label_column=args.label_column,
        text_column=args.text_column,
    )
    ray = read_overheads(args.overheads)["ray"]
    given = args.ingress_cpu_ms is not None or args.hop_cpu_ms is not None
    plan = plan_capacity(
        loaded,
        args.qps,
        reach=measure_reach(loaded, X),
        reach_measured_on=f"{label}, {len(X)} rows",
        scorer_us=scorer_per_row_us(loaded),
        rows_per_request=args.rows_per_request,
        utilisation=args.utilisation,
        cpus_per_replica=args.cpus_per_replica,
        ingress_cpu_ms=args.ingress_cpu_ms
        if args.ingress_cpu_ms is not None
        else ray.request(args.rows_per_request) / 1000,
        hop_cpu_ms=args.hop_cpu_ms
        if args.hop_cpu_ms is not None
        else ray.hop(args.rows_per_request) / 1000,
        coalesce_ms=args.coalesce_ms,
        overheads_source="given on the command line" if given else ray.source,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0
