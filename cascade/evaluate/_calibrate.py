"""Calibration: fit a policy's thresholds (or bands) on the calibration split, with a margin.

The search runs over cached tier probabilities — each tier runs once on the calibration rows
— and simulates the policy's routing exactly as the engine does (vectorised); the chosen
setting is then replayed through the real engine to report what it achieves.

**The statistical margin.** Candidates are ordered from the safest (most escalation) to the
cheapest and tested one after another (fixed-sequence testing, so no multiplicity
correction is needed); a candidate passes when an upper confidence bound on the accuracy it
loses against always-large stays within the target (see ``_bounds``); the search stops at
the first failure and keeps the last pass. The order depends only on confidences, never on
labels.

**Complexity routing** needs a scorer that predicts "the cheapest tier will be wrong". It is
trained on one half of the calibration split (a small gradient-boosting classifier, exported
to ONNX beside the tiers) and its bands are fitted on the other half, so that the bound is
computed on rows the scorer never saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.audit import reference_from
from cascade.errors import PolicyError
from cascade.evaluate._bounds import loss_upper_bound
from cascade.evaluate._candidate import Candidate
from cascade.evaluate._complexity import complexity_search
from cascade.evaluate._fit import fit_isotonic, fit_temperature
from cascade.evaluate._frontier import Point, pareto_front
from cascade.evaluate._policy_edit import edit_policy_file
from cascade.evaluate._replay import Evaluator
from cascade.evaluate._served_cost import CostModel
from cascade.policy import (
    Calibration,
    ChainStep,
    ComplexityRouting,
    ConfidenceRouting,
    Policy,
    PolicyFile,
    SlaRouting,
    SpeculativeRouting,
    parse_policy,
)
from cascade.routing import calibrate as apply_calibration
from cascade.routing import confidence as measure_confidence

__all__ = [
    "CalibrationResult",
    "Target",
    "calibrate_policy",
    "calibration_provenance",
    "confidence_reference",
    "select_certified",
    "threshold_grid",
    "write_reference",
]

ConfidenceCalibration = Literal["none", "temperature", "isotonic"]
_GRID_2 = 60  # threshold candidates for one threshold
_GRID_3 = 24  # per threshold when a chain has two


@dataclass(frozen=True)
class Target:
    """What calibration aims for. At least one of the three must be set."""

    relative_accuracy: float | None = None
    max_relative_cost: float | None = None
    max_escalation: float | None = None
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.relative_accuracy is None and self.max_relative_cost is None:
            raise PolicyError("give --target-relative-accuracy and/or --max-relative-cost")
        if self.relative_accuracy is not None and not 0 < self.relative_accuracy <= 1:
            raise PolicyError(
                f"target relative accuracy must be in (0, 1], got {self.relative_accuracy}"
            )
        if not 0.5 <= self.confidence < 1:
            raise PolicyError(f"confidence must be in [0.5, 1), got {self.confidence}")

    def as_dict(self) -> dict[str, float]:
        out = {
            "relative_accuracy": self.relative_accuracy,
            "max_relative_cost": self.max_relative_cost,
            "max_escalation": self.max_escalation,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class CalibrationResult:
    """What calibration chose, and the frontier it chose from."""

    policy: Policy
    chosen: Point | None
    points: list[Point]
    frontier: list[Point]
    bound: float | None
    allowed_loss: float | None
    met: bool
    notes: list[str] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)


def threshold_grid(values: np.ndarray, size: int) -> np.ndarray:
    """Threshold candidates: midpoints just below ~``size`` quantiles of the confidences.

    Midpoints between neighbouring distinct values, not the values themselves, so that
    rounding a threshold when it is written cannot move a row across it (forest vote
    shares put thousands of rows on the very same confidence). 0 accepts every row.
    """
    distinct = np.unique(values)
    positions = np.unique(np.linspace(0, len(distinct) - 1, size).round().astype(int))
    below = np.where(positions > 0, distinct[np.maximum(positions - 1, 0)], 0.0)
    midpoints = (below + distinct[positions]) / 2
    return np.unique(np.round(np.r_[0.0, midpoints[positions > 0]], 6))


class _Chain:
    """Vectorised twin of the engine's confidence chain over cached probabilities."""

    def __init__(
        self,
        tiers: Sequence[str],
        probabilities: dict[str, np.ndarray],
        confidences: dict[str, np.ndarray],
        costs: dict[str, float],
        y: np.ndarray,
        max_escalations: int | None,
    ) -> None:
        self.tiers = list(tiers)
        self.correct = {t: probabilities[t].argmax(axis=1) == y for t in tiers}
        self.conf = confidences
        self.costs = costs
        depth = len(self.tiers) if max_escalations is None else max_escalations + 1
        self.depth = min(depth, len(self.tiers))

    def simulate(self, thresholds: Sequence[float]) -> Candidate:
        n = len(next(iter(self.correct.values())))
        open_rows = np.ones(n, dtype=bool)
        correct = np.zeros(n, dtype=bool)
        cost = np.zeros(n)
        reach: dict[str, float] = {}
        for k, tier in enumerate(self.tiers[: self.depth]):
            reach[tier] = float(open_rows.mean())
            cost[open_rows] += self.costs[tier]
            last = k == self.depth - 1
            accept = open_rows if last else open_rows & (self.conf[tier] >= thresholds[k])
            correct[accept] = self.correct[tier][accept]
            open_rows &= ~accept
        escalated = 1.0 - float(
            (self.conf[self.tiers[0]] >= thresholds[0]).mean() if self.depth > 1 else 1.0
        )
        params = {f"{t}": float(v) for t, v in zip(self.tiers, thresholds, strict=False)}
        return Candidate(params, correct, float(cost.mean()), escalated, reach)


