"""`cascade evaluate` and `cascade calibrate`: parsers and handlers."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from cascade.errors import InputError

__all__ = ["add_data_arguments", "add_evaluate_commands", "run_calibrate", "run_evaluate"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


_SPLIT_DATA = (
    "labelled table (CSV/Parquet) instead of the policy's bundled dataset; split 60/20/20 "
    "like `models build --data`"
)


def add_data_arguments(parser: argparse.ArgumentParser, *, data_help: str = _SPLIT_DATA) -> None:
    """The policy and ``--data FILE --label-column COL [--text-column COL]``.

    Example::

        add_data_arguments(parser, data_help="labelled table, scored whole")
    """
    parser.add_argument("policy", type=Path, help="policy file (YAML)")
    parser.add_argument("--data", type=Path, help=data_help)
    parser.add_argument("--label-column", help="the label column of --data")
    parser.add_argument("--text-column", help="the text column of --data (text policies)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """What a served request costs: its size, the runtime and where its overheads come from."""
    group = parser.add_argument_group("served cost (model time at the batches served, plus "
                                      "the runtime's work per request and per hop)")  # fmt: skip
    group.add_argument("--rows-per-request", type=int, default=1, metavar="R",
                       help="rows in one request (default 1)")  # fmt: skip
    group.add_argument("--runtime", choices=("ray", "edge"), default="ray",
                       help="whose serving overheads (default ray)")  # fmt: skip
    group.add_argument("--overheads", type=Path, default=None, metavar="FILE",
                       help="served_cost.json of benchmarks/served_cost.py (default: "
                       "benchmarks/results/served_cost.json when it exists, else fallback "
                       "figures)")  # fmt: skip


def cost_model_of(args: argparse.Namespace, loaded: Any, tiers: Any) -> Any:
    """The served-cost model the cost arguments describe, for ``loaded``'s tiers."""
    from cascade.evaluate._served_cost import CostModel, read_overheads

    if args.rows_per_request < 1:
        raise InputError(f"--rows-per-request must be >= 1, got {args.rows_per_request}")
    overheads = read_overheads(args.overheads)
    if args.runtime not in overheads:
        raise InputError(f"no overheads measured for runtime {args.runtime!r}")
    return CostModel.for_policy(loaded, tiers, rows_per_request=args.rows_per_request,
                                overheads=overheads[args.runtime])  # fmt: skip


def _cost_note(model: Any) -> str:
    o = model.overheads
    return (f"served cost: {model.rows} row(s)/request on {o.runtime}; serving work "
            f"{o.request_us:.0f} + {o.request_us_per_row:.1f}/row µs per request, "
            f"{o.hop_us:.0f} + {o.hop_us_per_row:.1f}/row µs per hop ({o.source})")  # fmt: skip


