"""Cascade trade-off benchmark: the shipped confidence cascades against other routings.

    python benchmarks/cascade_tradeoff.py [--datasets covertype digits] [--out benchmarks/results]

Per dataset, on the TEST split, side by side:

- the shipped calibrated confidence policy ``policies/DATASET.yaml``, loaded as is;
- complexity routing (a trained "the cheapest tier will be wrong" scorer picks the tier up
  front; bands tiny/small/large, and small/large for covertype), a three-tier confidence
  chain tiny -> small -> large with both thresholds fitted jointly (where the shipped chain
  has two tiers) and speculative routing (the shipped chain's first tier races large),
  each calibrated here on the calibration
  split to the shipped policy's own target and confidence (its ``provenance``), then written
  as a policy file into a temporary directory and evaluated from that file;
- always-tiny / always-small / always-large;
- the oracle (labels known: the shipped chain's first tier answers, and just enough of the
  rows that large fixes escalate to reach the target), and per configuration the share of
  the oracle's saving it captures, (1 − rel cost) / (1 − oracle rel cost), for those that
  meet the target on test.

Then one line per dataset against the issue's goal for the shipped cascade (relative
accuracy and cost against always-large, both measured in this run). Tables and the summary
go to stdout, progress to stderr, everything to ``OUT/cascade_tradeoff.json``.

Calibrating a complexity policy trains its scorer into ``policies/models/DATASET/``
(``bench-DATASET-complexity*.complexity.onnx``, beside the tier files; git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from cascade.evaluate import (
    CalibrationResult,
    EvalRow,
    Evaluator,
    Target,
    calibrate_policy,
    calibration_provenance,
    ensure_models,
    format_rows,
    labelled_split,
    oracle,
)
from cascade.policy import (
    ComplexityRouting,
    ConfidenceRouting,
    Policy,
    PolicyFile,
    Provenance,
    parse_policy,
    read_policy,
)

POLICIES = Path(__file__).resolve().parents[1] / "policies"
DATASETS = ("covertype", "digits")


@dataclass(frozen=True)
class Goal:
    """The issue's acceptance goal for a dataset's shipped confidence cascade."""

    relative_accuracy: float  # at least this share of always-large accuracy
    max_relative_cost: float  # at most this share of always-large cost


GOALS = {
    "covertype": Goal(relative_accuracy=0.995, max_relative_cost=0.35),
    "digits": Goal(relative_accuracy=0.995, max_relative_cost=0.20),
}


@dataclass
class Variant:
    """A routing calibrated in this run; ``loaded`` is None when the target was not met."""

    name: str
    kind: str
    result: CalibrationResult
    loaded: PolicyFile | None


def _say(dataset: str, message: str) -> None:
    print(f"[{dataset}] {message}", file=sys.stderr, flush=True)


def _target(loaded: PolicyFile) -> Target:
    provenance = loaded.policy.provenance
    if provenance is None:
        raise SystemExit(
            f"{loaded.path}: no provenance, so no calibration target to match; calibrate it "
            f"first: cascade calibrate {loaded.path} --target-relative-accuracy 0.995"
        )
    return Target(**provenance.target, confidence=provenance.confidence)


def _method(loaded: PolicyFile) -> str:
    """The confidence calibration the shipped chain uses, so variants fit theirs alike."""
    routing = loaded.policy.routing
    assert isinstance(routing, ConfidenceRouting)
    first = routing.chain[0].calibration
    return "none" if first is None else first.method


def _variant_routings(shipped: Policy) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, routing section before calibration) of every variant of ``shipped``."""
    routing = shipped.routing
    assert isinstance(routing, ConfidenceRouting)
    cheap = routing.chain[0].tier

    def complexity(tiers: list[str]) -> dict[str, Any]:
        # Placeholder scorer and bands: calibration trains the one and fits the others.
        bands: list[dict[str, Any]] = [
            {"tier": tier, "below": round((i + 1) / len(tiers), 3)} for i, tier in enumerate(tiers)
        ]
        del bands[-1]["below"]
        scorer = {"name": "onnx", "model": shipped.tiers[tiers[0]].model}
        return {"kind": "complexity", "scorer": scorer, "bands": bands}

    name = f"bench-{shipped.name}"
    variants = [(f"{name}-complexity", "complexity", complexity(["tiny", "small", "large"]))]
    if shipped.name == "covertype":
        variants.append((f"{name}-complexity2", "complexity", complexity(["small", "large"])))
    # three tiers calibrated jointly (issue 19): does a tier in front of the shipped pair pay?
    chain3 = [t for t in ("tiny", "small", "large") if t in shipped.tiers]
    if len(chain3) == 3 and len(routing.chain) == 2:
        steps: list[dict[str, Any]] = [{"tier": t, "threshold": 0.9} for t in chain3[:-1]]
        variants.append(
            (
                f"{name}-chain3",
                "confidence",
                {"kind": "confidence", "measure": routing.measure,
                 "chain": [*steps, {"tier": chain3[-1]}]},
            )
        )  # fmt: skip
    variants.append(
        (
            f"{name}-speculative",
            "speculative",
            {"kind": "speculative", "cheap": cheap, "expensive": "large", "threshold": 0.9},
        )
    )
    return variants


