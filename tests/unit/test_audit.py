"""The live audit's pure logic: the shared bound, estimates, windows, drift, sampling and
alarms, with an injected clock and seeded random draws. No asyncio, no server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta

from cascade.audit import (
    MIN_EVENTS,
    Alarms,
    AuditLimits,
    DriftWindow,
    LiveStats,
    Sampler,
    clopper_pearson_upper,
    loss_bound,
    psi,
    reference_from,
)
from cascade.evaluate import loss_upper_bound


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(**overrides: object) -> AuditLimits:
    values: dict[str, object] = {
        "top": "large",
        "costs": {"tiny": 0.01, "large": 1.0},
        "sample_rate": 1.0,
        "max_rows_per_s": 1e6,
        "target": 0.99,
        "floor": 0.99,
        "calibrated_cost": 0.2,
        "min_rows": 1,
    }
    return AuditLimits(**(values | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_over_a_grid(confidence: float) -> None:
    for n in (1, 2, 3, 7, 10, 37, 100, 500, 2000, 10_000):
        for k in sorted({0, 1, 2, 5, 9, n // 3, n // 2, n - 1, n} & set(range(n + 1))):
            ours = clopper_pearson_upper(k, n, confidence=confidence)
            ref = 1.0 if k == n else float(beta.ppf(confidence, k + 1, n - k))
            assert ours == pytest.approx(ref, abs=1e-6), (n, k)


def test_loss_bound_from_counts_is_the_calibration_bound() -> None:
    """calibrate's bound on arrays goes through the same function: CLT with the sample
    standard deviation from MIN_EVENTS non-zero rows on, Clopper-Pearson below."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(20, 3000))
        d = rng.choice([-1, 0, 1], size=n, p=[0.02, 0.95, 0.03]).astype(np.int8)
        losses, gains = int((d > 0).sum()), int((d < 0).sum())
        if losses + gains >= MIN_EVENTS:
            clt = d.mean() + 1.6448536269514722 * d.std(ddof=1) / math.sqrt(n)
            assert loss_bound(losses, gains, n, confidence=0.95) == pytest.approx(clt, rel=1e-9)
        else:
            cp = beta.ppf(0.95, losses + 1, n - losses)
            assert loss_bound(losses, gains, n, confidence=0.95) == pytest.approx(cp, abs=1e-6)
        assert loss_upper_bound(d, confidence=0.95) == loss_bound(losses, gains, n, confidence=0.95)


def test_estimates_match_a_hand_computation() -> None:
    """80 of 100 rows answered by tiny (cost 0.01), 20 escalated to large (0.01 + 1); 40 of
    tiny's rows audited, 4 disagreeing: estimate 1 - 0.8 * 4/40 = 0.92; the lower bound
    uses Clopper-Pearson (4 < MIN_EVENTS events)."""
    stats = LiveStats(_limits(), clock=_Clock())
    stats.served(answered={"tiny": 80, "large": 20}, rows=100, cost=80 * 0.01 + 20 * 1.01,
                 escalated=20)  # fmt: skip
    for i in range(40):
        stats.audited("tiny", agreed=i >= 4)
    window = stats.snapshot()["window"]
    assert window["relative_accuracy"]["estimate"] == pytest.approx(0.92)
    lower = 1 - 0.8 * beta.ppf(0.95, 5, 36)
    assert window["relative_accuracy"]["lower"] == pytest.approx(lower, abs=1e-6)
    assert window["relative_cost"] == pytest.approx(0.21)
    assert window["escalation"] == pytest.approx(0.2)
    assert window["tiers"]["tiny"] == {"share": 0.8, "audited": 40, "agreement": 0.9}
    assert window["tiers"]["large"] == {"share": 0.2}


def test_with_no_audited_row_there_is_no_estimate_unless_the_top_tier_answered_all() -> None:
    stats = LiveStats(_limits(), clock=_Clock())
    stats.served(answered={"large": 5}, rows=5, cost=5.0, escalated=0)
    assert stats.snapshot()["window"]["relative_accuracy"] == {"estimate": 1.0, "lower": 1.0}
    stats.served(answered={"tiny": 5}, rows=5, cost=0.05, escalated=0)
    assert stats.snapshot()["window"]["relative_accuracy"] == {"estimate": None, "lower": None}


