"""Time-aware admission as pure functions: the decision, the service-time fit, the deadline
headers. No clock is read here: every time is given."""

from __future__ import annotations

import pytest

from cascade.errors import InputError
from cascade.load import ServiceEstimate, ServiceTimer, admit, headroom
from cascade.serving import request_budget_ms


def test_a_request_whose_work_fits_its_budget_is_admitted() -> None:
    assert admit(250.0, ahead_ms=40.0, own_ms=5.0) is None
    assert admit(None, ahead_ms=10_000.0, own_ms=5.0) is None  # no deadline: nothing to miss


def test_a_request_the_work_ahead_would_make_late_is_refused_with_a_retry_time() -> None:
    refusal = admit(250.0, ahead_ms=400.0, own_ms=5.0)
    assert refusal is not None
    assert refusal.predicted_ms == 405.0
    assert refusal.retry_after_s == pytest.approx(0.4)  # once the work ahead has drained
    assert "405 ms" in refusal.reason and "250 ms are left" in refusal.reason


def test_a_spent_budget_is_refused_whatever_the_queue() -> None:
    refusal = admit(0.0, ahead_ms=0.0, own_ms=0.0, where="ingress")
    assert refusal is not None and "passed before the request reached the ingress" in refusal.reason
    assert admit(-3.0, ahead_ms=0.0, own_ms=0.0) is not None


def test_lower_priorities_are_refused_first_as_the_queue_grows() -> None:
    budget = 100.0
    admitted_until = {}
    for priority in (1, 2, 3):
        ahead = 0.0
        while admit(budget, ahead_ms=ahead, own_ms=1.0, priority=priority) is None:
            ahead += 1.0
        admitted_until[priority] = ahead
    # the lowest class goes first, the highest last: shedding follows the classes
    assert admitted_until[3] < admitted_until[2] < admitted_until[1]
    assert admitted_until[1] == 100.0  # the highest class may use its whole budget
    assert headroom(0) == headroom(2)  # 0 is the default class (Triton's convention)
    assert headroom(9) == headroom(3)  # every class below the last shares its headroom
    refusal = admit(budget, ahead_ms=60.0, own_ms=1.0, priority=3)
    assert refusal is not None and "priority 3 may use 50" in refusal.reason
    with pytest.raises(ValueError, match="priority"):
        headroom(-1)


def test_the_service_time_fit_recovers_the_cost_per_batch_and_per_row() -> None:
    timer = ServiceTimer()
    assert timer.estimate() is None  # nothing measured yet
    for rows in (8, 64, 32, 256, 16):
        timer.observe(rows, 2.0 + 0.05 * rows)
    estimate = timer.estimate()
    assert estimate is not None
    assert estimate.per_batch_ms == pytest.approx(2.0)
    assert estimate.per_row_ms == pytest.approx(0.05)
    assert estimate.ms(rows=100, batches=2) == pytest.approx(9.0)


def test_one_batch_size_alone_is_charged_per_row() -> None:
    timer = ServiceTimer(prior=ServiceEstimate(1.0, 0.0))
    assert timer.estimate() == ServiceEstimate(1.0, 0.0)
    for _ in range(5):
        timer.observe(64, 6.4)
    assert timer.estimate() == ServiceEstimate(0.0, pytest.approx(0.1))


def test_the_fit_follows_a_machine_that_slows_down() -> None:
    timer = ServiceTimer(half_life=4)
    for _ in range(50):
        timer.observe(10, 10.0)
    for _ in range(50):
        timer.observe(10, 30.0)  # a neighbour took half the core
    estimate = timer.estimate()
    assert estimate is not None and estimate.ms(10) == pytest.approx(30.0, rel=1e-3)
    with pytest.raises(ValueError, match="half_life"):
        ServiceTimer(half_life=0)
    with pytest.raises(ValueError, match="finite"):
        timer.observe(1, float("nan"))


WALL = 1_767_225_600.0