def add_evaluate_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="replay labelled data through a policy, beside always-tiny/small/large",
        description="Replay labelled rows through the policy with the serving engine and "
        "in-process ONNX tiers; print accuracy, cost and escalation beside always-<tier>. "
        "A --data file is scored whole unless --split asks for a part of it; the policy's "
        "bundled dataset is scored on its test split.",
    )
    add_data_arguments(
        evaluate,
        data_help="labelled table (CSV/Parquet) instead of the policy's bundled dataset; "
        "every row is scored unless --split is given",
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "calibration", "train"),
        help="score only this part of the seeded, stratified 60/20/20 split (as `models build "
        "--data` splits a file); default: all of --data, else the bundled dataset's test "
        "split (ranking policies: their test split)",
    )
    evaluate.add_argument("--json", action="store_true", help="one JSON object per row")
    add_cost_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)
    ranking = evaluate.add_argument_group("ranking policies (stages)")
    ranking.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also evaluate these shortlist sizes (the frontier over N)",
    )
    ranking.add_argument("--max-users", type=int, metavar="U",
                         help="movielens: a seeded sample of U users (default: all)")  # fmt: skip

    calibrate = commands.add_parser(
        "calibrate",
        help="fit a policy's thresholds on the calibration split and write them back",
        description="Fit thresholds (and confidence calibration) on the calibration split "
        "with a statistical margin, write them into the policy file (comments kept) with "
        "provenance, print the Pareto frontier and save it as a PNG.",
    )
    add_data_arguments(
        calibrate,
        data_help="labelled table (CSV/Parquet) instead of the policy's bundled dataset; "
        "thresholds are fitted on its calibration split (60/20/20 like `models build --data`)",
    )
    calibrate.add_argument(
        "--target-relative-accuracy",
        type=_fraction,
        help="accuracy relative to always-large to guarantee, e.g. 0.995",
    )
    calibrate.add_argument(
        "--max-relative-cost",
        type=_positive,
        help="cost relative to always-large not to exceed, e.g. 0.35",
    )
    calibrate.add_argument(
        "--max-escalation",
        type=_fraction,
        help="largest fraction of requests escalated past the first tier",
    )
    calibrate.add_argument(
        "--confidence",
        type=float,
        default=None,
        help="confidence of the statistical margin (default 0.95; with --from-log and no "
        "target given: the policy's provenance's)",
    )
    calibrate.add_argument(
        "--calibration",
        choices=("temperature", "isotonic", "none"),
        default="temperature",
        help="confidence calibration (default temperature)",
    )
    calibrate.add_argument(
        "--png", type=Path, help="frontier plot (default: beside the policy, NAME.frontier.png)"
    )
    calibrate.add_argument(
        "--target-relative-ndcg",
        type=_fraction,
        help="ranking policies: NDCG@10 relative to fine-only to reach, e.g. 0.99",
    )
    calibrate.add_argument("--max-users", type=int, metavar="U",
                           help="movielens: a seeded sample of U users (default: all)")  # fmt: skip
    calibrate.add_argument("--dry-run", action="store_true", help="do not write the policy")
    calibrate.add_argument("--reference-only", action="store_true",
                           help="write only provenance.reference (the drift reference of the "
                           "live audit) for the thresholds as they are")  # fmt: skip
    calibrate.add_argument("--cost", choices=("model", "served"), default="model",
                           help="what the cheapest certified setting minimises: model "
                           "(the cards' per-row cost at batch 256, default) or served "
                           "(requests of --rows-per-request on --runtime)")  # fmt: skip
    add_cost_arguments(calibrate)
    calibrate.add_argument("--json", action="store_true", help="print the result as JSON")
    gears = calibrate.add_argument_group(
        "degradation gears (--gears: plan gears instead of fitting thresholds)"
    )
    gears.add_argument("--gears", action="store_true",
                       help="replay candidate gears on the calibration split, choose a ladder "
                       "and write it into the policy's `gears`")  # fmt: skip
    gears.add_argument(
        "--capacity",
        type=_positive,
        metavar="RPS",
        help="measured requests/s of the full-quality service (cascade bench)",
    )
    gears.add_argument("--deadline-ms", type=_positive, metavar="MS",
                       help="the deadline requests carry")  # fmt: skip
    live = calibrate.add_argument_group(
        "live traffic (--from-log: recalibrate on the policy's answer log)"
    )
    live.add_argument(
        "--from-log",
        type=Path,
        nargs="+",
        metavar="LOG",
        help="answer log files or folders (the policy's `log` section): rows are labelled by "
        "feedback, else by the top tier's answer run here on the logged input; thresholds "
        "are fitted on part of them and checked on the rest. Without a target, the policy's "
        "provenance's is kept",
    )
    live.add_argument(
        "--holdout",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share of the logged rows held back for the check (default 0.5)",
    )
    live.add_argument(
        "--seed", type=int, default=0, help="seed of the calibration / held-back split (default 0)"
    )
    calibrate.set_defaults(subparser=calibrate, run=run_calibrate)