def _fit_confidences(
    routing: ConfidenceRouting | SlaRouting | SpeculativeRouting,
    tiers: Sequence[str],
    probabilities: dict[str, np.ndarray],
    y: np.ndarray,
    method: ConfidenceCalibration,
) -> tuple[dict[str, np.ndarray], dict[str, Calibration | None]]:
    confidences: dict[str, np.ndarray] = {}
    calibrations: dict[str, Calibration | None] = {}
    for tier in tiers:
        p = probabilities[tier]
        raw = measure_confidence(p, routing.measure)
        calibration: Calibration | None = None
        if method == "temperature":
            calibration = Calibration(
                method="temperature", temperature=round(fit_temperature(p, y), 6)
            )
        elif method == "isotonic":
            x_knots, y_knots = fit_isotonic(raw, p.argmax(axis=1) == y)
            calibration = Calibration(
                method="isotonic",
                x=[round(v, 6) for v in x_knots],
                y=[round(v, 6) for v in y_knots],
            )
        confidences[tier] = apply_calibration(p, raw, calibration, routing.measure)
        calibrations[tier] = calibration
    return confidences, calibrations


def select_certified(
    candidates: list[Candidate],
    reference_correct: np.ndarray,
    target: Target,
) -> tuple[Candidate | None, float | None, float | None, list[str]]:
    """Fixed-sequence selection; returns (chosen, its bound, allowed loss, notes)."""
    notes: list[str] = []
    feasible = [
        c
        for c in candidates
        if (target.max_relative_cost is None or c.cost <= target.max_relative_cost + 1e-12)
        and (target.max_escalation is None or c.escalation <= target.max_escalation + 1e-12)
    ]
    if not feasible:
        notes.append("no setting meets the cost / escalation limits")
        return None, None, None, notes
    if target.relative_accuracy is None:
        best = max(feasible, key=lambda c: (c.correct.mean(), -c.cost))
        return best, None, None, notes
    allowed = (1.0 - target.relative_accuracy) * float(reference_correct.mean())
    chosen: Candidate | None = None
    bound: float | None = None
    # Safest first: most cost; ties broken by more escalation. Labels play no part.
    for candidate in sorted(feasible, key=lambda c: (-c.cost, -c.escalation)):
        d = reference_correct.astype(np.int8) - candidate.correct.astype(np.int8)
        upper = loss_upper_bound(d, confidence=target.confidence)
        if upper > allowed:
            break
        chosen, bound = candidate, upper
    if chosen is None:
        notes.append(
            f"even the safest setting cannot certify the target at confidence "
            f"{target.confidence:g} on {len(reference_correct)} calibration rows"
        )
    return chosen, bound, allowed, notes