def _written_policy(
    policy: Policy, *, base_dir: Path, provenance: Provenance, path: Path
) -> PolicyFile:
    """Write ``policy`` to ``path`` with absolute model paths into ``base_dir``; load it back."""
    tiers = {
        name: tier.model_copy(update={"model": str(base_dir / tier.model)})
        for name, tier in policy.tiers.items()
    }
    routing = policy.routing
    if isinstance(routing, ComplexityRouting) and routing.scorer.model is not None:
        scorer = routing.scorer.model_copy(update={"model": str(base_dir / routing.scorer.model)})
        routing = routing.model_copy(update={"scorer": scorer})
    fitted = policy.model_copy(
        update={
            "allow_outside_paths": True,
            "tiers": tiers,
            "routing": routing,
            "provenance": provenance,
        }
    )
    document = fitted.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    path.write_text(
        f"# Written by {Path(__file__).name}: calibrated on {provenance.dataset}.\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return read_policy(path)


def calibrate_variant(
    shipped: PolicyFile,
    name: str,
    kind: str,
    routing: dict[str, Any],
    *,
    X: Any,
    y: Any,
    data_label: str,
    target: Target,
    out_dir: Path,
) -> Variant:
    """Calibrate one variant of ``shipped`` on (X, y) and write it into ``out_dir``."""
    dataset = shipped.policy.dataset or shipped.policy.name
    document = {
        "name": name,
        "description": f"{kind} routing over the tiers of {shipped.policy.name} (benchmark)",
        "dataset": shipped.policy.dataset,
        "tiers": {
            tier: spec.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
            for tier, spec in shipped.policy.tiers.items()
        },
        "routing": routing,
    }
    # The search runs on the policy in memory with the shipped policies/ folder as its base:
    # calibration records the trained complexity scorer relative to the policy's folder, and
    # the scorer lands beside the tier files, outside the temporary directory. The fitted
    # policy is then written there with absolute paths.
    loaded = parse_policy(
        yaml.safe_dump(document, sort_keys=False),
        source=f"<{name}>",
        base_dir=shipped.base_dir,
        check_files=True,
    )
    evaluator = Evaluator(loaded)
    result = calibrate_policy(
        loaded,
        X,
        y,
        target=target,
        method=_method(shipped),  # type: ignore[arg-type]
        data_label=data_label,
        evaluator=evaluator,
        write=False,
        progress=lambda message: _say(dataset, f"{name}: {message}"),
    )
    if not result.met or result.chosen is None:
        return Variant(name, kind, result, None)
    provenance = Provenance.model_validate(
        calibration_provenance(result, target=target, data_label=data_label, evaluator=evaluator)
    )
    written = _written_policy(
        result.policy,
        base_dir=shipped.base_dir,
        provenance=provenance,
        path=out_dir / f"{name}.yaml",
    )
    return Variant(name, kind, result, written)


def _calibration_line(variant: Variant, *, calibration_rows: int) -> str:
    result = variant.result
    if result.chosen is None:
        why = "; ".join(result.notes) or "no setting met the target"
        return f"  {variant.name}: NOT CERTIFIED on the calibration split — {why}"
    setting = " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.chosen.params.items()
    )
    rows = "half" if variant.kind == "complexity" else "all"
    bound = (
        f", loss bound {result.bound:.5f} ≤ allowed {result.allowed_loss:.5f}"
        if result.bound is not None and result.allowed_loss is not None
        else ""
    )
    return (
        f"  {variant.name}: {setting} — calibration ({rows} of {calibration_rows} rows) "
        f"rel acc {result.chosen.relative_accuracy:.4f}, rel cost "
        f"{result.chosen.relative_cost:.3f}{bound}"
        # calibrate's own verdict on a complexity policy against a confidence chain
        + "".join(f"\n    {n}" for n in result.notes if "complexity routing" in n)
    )