def test_windows_keep_the_last_rows_and_drop_old_ones_while_totals_stay() -> None:
    clock = _Clock()
    stats = LiveStats(_limits(window_rows=100, window_audited=10, window_s=60), clock=clock)
    for _ in range(15):
        stats.served(answered={"tiny": 10}, rows=10, cost=0.1, escalated=0)
        stats.audited("tiny", agreed=False)
    snap = stats.snapshot()
    assert (snap["window"]["rows"], snap["window"]["audited"]) == (100, 10)
    assert (snap["total"]["rows"], snap["total"]["audited"]) == (150, 15)
    clock.now += 61  # everything in the windows is now older than window_s
    stats.served(answered={"large": 1}, rows=1, cost=1.0, escalated=1)
    snap = stats.snapshot()
    assert (snap["window"]["rows"], snap["window"]["audited"]) == (1, 0)
    assert snap["window"]["relative_accuracy"]["estimate"] == 1.0
    assert snap["total"]["rows"] == 151


def test_drift_is_quiet_on_the_reference_and_flags_a_shift_within_2000_rows() -> None:
    """20,000 rows drawn from the calibration distribution never pass 0.2; after a shift
    (the cheap tier less sure of itself) the score passes it within 2,000 rows."""
    rng = np.random.default_rng(20)
    calibration = 1 - rng.beta(0.6, 6.0, size=2000)  # most rows confident, a tail of doubt
    ref = reference_from(calibration, tier="tiny", measure="max_prob")
    window = DriftWindow(ref, size=1000, min_rows=500)
    scores = []
    for chunk in np.split(1 - rng.beta(0.6, 6.0, size=20_000), 2000):
        window.add(chunk.tolist())
        scores.append(window.score())
    assert max(s for s in scores if s is not None) < 0.2
    flagged_after = None
    shifted = 1 - rng.beta(0.9, 4.0, size=2000)
    for i, chunk in enumerate(np.split(shifted, 200)):
        window.add(chunk.tolist())
        score = window.score()
        if score is not None and score > 0.2:
            flagged_after = (i + 1) * 10
            break
    assert flagged_after is not None and flagged_after <= 2000


def test_reference_bins_merge_ties_and_shares_sum_to_one() -> None:
    values = np.r_[np.ones(700), np.linspace(0.3, 0.99, 300)]  # 70 % at exactly 1.0
    ref = reference_from(values, tier="tiny", measure="max_prob")
    assert len(ref.shares) == len(ref.edges) + 1 < 10
    assert sum(ref.shares) == pytest.approx(1.0, abs=1e-5)
    assert ref.shares[ref.bin(1.0)] == pytest.approx(0.7)
    assert psi(ref.shares, ref.shares) == 0.0
    near_one = np.r_[np.full(150, 0.9999997), np.linspace(0.5, 0.99, 850)]
    below_one = reference_from(near_one, tier="t", measure="max_prob")
    assert min(below_one.shares) > 0  # an edge rounded up to 1.0 leaves no empty bin


def test_sampling_stops_under_a_gear_and_after_a_shed() -> None:
    clock = _Clock()
    sampler = Sampler(rate=1.0, max_rows_per_s=1e6, quiet_after_shed_s=5, clock=clock)
    assert sampler.pick(3, gear="normal") == [0, 1, 2]
    assert sampler.pick(3, gear="auto-large") == []
    sampler.shed()
    clock.now += 4.9
    assert sampler.pick(3, gear="normal") == []
    clock.now += 0.2
    assert sampler.pick(3, gear="normal") == [0, 1, 2]
    assert sampler.refused == {"skipped_gear": 3, "skipped_shed": 3}


def test_sampling_draws_at_the_rate_and_the_token_bucket_caps_rows_per_second() -> None:
    clock = _Clock()
    rng = np.random.default_rng(3)
    sampler = Sampler(rate=0.1, max_rows_per_s=1e6, quiet_after_shed_s=0, clock=clock,
                      rng=lambda: float(rng.random()))  # fmt: skip
    picked = sum(len(sampler.pick(100, gear="normal")) for _ in range(100))
    assert 900 < picked < 1100
    capped = Sampler(rate=1.0, max_rows_per_s=50, quiet_after_shed_s=0, clock=clock)
    assert len(capped.pick(200, gear="normal")) == 50  # one second's worth to start
    assert capped.pick(10, gear="normal") == []
    clock.now += 0.1
    assert len(capped.pick(10, gear="normal")) == 5
    assert capped.refused["rate_limited"] == 150 + 10 + 5