def _points(
    candidates: list[Candidate], reference_correct: np.ndarray, reference_cost: float
) -> list[Point]:
    ref = float(reference_correct.mean())
    return [
        Point(c.cost / reference_cost, float(c.correct.mean()) / ref, dict(c.params))
        for c in candidates
    ]


def _chain_search(
    evaluator: Evaluator,
    routing: ConfidenceRouting | SlaRouting,
    X: np.ndarray,
    y: np.ndarray,
    method: ConfidenceCalibration,
) -> tuple[list[Candidate], dict[str, Calibration | None]]:
    tiers = [step.tier for step in routing.chain]
    probabilities = {t: evaluator.probabilities(t, X) for t in tiers}
    confidences, calibrations = _fit_confidences(routing, tiers[:-1], probabilities, y, method)
    chain = _Chain(tiers, probabilities, confidences, evaluator.costs, y, routing.max_escalations)
    open_tiers = tiers[: chain.depth - 1]
    size = _GRID_2 if len(open_tiers) <= 1 else _GRID_3
    grids = [threshold_grid(confidences[t], size) for t in open_tiers]
    candidates = [chain.simulate(list(combo)) for combo in itertools.product(*grids)]
    if not open_tiers:
        candidates = [chain.simulate([])]
    return candidates, calibrations


def calibrate_policy(
    loaded: PolicyFile,
    X: np.ndarray,
    y: np.ndarray,
    *,
    target: Target,
    method: ConfidenceCalibration = "temperature",
    data_label: str,
    evaluator: Evaluator | None = None,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
    cost_model: CostModel | None = None,
    split_label: str = "calibration",
) -> CalibrationResult:
    """Fit ``loaded``'s thresholds on (X, y) — the calibration split — and write them back.

    ``data_label`` and ``split_label`` are what the provenance records as ``dataset`` and
    ``split``.

    Relative cost is the model cost at batch 256 (the cards' figure) unless ``cost_model``
    is given: then it is the served cost of requests of that model's size on that runtime
    (:mod:`cascade.evaluate._served_cost`), which confidence and SLA chains support.

    Example::

        result = calibrate_policy(read_policy("policies/covertype.yaml"), X_cal, y_cal,
                                  target=Target(relative_accuracy=0.995), data_label="covertype")
    """
    evaluator = evaluator or Evaluator(loaded)
    routing = loaded.policy.chain_routing
    reference_correct = evaluator.probabilities(evaluator.reference, X).argmax(axis=1) == y
    reference_cost = evaluator.costs[evaluator.reference]
    say = progress or (lambda _: None)
    extra_files: list[Path] = []
    calibrations: dict[str, Calibration | None] = {}

    if isinstance(routing, ConfidenceRouting | SlaRouting) and _has_rules(routing):
        say("training the learned deferral rules on half of the calibration split")
        candidates, calibrations, half_b, rule_files = _learned_chain_search(
            evaluator, loaded, routing, X, y, method
        )
        selection_rows = reference_correct[half_b]
        extra_files += list(rule_files.values())
    elif isinstance(routing, ConfidenceRouting | SlaRouting):
        say(f"searching thresholds of {[s.tier for s in routing.chain]}")
        candidates, calibrations = _chain_search(evaluator, routing, X, y, method)
        selection_rows = reference_correct
    elif isinstance(routing, SpeculativeRouting):
        say(f"searching the threshold of '{routing.cheap}'")
        candidates, calibrations = _speculative_search(evaluator, routing, X, y, method)
        selection_rows = reference_correct
    else:
        say("training the complexity scorer on half of the calibration split")
        candidates, selection_rows, scorer_path = complexity_search(
            evaluator, loaded, routing, X, y, reference_correct=reference_correct
        )
        extra_files.append(scorer_path)

    if cost_model is not None:
        if any(not c.reach for c in candidates):
            raise PolicyError(
                f"{loaded.path or loaded.policy.name}: calibrating on served cost needs the "
                "share of rows reaching each tier, which confidence and SLA chains give; "
                "calibrate this routing on model cost"
            )
        for c in candidates:
            c.cost = cost_model.relative(c.reach)[1] * reference_cost

    chosen, bound, allowed, notes = select_certified(candidates, selection_rows, target)
    if isinstance(routing, ComplexityRouting):
        say("calibrating a confidence chain over the same tiers, to compare")
        notes.append(
            _complexity_verdict(
                evaluator, routing, X, y, method=method, target=target,
                reference_correct=reference_correct,
                complexity_cost=None if chosen is None else chosen.cost / reference_cost,
            )
        )  # fmt: skip
    points = _points(candidates, selection_rows, reference_cost)
    frontier = pareto_front(points)
    chosen_point = None
    if chosen is not None:
        chosen_point = Point(
            chosen.cost / reference_cost,
            float(chosen.correct.mean()) / float(selection_rows.mean()),
            dict(chosen.params),
            label="chosen",
        )
    policy = loaded.policy
    if chosen is not None:
        policy = _apply(loaded, chosen, calibrations, extra_files)
    result = CalibrationResult(
        policy=policy,
        chosen=chosen_point,
        points=points,
        frontier=frontier,
        bound=bound,
        allowed_loss=allowed,
        met=chosen is not None,
        notes=notes,
        extra_files=extra_files,
    )
    if write and chosen is not None and loaded.path is not None:
        reference = confidence_reference(policy, evaluator, X)
        _write(loaded, result, target=target, data_label=data_label, evaluator=evaluator,
               cost=cost_objective(cost_model), reference=reference,
               split_label=split_label)  # fmt: skip
    return result