def _labelled(args: argparse.Namespace, loaded: Any, split: Any) -> Any:
    """The rows of ``split`` (``None``: all of --data) as ``LabelledRows``: from --data or
    the policy's dataset."""
    from cascade.evaluate._data import labelled_rows

    return labelled_rows(
        loaded,
        split=split,
        data=args.data,
        label_column=args.label_column,
        text_column=args.text_column,
    )


def _prepare(args: argparse.Namespace) -> Any:
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy

    loaded = read_policy(args.policy)
    built = ensure_models(loaded, progress=not args.no_progress)
    if built:
        print(
            f"built {len(built)} missing model files for {loaded.policy.dataset}", file=sys.stderr
        )
    return loaded


def _ranking_rows(results: Any) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "n": r.n, "ndcg_at_10": r.ndcg_at_10, "relative_ndcg": r.relative_ndcg,
         "recall_at_10": r.recall_at_10, "relative_cost": r.relative_cost,
         "queries": r.n_queries}
        for r in results
    ]  # fmt: skip


def _evaluate_ranking(args: argparse.Namespace, loaded: Any) -> int:
    from cascade.evaluate._ranking import evaluate_ranking, ranking_queries
    from cascade.ranking.metrics import format_results

    if args.label_column:
        raise InputError("--label-column does not apply to a ranking policy")
    queries, label = ranking_queries(
        loaded, split=args.split or "test", data=args.data, max_users=args.max_users
    )
    results = evaluate_ranking(loaded, queries, n_values=tuple(args.n))
    if args.json:
        for row in _ranking_rows(results):
            print(json.dumps(row))
        return 0
    print(f"{loaded.policy.name} on {label} ({results[0].n_queries} queries with a relevant item)")
    print(format_results(results))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cascade.evaluate import Evaluator, format_rows

    loaded = _prepare(args)
    if loaded.policy.stages:
        return _evaluate_ranking(args, loaded)
    # A user's file is scored whole unless a split is asked for; a bundled dataset's tiers
    # were trained on its train split, so it is scored on its test split.
    split = args.split if args.split is not None or args.data is not None else "test"
    data = _labelled(args, loaded, split)
    evaluator = Evaluator(loaded)
    cost_model = cost_model_of(args, loaded, evaluator.tiers)
    rows = evaluator.evaluate(data.X, data.y, cost_model=cost_model)
    if args.json:
        for row in rows:
            print(json.dumps({**row.to_dict(), **data.to_dict(),
                              "served_cost": _cost_note(cost_model)}))  # fmt: skip
    else:
        print(format_rows(rows, title=f"{loaded.policy.name} on {data.description}"))
        print(_cost_note(cost_model))
    return 0


def run_gears(args: argparse.Namespace) -> int:
    from cascade._table import table
    from cascade.evaluate import edit_policy_file, plan_gears
    from cascade.policy import parse_policy

    if args.capacity is None or args.deadline_ms is None:
        args.subparser.error("--gears needs --capacity RPS and --deadline-ms MS")
    loaded = _prepare(args)
    data = _labelled(args, loaded, "calibration")
    plan = plan_gears(
        loaded, data.X, data.y, capacity_rps=args.capacity, deadline_ms=args.deadline_ms
    )
    chosen = {c.name for c in plan.chosen}
    rows = [[c.name, f"{c.relative_cost:.3f}", f"{c.accuracy:.4f}", "*" if c.name in chosen
             else ""] for c in (plan.full, *plan.candidates)]  # fmt: skip
    print(f"candidate gears replayed on {data.description}; * = chosen")
    print(table(["gear", "cost vs normal", "accuracy", ""], rows))
    for note in plan.notes:
        print(f"note: {note}")
    if args.json:
        print(json.dumps({"gears": list(plan.gears), "notes": list(plan.notes),
                          **data.to_dict()}))  # fmt: skip
    if not plan.gears or args.dry_run:
        print(f"\ngears not written{' (--dry-run)' if args.dry_run else ''}: {list(plan.gears)}")
        return 0 if plan.gears else 1

    def edit(document: Any) -> None:
        document["gears"] = [dict(g) for g in plan.gears]

    edit_policy_file(args.policy, edit, validate=lambda text: parse_policy(
        text, source=str(args.policy), base_dir=args.policy.parent))  # fmt: skip
    print(f"\ngears written to {args.policy}:")
    for gear in plan.gears:
        print(f"  {gear}")
    return 0