def test_an_alarm_waits_until_its_condition_has_held_over_after_rows() -> None:
    alarms = Alarms(after_rows=500)
    assert alarms.update({"drift": "shifted"}, rows=1000) == []
    assert alarms.update({}, rows=1200) == []  # a blip: never raised, nothing to clear
    assert alarms.update({"drift": "shifted"}, rows=1300) == []
    assert alarms.update({"drift": "shifted"}, rows=1700) == []
    assert [(c.kind, c.raised) for c in alarms.update({"drift": "x"}, rows=1800)] == [
        ("drift", True)
    ]


def test_the_accuracy_alarm_waits_for_fresh_audited_rows_not_served_ones() -> None:
    alarms = Alarms(after_rows=500, after_audited=1000)
    assert alarms.update({"accuracy": "low"}, rows=10_000, audited=2000) == []
    # served rows alone do not raise it: the window holds nearly the same audited rows
    assert alarms.update({"accuracy": "low"}, rows=50_000, audited=2900) == []
    raised = alarms.update({"accuracy": "low", "cost": "dear"}, rows=50_100, audited=3000)
    assert [(c.kind, c.raised) for c in raised] == [("accuracy", True)]
    # the cost alarm counts served rows from when its own condition first held
    assert [c.kind for c in alarms.update({"accuracy": "low", "cost": "dear"},
                                          rows=50_600, audited=3000)] == ["cost"]  # fmt: skip
    assert [(c.kind, c.raised) for c in alarms.update({}, rows=50_700, audited=3100)] == [
        ("accuracy", False), ("cost", False)
    ]  # fmt: skip


def test_alarms_change_once_when_raised_and_once_when_cleared() -> None:
    alarms = Alarms()
    assert [(c.kind, c.raised) for c in alarms.update({"cost": "too dear"})] == [("cost", True)]
    assert alarms.update({"cost": "still too dear"}) == []
    assert alarms.active == {"cost": "still too dear"}
    assert [(c.kind, c.raised) for c in alarms.update({})] == [("cost", False)]
    assert alarms.update({}) == []


def test_conditions_name_the_tier_and_figures_and_wait_for_enough_audited_rows() -> None:
    stats = LiveStats(_limits(min_audited_rows=100), clock=_Clock())
    stats.served(answered={"tiny": 900, "large": 100}, rows=1000, cost=900 * 0.01 + 101,
                 escalated=100)  # fmt: skip
    for i in range(50):
        stats.audited("tiny", agreed=i % 10 != 0)  # 90 % agreement: far below 0.99
    assert stats.conditions(stats.snapshot())["accuracy"] is None  # 50 < 100 audited rows
    for i in range(50):
        stats.audited("tiny", agreed=i % 10 != 0)
    conditions = stats.conditions(stats.snapshot())
    assert conditions["accuracy"] is not None
    assert "tier=tiny agreement=0.9000" in conditions["accuracy"]
    assert conditions["cost"] is None  # 0.11 against 0.2 x 1.25
    assert conditions["drift"] is None  # no reference: no drift alarm


def test_cost_alarm_waits_for_min_rows() -> None:
    stats = LiveStats(_limits(min_rows=200), clock=_Clock())
    stats.served(answered={"large": 100}, rows=100, cost=101.0, escalated=100)
    assert stats.conditions(stats.snapshot())["cost"] is None  # 100 < 200 rows
    stats.served(answered={"large": 100}, rows=100, cost=101.0, escalated=100)
    assert stats.conditions(stats.snapshot())["cost"] is not None


def test_cost_alarm_uses_the_factor() -> None:
    stats = LiveStats(_limits(calibrated_cost=0.2, cost_alarm_factor=1.25), clock=_Clock())
    stats.served(answered={"tiny": 77, "large": 23}, rows=100, cost=77 * 0.01 + 23 * 1.01,
                 escalated=23)  # fmt: skip
    assert stats.snapshot()["window"]["relative_cost"] == pytest.approx(0.24)
    assert stats.conditions(stats.snapshot())["cost"] is None  # 0.24 <= 0.2 x 1.25
    stats.served(answered={"large": 10}, rows=10, cost=10.1, escalated=10)
    message = stats.conditions(stats.snapshot())["cost"]
    assert message is not None
    assert "> calibrated 0.2 x 1.25 = 0.2500 (answered by tier: large=" in message