def _complexity_verdict(
    evaluator: Evaluator,
    routing: ComplexityRouting,
    X: np.ndarray,
    y: np.ndarray,
    *,
    method: ConfidenceCalibration,
    target: Target,
    reference_correct: np.ndarray,
    complexity_cost: float | None,
) -> str:
    """Whether a confidence chain over the complexity bands' tiers (any of them, in order,
    ending at the last) certifies the same target more cheaply: said plainly, so that a user
    is not led to the dominated strategy."""
    tiers = [band.tier for band in routing.bands]
    reference_cost = evaluator.costs[evaluator.reference]
    best: tuple[float, list[str]] | None = None
    for size in range(2, len(tiers) + 1):
        for head in itertools.combinations(tiers[:-1], size - 1):
            over = [*head, tiers[-1]]
            chain = [ChainStep(tier=t, threshold=0.5) for t in head] + [ChainStep(tier=over[-1])]
            candidates, _ = _chain_search(
                evaluator, ConfidenceRouting(kind="confidence", chain=chain), X, y, method
            )
            chosen, _, _, _ = select_certified(candidates, reference_correct, target)
            if chosen is not None and (best is None or chosen.cost / reference_cost < best[0]):
                best = (chosen.cost / reference_cost, over)
    if best is None:
        return "no confidence chain over these tiers certifies the target either; complexity stands"
    alternative, path = best[0], " -> ".join(best[1])
    if complexity_cost is None or alternative <= complexity_cost:
        this = "certifies nothing" if complexity_cost is None else f"costs {complexity_cost:.3f}"
        return (
            f"complexity routing is DOMINATED here: a confidence chain {path} (max_prob, "
            f"{method} calibration) certifies the same target at relative cost "
            f"{alternative:.3f}, and this complexity routing {this}; use `kind: confidence`"
        )
    return (
        f"complexity routing earns its place here: relative cost {complexity_cost:.3f} against "
        f"{alternative:.3f} for the best confidence chain over its tiers ({path}) at the "
        "same target"
    )


def cost_objective(cost_model: CostModel | None) -> str:
    """How provenance names what 'relative cost' counted when the thresholds were fitted."""
    if cost_model is None:
        return "model: per-row cost at batch 256 (the model cards')"
    o = cost_model.overheads
    return (
        f"served: {cost_model.rows} rows/request on {o.runtime} "
        f"({o.request_us:.0f} + {o.request_us_per_row:.1f}/row µs per request, "
        f"{o.hop_us:.0f} + {o.hop_us_per_row:.1f}/row µs per hop; {o.source})"
    )


