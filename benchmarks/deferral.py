"""Escalation rules against the oracle (issue 19, step one): does a learned rule beat max_prob?

    python benchmarks/deferral.py [--dataset covertype] [--out benchmarks/results]

On the shipped policy's two-tier step (``policies/DATASET.yaml``: cheap tier -> large), each
rule is fitted and thresholded on the CALIBRATION split only, with the margin of `cascade
calibrate` (the shipped target and confidence, from the policy's provenance), then scored on
the TEST split (JSON: ``OUT/deferral_DATASET.json``):

- the shipped policy, replayed through the engine as `cascade evaluate` does;
- max_prob, margin, entropy (temperature-scaled, T fitted on the calibration split);
- per-class: max_prob mapped per predicted class by an isotonic fit to "the cheap tier is
  right" (fitted on half A), one threshold on it (certified on half B);
- learned: logistic regression or small gradient boosting of "the cheap tier is wrong" on
  the deferral features (probability vector, max, margin, entropy, predicted class; with
  ``+tiny``: the tiers cheaper than the step's (tiny) too, their top probability and
  agreement, their cost charged; with ``+inputs``: the row's input features too, for
  numeric datasets), fitted on half A, exported to ONNX (its measured cost charged),
  certified on half B;
- max_prob certified on half B alone, to show what halving the certification rows costs;
- the oracle (labels known: escalate just enough rows that large fixes).

Per rule: escalation and cost on the calibration rows it was certified on, then on test:
escalation, relative cost, relative accuracy against always-large, whether the target held,
the share of the oracle's saving (1 − cost) / (1 − oracle cost), and a diagnostic of
ranking quality alone: the escalation the rule would need to reach the target exactly on
test if its threshold were picked with the test labels (not a deployable number; it
separates "the rule ranks rows badly" from "the margin costs escalations").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cascade.backends import OnnxModel
from cascade.evaluate import (
    Evaluator,
    Target,
    certified_threshold,
    ensure_models,
    fit_isotonic,
    fit_temperature,
    labelled_split,
    oracle,
    train_deferral,
)
from cascade.policy import Calibration, ConfidenceRouting, read_policy
from cascade.routing import calibrate, confidence, deferral_features

POLICIES = Path(__file__).resolve().parents[1] / "policies"


@dataclass
class Row:
    rule: str
    fitted_on: str
    certified_on: str
    threshold: float | None
    calibration_escalation: float | None
    extra_cost: float
    test_escalation: float
    relative_cost: float
    relative_accuracy: float
    target_held: bool
    oracle_share: float
    ranking_escalation_at_target: float


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ranking_escalation(keep: np.ndarray, cheap_ok: np.ndarray, large_ok: np.ndarray,
                       relative_accuracy: float) -> float:  # fmt: skip
    """Escalation needed on these rows if the rule's threshold were set with their labels."""
    order = np.argsort(keep, kind="stable")  # least sure first: escalated first
    gain = large_ok[order].astype(np.int64) - cheap_ok[order].astype(np.int64)
    right = int(cheap_ok.sum()) + np.r_[0, np.cumsum(gain)]
    enough = np.flatnonzero(right >= relative_accuracy * int(large_ok.sum()) - 1e-9)
    return float(enough[0] / len(keep)) if enough.size else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="covertype")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    began = time.perf_counter()

    loaded = read_policy(POLICIES / f"{args.dataset}.yaml")
    ensure_models(loaded)
    routing = loaded.policy.routing
    provenance = loaded.policy.provenance
    if not isinstance(routing, ConfidenceRouting) or provenance is None:
        raise SystemExit(f"{loaded.path}: needs a calibrated confidence policy")
    target = Target(**provenance.target, confidence=provenance.confidence)
    assert target.relative_accuracy is not None
    r = target.relative_accuracy
    cheap = routing.chain[0].tier
    evaluator = Evaluator(loaded)
    costs = evaluator.costs
    large = evaluator.reference
    c_cheap, c_large = costs[cheap], costs[large]
    earlier = [t for t in sorted(costs, key=costs.__getitem__) if costs[t] < c_cheap]

    X_cal, y_cal, cal_label = labelled_split(loaded, split="calibration")
    X_test, y_test, test_label = labelled_split(loaded, split="test")
    _say(f"tier outputs on {cal_label} and {test_label}")
    p = {
        (t, s): evaluator.probabilities(t, X)
        for t in [*earlier, cheap, large]
        for s, X in (("cal", X_cal), ("test", X_test))
    }
    ok = {(t, s): p[t, s].argmax(axis=1) == (y_cal if s == "cal" else y_test)
          for (t, s) in p}  # fmt: skip
    cheap_cal, large_cal = ok[cheap, "cal"], ok[large, "cal"]
    cheap_test, large_test = ok[cheap, "test"], ok[large, "test"]

    the_oracle = oracle(cheap_test, large_test, relative_accuracy=r)
    oracle_cost = the_oracle.relative_cost(c_cheap, c_large)
    n_cal = len(y_cal)
    halves = np.random.default_rng(0).permutation(n_cal)
    A, B = np.sort(halves[: n_cal // 2]), np.sort(halves[n_cal // 2 :])

    rows: list[Row] = []

    def add(rule: str, keep_cal: np.ndarray, keep_test: np.ndarray, *, fitted_on: str,
            certify_rows: np.ndarray, extra_cost: float = 0.0) -> None:  # fmt: skip
        cert = certified_threshold(
            keep_cal[certify_rows], cheap_cal[certify_rows], large_cal[certify_rows],
            target=target, cheap_cost=c_cheap + extra_cost, expensive_cost=c_large,
        )  # fmt: skip
        where = "all" if len(certify_rows) == n_cal else "half B"
        certified_on = f"{where} ({len(certify_rows):,})"
        threshold = cert.threshold if cert.threshold is not None else float("inf")
        escalate = keep_test < threshold
        answer_ok = np.where(escalate, large_test, cheap_test)
        rel_acc = float(answer_ok.mean() / large_test.mean())
        cost = (c_cheap + extra_cost + float(escalate.mean()) * c_large) / c_large
        rows.append(Row(
            rule, fitted_on, certified_on, cert.threshold, cert.calibration_escalation,
            extra_cost / c_large, float(escalate.mean()), cost, rel_acc, rel_acc >= r,
            (1 - cost) / (1 - oracle_cost),
            ranking_escalation(keep_test, cheap_test, large_test, r),
        ))  # fmt: skip
        _say(f"  {rule}: test escalation {escalate.mean():.3f}, cost {cost:.3f}")

    everyone = np.arange(n_cal)
    temperature = Calibration(
        method="temperature", temperature=fit_temperature(p[cheap, "cal"], y_cal)
    )

    def measure(name: str) -> Callable[[str], np.ndarray]:
        def of(split: str) -> np.ndarray:
            q = p[cheap, split]
            return calibrate(q, confidence(q, name), temperature, name)  # type: ignore[arg-type]

        return of

    for name in ("max_prob", "margin", "entropy"):
        of = measure(name)
        add(f"{name} (T-scaled)", of("cal"), of("test"), fitted_on="T: all",
            certify_rows=everyone)  # fmt: skip
    of = measure("max_prob")
    add("max_prob (T-scaled)", of("cal"), of("test"), fitted_on="T: all", certify_rows=B)

    # per class: P(cheap right | max_prob, predicted class), isotonic per class on half A
    raw = {s: confidence(p[cheap, s], "max_prob") for s in ("cal", "test")}
    predicted = {s: p[cheap, s].argmax(axis=1) for s in ("cal", "test")}
    per_class = {s: raw[s].copy() for s in raw}
    for c in np.unique(predicted["cal"][A]):
        rows_c = A[predicted["cal"][A] == c]
        x_knots, y_knots = fit_isotonic(raw["cal"][rows_c], cheap_cal[rows_c])
        for s in per_class:
            mask = predicted[s] == c
            per_class[s][mask] = np.interp(raw[s][mask], x_knots, y_knots)
    add("per-class max_prob (isotonic)", per_class["cal"], per_class["test"],
        fitted_on="half A", certify_rows=B)  # fmt: skip

    inputs = {"cal": X_cal, "test": X_test}
    feature_sets = [("", False, False), (f" +{'+'.join(earlier)}", True, False)] if earlier else []
    feature_sets = feature_sets or [("", False, False)]
    if X_cal.ndim == 2 and np.issubdtype(X_cal.dtype, np.number):  # text rows: no such features
        feature_sets.append((f"{feature_sets[-1][0]} +inputs", bool(earlier), True))
    with tempfile.TemporaryDirectory(prefix="cascade-deferral-") as tmp:
        for number, (suffix, with_earlier, with_inputs) in enumerate(feature_sets):
            features = {
                s: deferral_features(
                    p[cheap, s],
                    earlier=[p[t, s] for t in earlier] if with_earlier else [],
                    rows=inputs[s] if with_inputs else None,
                )
                for s in ("cal", "test")
            }
            earlier_cost = sum(costs[t] for t in earlier) if with_earlier else 0.0
            for kind in ("logistic", "boosting"):
                _say(f"training the {kind} deferral rule{suffix} on half A")
                onnx_path = Path(tmp) / f"{kind}-{number}.onnx"
                path = train_deferral(features["cal"][A], ~cheap_cal[A], onnx_path, kind=kind)
                model = OnnxModel(path)
                score = {s: model.predict_sync(f)[:, 1].astype(np.float64)
                         for s, f in features.items()}  # fmt: skip
                extra = evaluator.model_cost(path) + earlier_cost
                add(f"learned {kind}{suffix}", 1 - score["cal"], 1 - score["test"],
                    fitted_on="half A", certify_rows=B, extra_cost=extra)  # fmt: skip

    _say(f"replaying the shipped policy on {test_label}")
    shipped, *_ = evaluator.evaluate(X_test, y_test)

    header = (f"{'rule':40} {'fit':>8} {'certified on':>15} {'cal esc':>8} {'test esc':>8} "
              f"{'rel cost':>8} {'rel acc':>8} {'held':>5} {'oracle share':>12} "
              f"{'rank esc@tgt':>12}")  # fmt: skip
    print(f"\n=== {args.dataset}: {cheap} -> {large}, target {r:g} at confidence "
          f"{target.confidence:g}; fitted on {cal_label} ({n_cal:,} rows), scored on "
          f"{test_label} ({len(y_test):,} rows) ===")  # fmt: skip
    print(header)
    print("-" * len(header))
    print(f"{'shipped policy (engine replay)':40} {'':>8} {'all':>15} {'':>8} "
          f"{shipped.escalation_rate:8.3f} {shipped.relative_cost:8.3f} "
          f"{shipped.relative_accuracy:8.4f} {shipped.relative_accuracy >= r!s:>5} "
          f"{(1 - shipped.relative_cost) / (1 - oracle_cost):12.3f} {'':>12}")  # fmt: skip
    for row in rows:
        cal_esc = "-" if row.calibration_escalation is None else f"{row.calibration_escalation:.3f}"
        print(f"{row.rule:40} {row.fitted_on:>8} {row.certified_on:>15} {cal_esc:>8} "
              f"{row.test_escalation:8.3f} {row.relative_cost:8.3f} "
              f"{row.relative_accuracy:8.4f} {row.target_held!s:>5} "
              f"{row.oracle_share:12.3f} {row.ranking_escalation_at_target:12.3f}")  # fmt: skip
    oracle_accuracy = (int(cheap_test.sum()) + the_oracle.escalated) / int(large_test.sum())
    print(f"{'oracle (labels known)':40} {'':>8} {'':>15} {'':>8} "
          f"{the_oracle.escalation:8.3f} {oracle_cost:8.3f} {oracle_accuracy:8.4f} "
          f"{oracle_accuracy >= r!s:>5} "
          f"{1.0:12.3f} {the_oracle.escalation:12.3f}")  # fmt: skip
    print(f"\ncosts per row ({large} = 1): "
          + ", ".join(f"{t} {costs[t]:.4f}" for t in sorted(costs, key=costs.__getitem__))
          + f"; fixable rows on test ({cheap} wrong, {large} right): "
          f"{the_oracle.fixable / the_oracle.n:.3f}")  # fmt: skip

    report: dict[str, Any] = {
        "benchmark": "deferral",
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "dataset": args.dataset,
        "policy": str((POLICIES / f"{args.dataset}.yaml").relative_to(POLICIES.parent)),
        "chain": [cheap, large],
        "target": {**target.as_dict(), "confidence": target.confidence},
        "calibration_split": cal_label,
        "calibration_rows": n_cal,
        "test_split": test_label,
        "test_rows": len(y_test),
        "costs": costs,
        "oracle": {
            **asdict(the_oracle),
            "relative_accuracy": oracle_accuracy,
            "escalation": the_oracle.escalation,
            "relative_cost": oracle_cost,
        },
        "shipped": shipped.to_dict(),
        "rules": [asdict(row) for row in rows],
        "seconds": round(time.perf_counter() - began, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"deferral_{args.dataset}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