def _calibrate_ranking(args: argparse.Namespace) -> int:
    from cascade.evaluate._ranking import calibrate_ranking, ranking_queries

    if args.target_relative_ndcg is None:
        raise InputError("a ranking policy is calibrated with --target-relative-ndcg, e.g. 0.99")
    loaded = _prepare(args)
    queries, label = ranking_queries(
        loaded, split="calibration", data=args.data, max_users=args.max_users
    )
    result = calibrate_ranking(
        loaded, queries, target_relative_ndcg=args.target_relative_ndcg, label=label,
        confidence=args.confidence, write=not args.dry_run,
    )  # fmt: skip
    if args.json:
        print(json.dumps({
            "met": result.chosen is not None,
            "chosen": None if result.chosen is None else
            {"min_score": result.chosen[0],
             "lower_bound": result.lower_bounds[result.rows.index(result.chosen)],
             **_ranking_rows([result.chosen[1]])[0]},
            "points": [{"min_score": cut, "lower_bound": bound, **row}
                       for (cut, _), bound, row in zip(
                           result.rows, result.lower_bounds,
                           _ranking_rows([r for _, r in result.rows]), strict=True)],
        }))  # fmt: skip
        return 0 if result.chosen is not None else 1
    print(f"{loaded.policy.name}: N (and filter cut) on {label}; target NDCG@10 >= "
          f"{result.target:g} x fine-only's at confidence {result.confidence:g}")  # fmt: skip
    from cascade._table import table

    points = [
        [("none" if cut is None else f"{cut:.4f}"), str(r.n), f"{r.relative_ndcg:.4f}",
         f"{bound:.4f}", f"{r.recall_at_10:.3f}", f"{r.relative_cost:.4f}",
         "*" if result.chosen is not None and result.chosen[1] is r else ""]
        for (cut, r), bound in zip(result.rows, result.lower_bounds, strict=True)
    ]  # fmt: skip
    print(table(["filter min_score", "N", "rel NDCG", f"lower bound ({result.confidence:g})",
                 "recall@10", "rel cost", "chosen"], points))  # fmt: skip
    if result.chosen is None:
        print("\ntarget not met: the policy file is unchanged")
        return 1
    cut, row = result.chosen
    written = "written to" if not args.dry_run else "not written (--dry-run):"
    print(f"\nchosen: N={row.n}, filter min_score={cut}, relative NDCG {row.relative_ndcg:.4f} "
          f"at relative cost {row.relative_cost:.4f}; {written} {args.policy}")  # fmt: skip
    return 0