def _has_rules(routing: ConfidenceRouting | SlaRouting) -> bool:
    return any(step.deferral is not None for step in routing.chain[:-1])


def _learned_chain_search(
    evaluator: Evaluator,
    loaded: PolicyFile,
    routing: ConfidenceRouting | SlaRouting,
    X: np.ndarray,
    y: np.ndarray,
    method: ConfidenceCalibration,
) -> tuple[list[Candidate], dict[str, Calibration | None], np.ndarray, dict[str, Path]]:
    """A chain with learned deferral rules: each rule (and every other step's calibration)
    is fitted on half A of (X, y); thresholds are searched and certified on half B, rows no
    rule has seen. Returns the candidates, the calibrations, half B's indices and the rules'
    files (beside their tiers' models)."""
    from cascade.evaluate._rule_training import train_deferral
    from cascade.routing import deferral_features

    order = np.random.default_rng(0).permutation(len(y))
    half_a, half_b = np.sort(order[: len(y) // 2]), np.sort(order[len(y) // 2 :])
    tiers = [step.tier for step in routing.chain]
    p = {t: evaluator.probabilities(t, X) for t in tiers}
    plain = [s.tier for s in routing.chain[:-1] if s.deferral is None]
    _, calibrations = _fit_confidences(
        routing, plain, {t: p[t][half_a] for t in plain}, y[half_a], method
    )
    confidences = {
        t: apply_calibration(p[t][half_b], measure_confidence(p[t][half_b], routing.measure),
                             calibrations[t], routing.measure)
        for t in plain
    }  # fmt: skip
    files: dict[str, Path] = {}
    rule_cost: dict[str, float] = {}
    for step in routing.chain[:-1]:
        if step.deferral is None:
            continue
        tier, spec = step.tier, step.deferral
        features = deferral_features(
            p[tier], earlier=[p[t] for t in spec.earlier], rows=X if spec.inputs else None
        )
        path = evaluator.tiers[tier].path.with_name(f"{loaded.policy.name}.{tier}.deferral.onnx")
        wrong = p[tier][half_a].argmax(axis=1) != y[half_a]
        try:
            train_deferral(features[half_a], wrong, path, kind="boosting")
        except ValueError as exc:
            raise PolicyError(f"chain step '{tier}': {exc}") from None
        from cascade.backends import OnnxModel

        score = OnnxModel(path).predict_sync(features[half_b])[:, 1].astype(np.float64)
        confidences[tier] = 1.0 - np.clip(score, 0.0, 1.0)
        calibrations[tier] = None
        files[tier] = path
        rule_cost[tier] = evaluator.model_cost(path)
    chain = _Chain(tiers, {t: p[t][half_b] for t in tiers}, confidences, evaluator.costs,
                   y[half_b], routing.max_escalations)  # fmt: skip
    open_tiers = tiers[: chain.depth - 1]
    size = _GRID_2 if len(open_tiers) <= 1 else _GRID_3
    grids = [threshold_grid(confidences[t], size) for t in open_tiers]
    candidates = [chain.simulate(list(combo)) for combo in itertools.product(*grids)]
    for c in candidates:  # each rule runs on the rows that reach its step
        c.cost += sum(cost * c.reach.get(t, 0.0) for t, cost in rule_cost.items())
    return candidates, calibrations, half_b, files


def _speculative_search(
    evaluator: Evaluator,
    routing: SpeculativeRouting,
    X: np.ndarray,
    y: np.ndarray,
    method: ConfidenceCalibration,
) -> tuple[list[Candidate], dict[str, Calibration | None]]:
    cheap, expensive = routing.cheap, routing.expensive
    probabilities = {t: evaluator.probabilities(t, X) for t in (cheap, expensive)}
    confidences, calibrations = _fit_confidences(routing, [cheap], probabilities, y, method)
    share = min(1.0, evaluator.latencies[cheap] / evaluator.latencies[expensive])
    costs = evaluator.costs
    correct = {t: probabilities[t].argmax(axis=1) == y for t in (cheap, expensive)}
    candidates = []
    for threshold in threshold_grid(confidences[cheap], _GRID_2):
        won = confidences[cheap] >= threshold
        cost = costs[cheap] + costs[expensive] * np.where(won, share, 1.0)
        candidates.append(
            Candidate(
                {cheap: float(threshold)},
                np.where(won, correct[cheap], correct[expensive]),
                float(cost.mean()),
                float((~won).mean()),
            )
        )
    return candidates, calibrations


def _apply(
    loaded: PolicyFile,
    chosen: Candidate,
    calibrations: dict[str, Calibration | None],
    extra_files: list[Path],
) -> Policy:
    routing = loaded.policy.chain_routing
    params = chosen.params
    if isinstance(routing, ConfidenceRouting | SlaRouting):
        rules = {f.name: f for f in extra_files if f.name.endswith(".deferral.onnx")}
        chain = [
            step.model_copy(
                update={
                    "threshold": round(params[step.tier], 6) if step.tier in params else None,
                    "calibration": calibrations.get(step.tier),
                    **(
                        {}
                        if step.deferral is None
                        else {
                            "deferral": step.deferral.model_copy(
                                update={
                                    "model": _relative(
                                        rules[f"{loaded.policy.name}.{step.tier}.deferral.onnx"],
                                        loaded,
                                    )
                                }
                            )
                        }
                    ),
                }
            )
            for step in routing.chain
        ]
        new_routing: Any = routing.model_copy(update={"chain": chain})
    elif isinstance(routing, SpeculativeRouting):
        new_routing = routing.model_copy(
            update={
                "threshold": round(params[routing.cheap], 6),
                "calibration": calibrations.get(routing.cheap),
            }
        )
    else:
        bands = [
            band.model_copy(update={"below": params.get(f"band{i}")})
            for i, band in enumerate(routing.bands)
        ]
        scorer = routing.scorer.model_copy(update={"model": _relative(extra_files[0], loaded)})
        new_routing = routing.model_copy(update={"bands": bands, "scorer": scorer})
    return loaded.policy.model_copy(update={"routing": new_routing})


def _relative(file: Path, loaded: PolicyFile) -> str:
    """Relative when the file lies in the policy's folder (the usual case); a policy whose
    tiers live elsewhere (allow_outside_paths) gets the absolute path."""
    if file.is_relative_to(loaded.base_dir):
        return file.relative_to(loaded.base_dir).as_posix()
    return str(file)


def _write(
    loaded: PolicyFile,
    result: CalibrationResult,
    *,
    target: Target,
    data_label: str,
    evaluator: Evaluator,
    cost: str,
    reference: dict[str, Any] | None = None,
    split_label: str = "calibration",
) -> None:
    from cascade.evaluate._policy_edit import plain

    assert loaded.path is not None and result.chosen is not None
    policy = result.policy
    routing = policy.chain_routing
    provenance = calibration_provenance(
        result, target=target, data_label=data_label, evaluator=evaluator, cost=cost,
        reference=reference,
        split_label=split_label,
    )  # fmt: skip

    def _calibration(value: Calibration | None) -> dict[str, Any] | None:
        return None if value is None else value.model_dump(exclude_none=True)

    def edit(doc: Any) -> None:
        section = doc["routing"]
        if isinstance(routing, ConfidenceRouting | SlaRouting):
            for step_doc, step in zip(section["chain"], routing.chain, strict=True):
                _set(step_doc, "threshold", step.threshold)
                _set(step_doc, "calibration", _calibration(step.calibration))
                if step.deferral is not None:
                    step_doc["deferral"]["model"] = step.deferral.model
        elif isinstance(routing, SpeculativeRouting):
            _set(section, "threshold", routing.threshold)
            _set(section, "calibration", _calibration(routing.calibration))
        else:
            assert isinstance(routing, ComplexityRouting)
            for band_doc, band in zip(section["bands"], routing.bands, strict=True):
                _set(band_doc, "below", band.below)
            section["scorer"]["model"] = routing.scorer.model
        doc["provenance"] = plain(provenance)

    def validate(text: str) -> object:
        return parse_policy(
            text, source=str(loaded.path), base_dir=loaded.base_dir, check_files=True
        )

    edit_policy_file(loaded.path, edit, validate=validate)


def calibration_provenance(
    result: CalibrationResult,
    *,
    target: Target,
    data_label: str,
    evaluator: Evaluator,
    cost: str | None = None,
    reference: dict[str, Any] | None = None,
    split_label: str = "calibration",
) -> dict[str, Any]:
    """The policy's ``provenance`` section for a calibration result (see ``Provenance``);
    ``reference``: the drift score's (:func:`confidence_reference`)."""
    if result.chosen is None:
        raise PolicyError("calibration chose no setting: there is no provenance to record")
    achieved = {
        "calibration_relative_accuracy": round(result.chosen.relative_accuracy, 5),
        "calibration_relative_cost": round(result.chosen.relative_cost, 5),
    }
    if result.bound is not None and result.allowed_loss is not None:
        achieved["loss_upper_bound"] = round(result.bound, 6)
        achieved["loss_allowed"] = round(result.allowed_loss, 6)
    return {
        "dataset": data_label,
        "split": split_label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": target.as_dict(),
        "achieved": achieved,
        "confidence": target.confidence,
        **({"cost": cost} if cost is not None else {}),
        "cards": {n: i.card.sha256 for n, i in evaluator.tiers.items() if i.card is not None},
        **({"reference": reference} if reference is not None else {}),
    }


def confidence_reference(
    policy: Policy, evaluator: Evaluator, X: np.ndarray
) -> dict[str, Any] | None:
    """The first tier's confidence on ``X`` (the calibration split) as the live audit's
    drift score reads it: the measure the policy routes on, calibration applied, exactly as
    the engine computes it, cut at ~10 quantiles (:func:`cascade.audit.reference_from`).
    ``agreement``: the share of ``X`` the policy answers as its top tier does (the live
    audit's accuracy alarm starts from it). ``None`` for complexity routing (its first
    decision is a score, not a confidence).

    Example::

        confidence_reference(loaded.policy, Evaluator(loaded), X_cal)
        # {"tier": "tiny", "measure": "max_prob", "edges": [...], "shares": [...], "rows": 360}
    """
    routing = policy.chain_routing
    if isinstance(routing, ConfidenceRouting | SlaRouting):
        tier, calibration = routing.chain[0].tier, routing.chain[0].calibration
    elif isinstance(routing, SpeculativeRouting):
        tier, calibration = routing.cheap, routing.calibration
    else:
        return None
    p = evaluator.probabilities(tier, X)
    raw = measure_confidence(p, routing.measure)
    values = apply_calibration(p, raw, calibration, routing.measure)
    ref = reference_from(values, tier=tier, measure=routing.measure)
    top = evaluator.probabilities(evaluator.reference, X).argmax(axis=1)
    agreement = float(np.mean(evaluator.replay(policy, X).labels == top))
    return {
        "tier": ref.tier,
        "measure": ref.measure,
        "edges": list(ref.edges),
        "shares": list(ref.shares),
        "rows": ref.rows,
        "agreement": round(agreement, 6),
    }


def write_reference(
    loaded: PolicyFile, X: np.ndarray, *, evaluator: Evaluator | None = None
) -> dict[str, Any] | None:
    """Store the drift reference of ``loaded``'s thresholds as they are, on ``X`` (the
    calibration split), in its provenance (``provenance.reference``); the rest of the file
    is left as it is. Returns what was written (``None``: complexity routing has none)."""
    from cascade.evaluate._policy_edit import plain

    where = loaded.path or loaded.policy.name
    if loaded.path is None or loaded.policy.provenance is None:
        raise PolicyError(
            f"{where}: a drift reference goes into the policy's provenance; this policy has "
            "none (calibrate it first)"
        )
    reference = confidence_reference(loaded.policy, evaluator or Evaluator(loaded), X)
    if reference is None:
        return None

    def edit(doc: Any) -> None:
        doc["provenance"]["reference"] = plain(reference)

    def validate(text: str) -> object:
        return parse_policy(text, source=str(where), base_dir=loaded.base_dir, check_files=True)

    edit_policy_file(loaded.path, edit, validate=validate)
    return reference


def _set(mapping: Any, key: str, value: Any) -> None:
    from cascade.evaluate._policy_edit import plain

    if value is None:
        if key in mapping:
            del mapping[key]
    else:
        mapping[key] = plain(value)