def _goal_line(dataset: str, goal: Goal, row: EvalRow) -> tuple[str, bool]:
    met = (
        row.relative_accuracy >= goal.relative_accuracy
        and row.relative_cost <= goal.max_relative_cost
    )
    line = (
        f"{dataset}: calibrated confidence cascade ≥ {goal.relative_accuracy:.1%} of "
        f"always-large accuracy at ≤ {goal.max_relative_cost:.0%} of its cost: "
        f"{'PASS' if met else 'MISS'} ({row.relative_accuracy:.2%} of the accuracy at "
        f"{row.relative_cost:.1%} of the cost, {row.n} test rows)"
    )
    return line, met


def _variant_json(variant: Variant) -> dict[str, Any]:
    result = variant.result
    chosen = result.chosen
    return {
        "kind": variant.kind,
        "met": result.met,
        "chosen": None
        if chosen is None
        else {
            "relative_cost": chosen.relative_cost,
            "relative_accuracy": chosen.relative_accuracy,
            "params": chosen.params,
        },
        "loss_upper_bound": result.bound,
        "loss_allowed": result.allowed_loss,
        "notes": result.notes,
        # Model paths as calibrated, relative to policies/ (the written file has them absolute).
        "policy": None
        if not result.met
        else result.policy.model_dump(mode="json", exclude_none=True, exclude_defaults=True),
    }


def _share(row: EvalRow, oracle_cost: float, target: Target) -> float | None:
    """The share of the oracle's saving a configuration captures; None when it misses the
    target on test (a saving bought with accuracy is no share of the oracle's)."""
    if target.relative_accuracy is not None and row.relative_accuracy < target.relative_accuracy:
        return None
    return (1 - row.relative_cost) / (1 - oracle_cost)


def _oracle(
    shipped: PolicyFile, evaluator: Evaluator, X: Any, y: Any, target: Target
) -> dict[str, Any]:
    """The label-aware oracle on the shipped chain's first tier -> the reference tier."""
    routing = shipped.policy.routing
    assert isinstance(routing, ConfidenceRouting) and target.relative_accuracy is not None
    cheap, large = routing.chain[0].tier, evaluator.reference
    cheap_ok = evaluator.probabilities(cheap, X).argmax(axis=1) == y
    large_ok = evaluator.probabilities(large, X).argmax(axis=1) == y
    found = oracle(cheap_ok, large_ok, relative_accuracy=target.relative_accuracy)
    costs = evaluator.costs
    return {
        "tier": cheap,
        "escalation": found.escalation,
        "escalated_rows": found.escalated,
        "fixable_rows": found.fixable,
        "relative_accuracy": (int(cheap_ok.sum()) + found.escalated) / int(large_ok.sum()),
        "relative_cost": found.relative_cost(costs[cheap], costs[large]),
    }


