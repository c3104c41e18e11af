"""`deferral:` on a chain step (measure "learned"): the policy rules, the engine that serves it,
`cascade calibrate` that trains and certifies it, and the evaluator that charges its cost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from cascade.backends import OnnxModel
from cascade.errors import PolicyError
from cascade.evaluate import Evaluator, Target, calibrate_policy, train_deferral
from cascade.policy import parse_policy, read_policy
from cascade.routing import Engine, deferral_features
from cascade.zoo import read_dataset

POLICY = """\
name: learned
tiers:
  tiny: {{model: tiny.onnx}}
  small: {{model: small.onnx}}
  large: {{model: large.onnx}}
routing:
  kind: confidence
  chain:
    - tier: tiny
      threshold: {tiny}
      deferral: {deferral}
    - tier: large
"""


def _policy(directory: Path, *, tiny: float = 0.5, deferral: str = "{}") -> Path:
    path = directory / "learned.yaml"
    path.write_text(POLICY.format(tiny=tiny, deferral=deferral))
    return path


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("- {tier: tiny, threshold: 0.5}\n    - {tier: large, deferral: {}}",
         "the last chain step 'large' cannot have a deferral rule"),
        ("- {tier: tiny, threshold: 0.5, deferral: {earlier: [large]}}\n    - {tier: large}",
         r"deferral.earlier names \['large'\], which do not run before it \(allowed: \[\]\)"),
        ("- {tier: tiny, threshold: 0.5, deferral: {},\n       calibration: {method: temperature,"
         " temperature: 1.0}}\n    - {tier: large}",
         "a learned deferral rule takes no `calibration`"),
    ],
)  # fmt: skip
def test_policy_rules_for_deferral_steps(chain: str, message: str) -> None:
    text = (
        "name: p\ntiers:\n  tiny: {model: t.onnx}\n  large: {model: l.onnx}\n"
        f"routing:\n  kind: confidence\n  chain:\n    {chain}\n"
    )
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_a_missing_rule_file_is_named_and_an_untrained_rule_cannot_serve(
    policy_dir: Path,
) -> None:
    with pytest.raises(PolicyError, match=r"learned.yaml:\d+ routing.chain\[0\].deferral.model: "
                       "no such file gone.onnx"):  # fmt: skip
        read_policy(_policy(policy_dir, deferral="{model: gone.onnx}"))
    untrained = read_policy(_policy(policy_dir))  # no model yet: a policy to calibrate
    backends = {t: OnnxModel(policy_dir / f"{t}.onnx") for t in ("tiny", "small", "large")}
    with pytest.raises(PolicyError, match=r"rules of \['tiny'\] are not trained yet: run "):
        Engine(untrained.policy, backends, base_dir=policy_dir, costs=dict.fromkeys(backends, 1.0),
               latency_ms=dict.fromkeys(backends, 1.0))  # fmt: skip


def test_the_engine_keeps_a_row_by_one_minus_the_rules_score(policy_dir: Path) -> None:
    data = read_dataset("digits")
    tiny, large = (OnnxModel(policy_dir / f"{t}.onnx") for t in ("tiny", "large"))
    p_tiny = tiny.predict_sync(data.calibration.X)
    wrong = p_tiny.argmax(axis=1) != data.calibration.y
    train_deferral(deferral_features(p_tiny), wrong, policy_dir / "rule.onnx", kind="logistic")
    loaded = read_policy(_policy(policy_dir, tiny=0.8, deferral="{model: rule.onnx}"))
    engine = Engine(
        loaded.policy, {"tiny": tiny, "large": large}, base_dir=policy_dir, costs={"tiny": 0.1,
        "large": 1.0}, latency_ms={"tiny": 1.0, "large": 2.0},
    )  # fmt: skip
    X = data.test.X
    result = asyncio.run(engine.run(X))

    p_test = tiny.predict_sync(X)
    score = OnnxModel(policy_dir / "rule.onnx").predict_sync(deferral_features(p_test))[:, 1]
    keep = 1.0 - score >= 0.8
    expected = np.where(keep, p_test.argmax(axis=1), large.predict_sync(X).argmax(axis=1))
    assert 0 < keep.sum() < len(X)  # both ways taken: the comparison means something
    assert np.array_equal(result.labels, expected)
    assert [d.answered_by for d in result.decisions] == ["tiny" if k else "large" for k in keep]
    confidences = [d.steps[0].confidence for d in result.decisions]
    assert np.allclose(confidences, 1.0 - score, atol=1e-6)


def test_calibrate_trains_the_rule_on_half_a_and_certifies_on_half_b(policy_dir: Path) -> None:
    data = read_dataset("digits")
    path = _policy(policy_dir, deferral="{inputs: true}")
    result = calibrate_policy(
        read_policy(path), data.calibration.X, data.calibration.y, data_label="digits",
        target=Target(relative_accuracy=0.95, confidence=0.8),
    )  # fmt: skip
    assert result.met
    rule = policy_dir / "learned.tiny.deferral.onnx"
    assert rule.is_file() and rule in result.extra_files
    reloaded = read_policy(path)
    step = reloaded.policy.routing.chain[0]  # type: ignore[union-attr]
    assert step.deferral is not None
    assert step.deferral.model == "learned.tiny.deferral.onnx" and step.deferral.inputs
    assert step.calibration is None and step.threshold is not None
    # the rule reads tiny's output and the row: 2 * 10 + 3 + 64 columns
    assert OnnxModel(rule).input_spec.width == 2 * 10 + 3 + 64
    # certified on half B only: the points' rows are half the calibration split
    assert len(result.points) > 1
    evaluator = Evaluator(reloaded)
    row = evaluator.evaluate(data.test.X, data.test.y)[0]
    rule_cost = evaluator.rule_costs(reloaded.policy)["tiny"]
    assert rule_cost > 0
    # the rule runs on every row (all rows reach tiny), so its cost is in every row's
    costs = evaluator.costs
    replay = evaluator.replay(reloaded.policy, data.test.X)
    bare = np.mean([d.cost for d in replay.decisions])
    assert row.relative_cost == pytest.approx((bare + rule_cost) / costs["large"])


def test_a_rule_reads_earlier_tiers_on_the_rows_that_reached_it(policy_dir: Path) -> None:
    data = read_dataset("digits")
    models = {t: OnnxModel(policy_dir / f"{t}.onnx") for t in ("tiny", "small", "large")}
    p_cal = {t: m.predict_sync(data.calibration.X) for t, m in models.items()}
    features = deferral_features(p_cal["small"], earlier=[p_cal["tiny"]])
    wrong = p_cal["small"].argmax(axis=1) != data.calibration.y
    train_deferral(features, wrong, policy_dir / "rule.onnx", kind="logistic")
    path = policy_dir / "three.yaml"
    path.write_text(
        "name: three\ntiers:\n  tiny: {model: tiny.onnx}\n  small: {model: small.onnx}\n"
        "  large: {model: large.onnx}\nrouting:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.9}\n"
        "    - {tier: small, threshold: 0.9, deferral: {model: rule.onnx, earlier: [tiny]}}\n"
        "    - {tier: large}\n"
    )
    engine = Engine(read_policy(path).policy, models, base_dir=policy_dir,
                    costs={"tiny": 0.01, "small": 0.1, "large": 1.0},
                    latency_ms={"tiny": 1.0, "small": 1.0, "large": 1.0})  # fmt: skip
    X = data.test.X
    result = asyncio.run(engine.run(X))

    p = {t: m.predict_sync(X) for t, m in models.items()}
    at_tiny = p["tiny"].max(axis=1) >= 0.9
    rule = OnnxModel(policy_dir / "rule.onnx")
    keep_small = 1 - rule.predict_sync(deferral_features(p["small"], earlier=[p["tiny"]]))[:, 1]
    at_small = ~at_tiny & (keep_small >= 0.9)
    expected = np.where(at_tiny, "tiny", np.where(at_small, "small", "large"))
    assert {"tiny", "small", "large"} <= set(expected)  # every path taken
    assert [d.answered_by for d in result.decisions] == expected.tolist()