@pytest.mark.parametrize(
    ("headers", "parameter", "expected"),
    [
        ({}, None, None),
        ({}, 300.0, 300.0),
        ({"grpc-timeout": "250m"}, None, 250.0),
        ({"grpc-timeout": "2S"}, 300.0, 300.0),  # the tightest counts
        ({"grpc-timeout": "1M"}, None, 60_000.0),
        ({"grpc-timeout": "500000u"}, None, 500.0),
        ({"x-envoy-expected-rq-timeout-ms": "120"}, 300.0, 120.0),
        ({"x-cascade-deadline": str(WALL + 0.2)}, None, 200.0),
        ({"x-cascade-deadline": str(WALL + 0.2)}, 100.0, 100.0),
        # sent 80 ms ago: a relative budget counts from the send
        ({"x-cascade-sent-at": str(WALL - 0.08)}, 300.0, 220.0),
        ({"x-cascade-sent-at": str(WALL - 0.08), "grpc-timeout": "50m"}, None, -30.0),
        # a send time ahead of this clock is another machine's: no age
        ({"x-cascade-sent-at": str(WALL + 5)}, 300.0, 300.0),
        ({"x-cascade-sent-at": str(WALL - 0.08)}, None, None),  # a send time alone: none
        ({"x-cascade-deadline": str(WALL - 1)}, None, -1000.0),
    ],
)
def test_a_deadline_reaches_the_service_by_parameter_or_standard_header(
    headers: dict[str, str], parameter: float | None, expected: float | None
) -> None:
    budget = request_budget_ms(headers, parameter, wall_s=WALL)
    assert budget == (None if expected is None else pytest.approx(expected, abs=1e-3))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"grpc-timeout": "250"}, "grpc-timeout must be up to 8 digits and a unit"),
        ({"grpc-timeout": "123456789m"}, "grpc-timeout"),
        ({"grpc-timeout": "-5m"}, "grpc-timeout"),
        ({"x-envoy-expected-rq-timeout-ms": "soon"}, "positive number of ms"),
        ({"x-envoy-expected-rq-timeout-ms": "0"}, "positive number of ms"),
        ({"x-cascade-deadline": "tomorrow"}, "x-cascade-deadline must be epoch seconds"),
        ({"x-cascade-deadline": "inf"}, "x-cascade-deadline must be epoch seconds"),
    ],
)
def test_a_deadline_header_that_does_not_parse_is_the_clients_mistake(
    headers: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        request_budget_ms(headers, None, wall_s=WALL)


def test_the_standing_delay_is_the_least_delay_of_the_last_interval() -> None:
    from cascade.load import StandingDelay

    now = [0.0]
    delay = StandingDelay(interval_s=0.1, clock=lambda: now[0])
    for at, ms in [(0.01, 40.0), (0.05, 3.0), (0.09, 50.0)]:  # a burst: one request was quick
        now[0] = at
        assert delay.observe(ms) == 0.0  # no interval complete yet
    now[0] = 0.12
    assert delay.observe(60.0) == 3.0  # the first interval's least: no standing queue
    for at in (0.15, 0.2):
        now[0] = at
        delay.observe(70.0)
    now[0] = 0.25
    assert delay.observe(80.0) == 60.0  # every request of that interval waited >= 60 ms
    now[0] = 1.0  # a quiet spell: an interval with no arrival had no queue
    assert delay.observe(2.0) == 0.0


def test_requests_are_refused_while_the_delay_before_the_service_stands_high() -> None:
    from cascade.load import behind

    refusal = behind(80.0, standing_ms=60.0, budget_ms=1000.0)  # target: 3 % of 1 s
    assert refusal is not None and "behind its arrivals" in refusal.reason
    assert refusal.retry_after_s == pytest.approx(0.06)
    assert behind(80.0, standing_ms=20.0, budget_ms=1000.0) is None  # not standing
    assert behind(10.0, standing_ms=60.0, budget_ms=1000.0) is None  # this one came quick
    assert behind(80.0, standing_ms=60.0, budget_ms=None) is None  # no deadline to keep
    assert behind(None, standing_ms=60.0, budget_ms=1000.0) is None  # no send time
    assert behind(80.0, standing_ms=50.0, budget_ms=1000.0, priority=1) is None  # 2x target
    assert behind(6.0, standing_ms=6.0, budget_ms=100.0) is not None  # at least 5 ms
    # behind HAProxy's bounded queue a request may have waited up to its bound on purpose
    assert behind(60.0, standing_ms=45.0, budget_ms=1000.0, allowed_ms=20.0) is None
    assert behind(80.0, standing_ms=60.0, budget_ms=1000.0, allowed_ms=20.0) is not None