def _write_reference(args: argparse.Namespace) -> int:
    from cascade.evaluate import Evaluator, confidence_reference, write_reference

    loaded = _prepare(args)
    data = _labelled(args, loaded, "calibration")
    if args.dry_run:
        reference = confidence_reference(loaded.policy, Evaluator(loaded), data.X)
    else:
        reference = write_reference(loaded, data.X)
    if reference is None:
        print("complexity routing: no confidence to take a drift reference of", file=sys.stderr)
        return 1
    written = "not written (--dry-run)" if args.dry_run else f"written to {args.policy}"
    print(f"drift reference of tier {reference['tier']} ({reference['measure']}) on "
          f"{data.description}: {len(reference['shares'])} bins; {written}")  # fmt: skip
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    if args.from_log:
        from cascade.cli.from_log import refuse_other_options, run_calibrate_from_log

        refuse_other_options(args)
        return run_calibrate_from_log(args, _prepare(args))
    if args.confidence is None:
        args.confidence = 0.95
    if args.gears:
        return run_gears(args)
    if args.reference_only:
        return _write_reference(args)

    from cascade.policy import read_policy

    if read_policy(args.policy).policy.stages:
        return _calibrate_ranking(args)
    from cascade.evaluate import (
        Evaluator,
        Point,
        Target,
        calibrate_policy,
        format_frontier,
        format_rows,
        plot_frontier,
    )

    target = Target(
        relative_accuracy=args.target_relative_accuracy,
        max_relative_cost=args.max_relative_cost,
        max_escalation=args.max_escalation,
        confidence=args.confidence,
    )
    loaded = _prepare(args)
    data = _labelled(args, loaded, "calibration")
    X, y = data.X, data.y
    evaluator = Evaluator(loaded)
    cost_model = cost_model_of(args, loaded, evaluator.tiers)
    result = calibrate_policy(
        loaded, X, y, target=target, method=args.calibration,
        data_label=str(args.data) if args.data is not None else str(loaded.policy.dataset),
        evaluator=evaluator, write=not args.dry_run,
        progress=None if args.no_progress else (lambda m: print(m, file=sys.stderr)),
        cost_model=cost_model if args.cost == "served" else None,
    )  # fmt: skip
    png = args.png or args.policy.with_name(f"{args.policy.stem}.frontier.png")
    baselines = []
    for row in evaluator.evaluate(X, y, cost_model=cost_model, with_policy=False):
        cost = row.served_relative_cost if args.cost == "served" else row.relative_cost
        baselines.append(Point(cost or 0.0, row.relative_accuracy, label=row.name))
    plot_frontier(
        png, points=result.points, front=result.frontier, chosen=result.chosen,
        baselines=baselines, target=target.relative_accuracy,
        title=f"{loaded.policy.name}: {loaded.policy.routing.kind} routing on {data.label}",
        # the oracle's line is in model cost; a served-cost plot has no such straight line
        oracle=evaluator.oracle_curve(X, y) if args.cost != "served" else (),
    )  # fmt: skip
    if args.json:
        print(json.dumps({
            "met": result.met,
            "chosen": None if result.chosen is None else vars(result.chosen),
            "loss_upper_bound": result.bound,
            "loss_allowed": result.allowed_loss,
            "notes": result.notes,
            "png": str(png),
            **data.to_dict(),
        }))  # fmt: skip
        return 0 if result.met else 1
    print(f"Pareto frontier on {data.description}; * = chosen")
    print(format_frontier(result.frontier, chosen=result.chosen))
    for note in result.notes:
        print(f"note: {note}")
    if result.chosen is None:
        print("\ntarget not met: the policy file is unchanged")
        print(f"frontier plot: {png}")
        return 1
    if result.bound is not None and result.allowed_loss is not None:
        print(f"\naccuracy lost vs always-large: upper bound {result.bound:.5f} at confidence "
              f"{target.confidence:g} (allowed {result.allowed_loss:.5f})")  # fmt: skip
    written = "written to" if not args.dry_run else "not written (--dry-run):"
    print(f"thresholds {written} {args.policy}")
    print(f"frontier plot: {png}")
    if not args.dry_run:
        reloaded = read_policy(args.policy)
        test = _labelled(args, reloaded, "test")
        check = Evaluator(reloaded, tiers=evaluator.tiers)
        on_calibration = replace(
            check.evaluate(X, y, cost_model=cost_model)[0],
            name=f"{reloaded.policy.name} (calibration)",
        )
        print()
        title = f"the calibrated policy on {data.description}, then on {test.description}"
        rows = [on_calibration, *check.evaluate(test.X, test.y, cost_model=cost_model)]
        print(format_rows(rows, title=title))
        print(_cost_note(cost_model))
    return 0