def run_dataset(dataset: str, out_dir: Path) -> tuple[dict[str, Any], str]:
    """Everything for one dataset: the JSON section and the goal line."""
    began = time.perf_counter()
    shipped = read_policy(POLICIES / f"{dataset}.yaml")
    _say(dataset, "making sure the tier models exist")
    built = ensure_models(shipped)
    if built:
        _say(dataset, f"built {len(built)} model files")
    target = _target(shipped)
    X_cal, y_cal, cal_label = labelled_split(shipped, split="calibration")
    X_test, y_test, test_label = labelled_split(shipped, split="test")

    variants = []
    for name, kind, routing in _variant_routings(shipped.policy):
        _say(dataset, f"calibrating {name} on {cal_label} ({len(y_cal)} rows)")
        variants.append(
            calibrate_variant(
                shipped, name, kind, routing, X=X_cal, y=y_cal, data_label=cal_label,
                target=target, out_dir=out_dir,
            )
        )  # fmt: skip

    _say(dataset, f"evaluating the shipped policy and the baselines on {test_label}")
    evaluator = Evaluator(shipped)
    shipped_row, *baselines = evaluator.evaluate(X_test, y_test, with_oracle=False)
    reference = next(r for r in baselines if r.name == f"always-{evaluator.reference}")
    rows: list[tuple[str, EvalRow]] = [("shipped confidence", shipped_row)]
    for variant in variants:
        if variant.loaded is None:
            continue
        _say(dataset, f"evaluating {variant.name} on {test_label}")
        variant_evaluator = Evaluator(variant.loaded)
        policy = variant.loaded.policy
        rows.append(
            (
                variant.kind,
                variant_evaluator.summarise(
                    variant.name, policy, variant_evaluator.replay(policy, X_test), y_test,
                    reference_accuracy=reference.accuracy,
                    reference_cost=variant_evaluator.costs[variant_evaluator.reference],
                ),
            )
        )  # fmt: skip
    rows += [("baseline", row) for row in baselines]
    oracle_section = _oracle(shipped, evaluator, X_test, y_test, target)
    oracle_cost = oracle_section["relative_cost"]

    goal = GOALS[dataset]
    goal_line, met = _goal_line(dataset, goal, shipped_row)
    target_text = ", ".join(f"{k} {v:g}" for k, v in target.as_dict().items())
    print(f"\n=== {dataset}: {test_label}, {len(y_test)} rows ===")
    print(format_rows([row for _, row in rows]))
    print(
        f"\nvariants calibrated on {cal_label} to the shipped target ({target_text}, "
        f"confidence {target.confidence:g}):"
    )
    for variant in variants:
        print(_calibration_line(variant, calibration_rows=len(y_cal)))
    print(
        f"\noracle ({oracle_section['tier']} -> {evaluator.reference}, labels known): escalates "
        f"{oracle_section['escalation']:.1%}, rel cost {oracle_cost:.3f}; share of its saving "
        "(1 - rel cost) / (1 - oracle rel cost):"
    )
    for _, row in rows:
        share = _share(row, oracle_cost, target)
        print(f"  {row.name:40} " + ("misses the target" if share is None else f"{share:6.3f}"))

    section = {
        "test_split": test_label,
        "test_rows": len(y_test),
        "calibration_split": cal_label,
        "calibration_rows": len(y_cal),
        "shipped_policy": str(POLICIES.relative_to(POLICIES.parent) / f"{dataset}.yaml"),
        "target": {**target.as_dict(), "confidence": target.confidence},
        "rows": [
            {"role": role, **row.to_dict(), "oracle_share": _share(row, oracle_cost, target)}
            for role, row in rows
        ],
        "oracle": oracle_section,
        "variants": {variant.name: _variant_json(variant) for variant in variants},
        "goal": {
            "relative_accuracy_at_least": goal.relative_accuracy,
            "relative_cost_at_most": goal.max_relative_cost,
            "relative_accuracy": shipped_row.relative_accuracy,
            "relative_cost": shipped_row.relative_cost,
            "met": met,
        },
        "seconds": round(time.perf_counter() - began, 1),
    }
    return section, goal_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "benchmark": "cascade_tradeoff",
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "datasets": {},
    }
    summary = []
    with tempfile.TemporaryDirectory(prefix="cascade-tradeoff-") as tmp:
        for dataset in args.datasets:
            section, line = run_dataset(dataset, Path(tmp))
            report["datasets"][dataset] = section
            summary.append(line)
    print("\n=== summary (test split; ratios against always-large in this run) ===")
    for line in summary:
        print(line)
    path = args.out / "cascade_tradeoff.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
