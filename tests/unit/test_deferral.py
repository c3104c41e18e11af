"""Escalation rules against the oracle: the oracle's count, the features, the certification."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from cascade.backends import OnnxModel
from cascade.evaluate import (
    Target,
    certified_threshold,
    oracle,
    oracle_curve,
    oracle_share,
    train_deferral,
)
from cascade.routing import confidence, deferral_features, deferral_width


def test_the_oracle_escalates_just_enough_fixable_rows_by_hand_count() -> None:
    # 10 rows. small right on rows 0-5 (6); large right on rows 0-3 and 6-9 (8).
    # fixable (small wrong, large right): rows 6, 7, 8, 9 -> 4.
    small = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    large = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    # target 1.0: need 8 right; small has 6 -> escalate 2 fixable rows
    exact = oracle(small, large, relative_accuracy=1.0)
    assert (exact.n, exact.fixable, exact.escalated) == (10, 4, 2)
    assert exact.escalation == pytest.approx(0.2)
    assert exact.relative_cost(0.1, 1.0) == pytest.approx(0.3)
    # 0.75 of 8 = 6: small alone is enough
    assert oracle(small, large, relative_accuracy=0.75).escalated == 0
    # 0.8 of 8 = 6.4 -> 7 rows right -> one escalation
    assert oracle(small, large, relative_accuracy=0.8).escalated == 1


def test_the_oracle_never_escalates_rows_large_gets_wrong() -> None:
    # fixable: row 0 only; rows 1 and 2 are wrong for both; small alone is right on row 3
    small = np.array([0, 0, 0, 1], dtype=bool)
    large = np.array([1, 0, 0, 1], dtype=bool)
    result = oracle(small, large, relative_accuracy=1.0)
    assert (result.escalated, result.fixable) == (1, 1)
    with pytest.raises(ValueError, match="equal 1-d arrays"):
        oracle(small, large[:3], relative_accuracy=1.0)


def test_an_exact_product_does_not_round_up_to_an_extra_row() -> None:
    # 200 rows, large right on all of them, small right on 199: 0.995 * 200 = 199 exactly
    small = np.r_[np.ones(199, dtype=bool), np.zeros(1, dtype=bool)]
    large = np.ones(200, dtype=bool)
    assert oracle(small, large, relative_accuracy=0.995).escalated == 0


def test_the_oracle_curve_and_share_by_hand_count() -> None:
    # 10 rows: small right on 6, large right on 8; large fixes 3 rows, breaks 1
    small = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    large = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], bool)
    curve = oracle_curve(small, large, cheap_cost=0.1, expensive_cost=1.0)
    # from small alone (6/8 of large's accuracy at 0.1) to all 3 fixable escalated (9/8 at 0.4)
    assert curve == [(pytest.approx(0.1), pytest.approx(6 / 8)), (pytest.approx(0.4), 9 / 8)]
    # at large's accuracy the oracle escalates 2 rows: cost 0.3; a router at 0.65 keeps half
    share = oracle_share(0.65, 1.0, small, large, cheap_cost=0.1, expensive_cost=1.0)
    assert share == pytest.approx((1 - 0.65) / (1 - 0.3))
    # outside what escalation spans (below small's own, above all fixed): no share
    assert oracle_share(0.05, 0.7, small, large, cheap_cost=0.1, expensive_cost=1.0) is None
    assert oracle_share(0.9, 1.2, small, large, cheap_cost=0.1, expensive_cost=1.0) is None
    # an oracle that saves nothing gives no share
    assert oracle_share(0.5, 1.0, small, large, cheap_cost=0.8, expensive_cost=1.0) is None
    assert oracle_curve(small, np.zeros(10, bool), cheap_cost=0.1, expensive_cost=1.0) == []


def test_deferral_features_read_outputs_only_never_labels() -> None:
    parameters = set(inspect.signature(deferral_features).parameters)
    assert parameters == {"probabilities", "earlier", "rows"}  # no label can be passed
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    tiny = rng.dirichlet(np.ones(4), size=50)
    x = rng.normal(size=(50, 3))
    features = deferral_features(p, earlier=[tiny], rows=x)
    assert features.dtype == np.float32
    assert features.shape == (50, deferral_width(4, earlier=1, input_width=3))
    np.testing.assert_allclose(features[:, :4], p, rtol=1e-6)
    np.testing.assert_allclose(features[:, 4], confidence(p, "max_prob"), rtol=1e-6)
    np.testing.assert_allclose(features[:, 5], confidence(p, "margin"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[:, 6], confidence(p, "entropy"), rtol=1e-5, atol=1e-6)
    assert (features[:, 7:11].argmax(axis=1) == p.argmax(axis=1)).all()
    assert (features[:, 7:11].sum(axis=1) == 1).all()
    np.testing.assert_allclose(features[:, 11], tiny.max(axis=1), rtol=1e-6)
    assert (features[:, 12] == (tiny.argmax(axis=1) == p.argmax(axis=1))).all()
    np.testing.assert_allclose(features[:, 13:], x, rtol=1e-6)
    # row by row: a row's features do not depend on the other rows of its batch
    np.testing.assert_array_equal(deferral_features(p[:7]), deferral_features(p)[:7])


def test_deferral_features_refuse_mismatched_inputs() -> None:
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="does not match"):
        deferral_features(p, earlier=[np.full((2, 4), 0.25)])
    with pytest.raises(ValueError, match="rows must have shape"):
        deferral_features(p, rows=np.zeros((3, 2)))


def test_certified_threshold_escalates_the_rows_a_perfect_rule_flags() -> None:
    # 2,000 rows: small wrong on 200 of them, where large is right; elsewhere both right.
    # A rule that is sure exactly where small is right should escalate those 200 and no more.
    n = 2000
    small = np.ones(n, dtype=bool)
    small[::10] = False
    large = np.ones(n, dtype=bool)
    keep = np.where(small, 0.9, 0.1)
    cert = certified_threshold(keep, small, large, target=Target(relative_accuracy=0.995),
                               cheap_cost=0.1, expensive_cost=1.0)  # fmt: skip
    assert cert.threshold is not None and 0.1 < cert.threshold <= 0.9
    assert cert.calibration_escalation == pytest.approx(0.1)
    assert cert.bound is not None and cert.allowed is not None and cert.bound <= cert.allowed


def test_certified_threshold_refuses_what_it_cannot_certify() -> None:
    # a rule unrelated to correctness on few rows: only escalating everything is safe
    rng = np.random.default_rng(1)
    small = rng.random(300) < 0.5
    large = np.ones(300, dtype=bool)
    cert = certified_threshold(rng.random(300), small, large,
                               target=Target(relative_accuracy=0.999),
                               cheap_cost=0.1, expensive_cost=1.0)  # fmt: skip
    assert cert.calibration_escalation in (None, 1.0)


def test_a_trained_deferral_rule_is_onnx_and_scores_like_its_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3) * 0.5, size=400)
    wrong = rng.random(400) > p.max(axis=1)  # less sure, more often wrong
    features = deferral_features(p)
    path = train_deferral(features, wrong, tmp_path / "rule.onnx", kind="logistic")
    assert path.read_bytes()[:1] != b"\x80"  # not a pickle
    scores = OnnxModel(path).predict_sync(features)[:, 1]
    assert scores.shape == (400,)
    # it learned the direction: rows it scores riskier are wrong more often
    risky = scores > np.median(scores)
    assert wrong[risky].mean() > wrong[~risky].mean()
    with pytest.raises(ValueError, match="always or never wrong"):
        train_deferral(features, np.zeros(400, dtype=bool), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="unknown deferral model"):
        train_deferral(features, wrong, tmp_path / "x.onnx", kind="forest")
