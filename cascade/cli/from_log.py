"""`cascade calibrate POLICY --from-log LOG [LOG ...]`: recalibrate on logged live traffic."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cascade.errors import InputError

__all__ = ["refuse_other_options", "run_calibrate_from_log"]


def _target(args: argparse.Namespace, loaded: Any) -> Any:
    """The target asked for, else the one the policy was calibrated for (its provenance)."""
    from cascade.evaluate import Target

    accuracy, cost = args.target_relative_accuracy, args.max_relative_cost
    confidence = args.confidence
    provenance = loaded.policy.provenance
    if accuracy is None and cost is None and provenance is not None:
        accuracy = provenance.target.get("relative_accuracy")
        cost = provenance.target.get("max_relative_cost")
        if confidence is None:
            confidence = provenance.confidence
    return Target(
        relative_accuracy=accuracy,
        max_relative_cost=cost,
        max_escalation=args.max_escalation,
        confidence=0.95 if confidence is None else confidence,
    )


def refuse_other_options(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, on in (
            ("--data", args.data is not None),
            ("--gears", args.gears),
            ("--cost served", args.cost == "served"),
            ("--target-relative-ndcg", args.target_relative_ndcg is not None),
        )
        if on
    ]
    if given:
        raise InputError(f"--from-log calibrates on the log's rows; it takes no {', '.join(given)}")


def run_calibrate_from_log(args: argparse.Namespace, loaded: Any) -> int:
    """``loaded``: the policy, its missing model files built."""
    from cascade.evaluate import calibrate_from_log, format_frontier, format_rows

    if loaded.policy.stages:
        raise InputError("--from-log recalibrates classification policies (routing), not stages")
    target = _target(args, loaded)
    result = calibrate_from_log(
        loaded, args.from_log, target=target, method=args.calibration, holdout=args.holdout,
        seed=args.seed, write=not args.dry_run,
        progress=None if args.no_progress else (lambda m: print(m, file=sys.stderr)),
    )  # fmt: skip
    calibration = result.calibration
    rows = result.rows
    met_after = (
        result.after is not None
        and target.relative_accuracy is not None
        and result.after.relative_accuracy >= target.relative_accuracy
    )
    if args.json:
        print(json.dumps({
            "met": calibration.met,
            "chosen": None if calibration.chosen is None else vars(calibration.chosen),
            "dataset": result.data_label,
            "split": result.split_label,
            "rows": len(rows.X),
            "labelled_by_feedback": rows.labelled,
            "labelled_by_tier": result.top,
            "top_tier_agrees_with_feedback": result.top_agreement,
            "skipped": rows.skipped,
            "versions": list(rows.versions),
            "held_back": {
                "rows": len(result.split.held_back),
                "serving": result.before.to_dict(),
                "recalibrated": None if result.after is None else result.after.to_dict(),
                "recalibrated_meets_target": met_after,
            },
            "notes": calibration.notes,
        }))  # fmt: skip
        return 0 if calibration.met else 1
    print(f"{loaded.policy.name} on {result.data_label}")
    print(
        f"labels: feedback on {rows.labelled:,} rows; the answer of tier '{result.top}' (run "
        "here on the logged inputs: the live audit's top-tier answers) on the rest"
    )
    if result.top_agreement is not None:
        print(f"tier '{result.top}' agrees with the feedback on {result.top_agreement:.2%} of "
              "the rows that have it")  # fmt: skip
    if rows.skipped:
        left = ", ".join(f"{why} {count:,}" for why, count in sorted(rows.skipped.items()))
        print(f"left out of the log: {left}")
    from cascade.serving import policy_hash

    current = policy_hash(loaded.policy)
    if rows.versions != (current,):
        print(f"note: the log's answers came from policy version(s) {', '.join(rows.versions)}; "
              f"the file is version {current} now, and its row below is the file's")  # fmt: skip
    print(f"\nPareto frontier on the {result.split_label}; * = chosen")
    print(format_frontier(calibration.frontier, chosen=calibration.chosen))
    for note in calibration.notes:
        print(f"note: {note}")
    held = len(result.split.held_back)
    check = [result.before, *([result.after] if result.after is not None else []),
             result.reference]  # fmt: skip
    print()
    print(format_rows(check, title=f"held-back check on {held:,} logged rows (labels as above)"))
    if result.after is None:
        print("\ntarget not met on the calibration part: the policy file is unchanged")
        return 1
    goal = target.relative_accuracy
    if goal is not None:

        def verdict(row: Any) -> str:
            return "meets" if row.relative_accuracy >= goal else "misses"

        before, after = result.before.relative_accuracy, result.after.relative_accuracy
        print(f"\ntarget relative accuracy {goal:g} on the held-back rows: serving "
              f"{before:.4f} ({verdict(result.before)}), "
              f"recalibrated {after:.4f} ({verdict(result.after)})")  # fmt: skip
    print(f"relative cost: serving {result.before.relative_cost:.3f}, recalibrated "
          f"{result.after.relative_cost:.3f}")  # fmt: skip
    written = "written to" if not args.dry_run else "not written (--dry-run):"
    print(f"thresholds {written} {args.policy}")
    return 0
