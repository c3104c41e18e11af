"""Degradation gears: immediate up-shifts, held one-step down-shifts, no flapping, validation.

``shift_gear`` is pure, so most tests feed it explicit times; ``GearShifter`` gets a fake
clock.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.load import Gear, GearShifter, GearState, check_gears, shift_gear

PLAN = (
    Gear("normal", above=0.0, max_tier=None),
    Gear("busy", above=0.7, max_tier="large", threshold_shift=0.05),
    Gear("brownout", above=0.9, max_tier="small", threshold_shift=0.15),
    Gear("survival", above=1.2, max_tier="tiny", threshold_shift=1.0),
)


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(loads: list[tuple[float, float]], state: GearState | None = None, **kw: Any) -> GearState:
    """Feed ``(time, load)`` observations in order; return the final state."""
    state = state or GearState(0, None)
    for now, load in loads:
        state = shift_gear(PLAN, state, load, now, **kw)
    return state


def test_up_shift_is_immediate_and_can_skip_gears() -> None:
    assert shift_gear(PLAN, GearState(0), 0.95, now=10.0) == GearState(2, None)
    assert shift_gear(PLAN, GearState(0), 5.0, now=10.0) == GearState(3, None)
    assert shift_gear(PLAN, GearState(0), math.inf, now=10.0) == GearState(3, None)
    # A gear engages at its level exactly.
    assert shift_gear(PLAN, GearState(0), 0.7, now=10.0) == GearState(1, None)
    assert shift_gear(PLAN, GearState(0), 0.69, now=10.0) == GearState(0, None)


def test_up_shift_cancels_a_pending_down_shift() -> None:
    assert shift_gear(PLAN, GearState(1, calm_since=3.0), 0.95, now=4.0) == GearState(2, None)


def test_down_shift_waits_hold_s_below_the_band_one_gear_at_a_time() -> None:
    state = GearState(3, None)
    state = shift_gear(PLAN, state, 0.0, now=0.0)
    assert state == GearState(3, calm_since=0.0)
    state = shift_gear(PLAN, state, 0.0, now=1.9)
    assert state == GearState(3, calm_since=0.0)
    state = shift_gear(PLAN, state, 0.0, now=2.0)
    assert state == GearState(2, calm_since=2.0)
    state = shift_gear(PLAN, state, 0.0, now=3.9)
    assert state.index == 2
    state = shift_gear(PLAN, state, 0.0, now=4.0)
    assert state == GearState(1, calm_since=4.0)
    assert run([(5.9, 0.0)], state) == GearState(1, calm_since=4.0)
    assert run([(5.9, 0.0), (6.0, 0.0)], state) == GearState(0, None)


def test_down_shift_into_a_gear_the_load_still_exceeds_starts_no_timer() -> None:
    # 0.7 is calm for brownout (below 0.9 * 0.8) but not for busy (0.7 * 0.8 = 0.56).
    state = run([(0.0, 0.7), (2.0, 0.7)], GearState(2, None))
    assert state == GearState(1, None)
    assert run([(10.0, 0.7)], state) == GearState(1, None)


def test_a_load_inside_the_hysteresis_band_never_shifts_down() -> None:
    # busy engages at 0.7; with hysteresis 0.2 only loads below 0.56 count as calm.
    loads = [(float(t), 0.56 if t % 2 else 0.69) for t in range(100)]
    assert run(loads, GearState(1, None)) == GearState(1, None)


def test_one_busy_moment_restarts_the_hold() -> None:
    state = run([(0.0, 0.1), (1.5, 0.6)], GearState(1, None))
    assert state == GearState(1, None)
    state = run([(2.5, 0.1), (4.4, 0.1)], state)
    assert state == GearState(1, calm_since=2.5)
    assert run([(4.5, 0.1)], state) == GearState(0, None)


def test_options_change_the_band_and_the_hold() -> None:
    state = GearState(1, None)
    assert run([(0.0, 0.6), (0.0, 0.6)], state, hysteresis=0.0, hold_s=0.0) == GearState(0)
    assert run([(0.0, 0.36), (1.0, 0.36)], state, hysteresis=0.5, hold_s=1.0) == GearState(1)
    assert run([(0.0, 0.3), (1.0, 0.34)], state, hysteresis=0.5, hold_s=1.0) == GearState(0)


def test_gear_shifter_records_switches() -> None:
    clock = FakeClock()
    shifter = GearShifter(PLAN, hysteresis=0.2, hold_s=2.0, clock=clock)
    assert shifter.gear.name == "normal"
    assert shifter.update(0.95).name == "brownout"
    clock.t = 1.0
    assert shifter.update(0.1).name == "brownout"
    clock.t = 3.0
    assert shifter.update(0.1) is PLAN[1]
    assert shifter.state == GearState(1, calm_since=3.0)
    clock.t = 5.0
    assert shifter.update(0.1) is PLAN[0]
    assert shifter.gear is PLAN[0]
    assert shifter.gears == PLAN
    assert shifter.history == ((0.0, "brownout"), (3.0, "busy"), (5.0, "normal"))


def test_gear_shifter_history_is_bounded() -> None:
    clock = FakeClock()
    shifter = GearShifter(PLAN, hold_s=0.0, clock=clock, max_history=3)
    for step in range(10):
        clock.t = float(step)
        shifter.update(1.0 if step % 2 == 0 else 0.0)
    # hold_s 0 still steps down one gear per update: brownout, busy, brownout, ...
    assert shifter.history == ((7.0, "busy"), (8.0, "brownout"), (9.0, "busy"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "", "above": 0.0}, "gear name must be a non-empty string, got ''"),
        (
            {"name": "busy", "above": -0.1},
            "gear 'busy': above must be finite and >= 0, got -0.1",
        ),
        (
            {"name": "busy", "above": math.nan},
            "gear 'busy': above must be finite and >= 0, got nan",
        ),
        (
            {"name": "busy", "above": 0.5, "threshold_shift": -0.05},
            "gear 'busy': threshold_shift must be finite and >= 0, got -0.05",
        ),
        (
            {"name": "busy", "above": 0.5, "threshold_shift": math.inf},
            "gear 'busy': threshold_shift must be finite and >= 0, got inf",
        ),
        (
            {"name": "busy", "above": 0.5, "max_tier": ""},
            "gear 'busy': max_tier must be a tier name or None, got ''",
        ),
    ],
)
def test_gear_fields_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Gear(**options)


@pytest.mark.parametrize(
    ("gears", "message"),
    [
        ([], "a gear plan needs at least one gear, got none"),
        (
            [Gear("busy", 0.5)],
            "the first gear ('busy') must have above == 0, got 0.5",
        ),
        (
            [Gear("normal", 0.0), Gear("busy", 0.8), Gear("brownout", 0.8)],
            "gears must be sorted by strictly increasing above: "
            "'brownout' (0.8) follows 'busy' (0.8)",
        ),
        (
            [Gear("normal", 0.0), Gear("brownout", 0.9), Gear("busy", 0.7)],
            "gears must be sorted by strictly increasing above: "
            "'busy' (0.7) follows 'brownout' (0.9)",
        ),
        (
            [Gear("normal", 0.0), Gear("busy", 0.7), Gear("busy", 0.9)],
            "gear names must be unique, got ['busy'] more than once",
        ),
    ],
)
def test_plans_are_validated(gears: list[Gear], message: str) -> None:
    pattern = f"^{re.escape(message)}$"
    with pytest.raises(ValueError, match=pattern):
        check_gears(gears)
    with pytest.raises(ValueError, match=pattern):
        shift_gear(gears, GearState(0), 0.0, now=0.0)
    with pytest.raises(ValueError, match=pattern):
        GearShifter(gears)


@pytest.mark.parametrize(
    ("state", "load", "options", "message"),
    [
        (GearState(0), 0.0, {"hysteresis": 1.0}, "hysteresis must lie in [0, 1), got 1.0"),
        (GearState(0), 0.0, {"hysteresis": -0.1}, "hysteresis must lie in [0, 1), got -0.1"),
        (GearState(0), 0.0, {"hold_s": -1.0}, "hold_s must be finite and >= 0, got -1.0"),
        (GearState(0), 0.0, {"hold_s": math.inf}, "hold_s must be finite and >= 0, got inf"),
        (GearState(4), 0.0, {}, "state.index (4) is out of range for 4 gears"),
        (GearState(-1), 0.0, {}, "state.index (-1) is out of range for 4 gears"),
        (GearState(0), math.nan, {}, "load must be a number, got nan"),
    ],
)
def test_shift_gear_arguments_are_validated(
    state: GearState, load: float, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        shift_gear(PLAN, state, load, now=0.0, **options)


def test_gear_shifter_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^hold_s must be finite and >= 0, got -2\.0$"):
        GearShifter(PLAN, hold_s=-2.0)
    with pytest.raises(ValueError, match=r"^max_history must be >= 0, got -1$"):
        GearShifter(PLAN, max_history=-1)


@dataclass(frozen=True)
class Switch:
    step: int
    at: float
    old: int
    new: int


def trace(
    steps: list[tuple[float, float]], hysteresis: float, hold_s: float, start: int = 0
) -> tuple[list[tuple[float, float, GearState]], list[Switch]]:
    """Run ``(dt, load)`` steps from time 0; return every observation and every switch."""
    now = 0.0
    state = GearState(start, None)
    seen: list[tuple[float, float, GearState]] = []
    switches: list[Switch] = []
    for dt, load in steps:
        now += dt
        new = shift_gear(PLAN, state, load, now, hysteresis=hysteresis, hold_s=hold_s)
        if new.index != state.index:
            switches.append(Switch(len(seen), now, state.index, new.index))
        seen.append((now, load, new))
        state = new
    return seen, switches


loads = st.one_of(
    st.floats(0.0, 1.5),
    # Near the boundaries, where flapping would show.
    st.sampled_from([g.above for g in PLAN]).flatmap(lambda b: st.floats(b * 0.7, b * 1.05)),
)
steps = st.lists(st.tuples(st.floats(0.0, 3.0), loads), max_size=80)


@settings(max_examples=200, deadline=None)
@given(steps=steps, hysteresis=st.floats(0.0, 0.5), hold_s=st.floats(0.0, 5.0))
def test_shifting_never_flaps(
    steps: list[tuple[float, float]], hysteresis: float, hold_s: float
) -> None:
    seen, switches = trace(steps, hysteresis, hold_s)
    wanted = [max(i for i, g in enumerate(PLAN) if g.above <= load) for _, load, _ in seen]
    # Never below the gear the load demands; up-shifts go straight there.
    assert all(state.index >= w for (_, _, state), w in zip(seen, wanted, strict=True))
    previous: Switch | None = None
    for switch in switches:
        if switch.new < switch.old:
            assert switch.new == switch.old - 1
            # Every down-shift follows an up-shift (we start in gear 0) by at least hold_s,
            # so there is no up-down-up within hold_s.
            assert previous is not None
            assert switch.at - previous.at >= hold_s
            floor = PLAN[switch.old].above * (1.0 - hysteresis)
            before = seen[: switch.step + 1]
            recent = [load for at, load, _ in before if switch.at - at < hold_s]
            assert all(load < floor for load in recent)
        previous = switch
    if hold_s > 0 and seen:
        downs = sum(1 for s in switches if s.new < s.old)
        assert downs * hold_s <= seen[-1][0] + 1e-9
        assert len(switches) <= 2 * downs + len(PLAN) - 1


@settings(max_examples=200, deadline=None)
@given(
    boundary=st.integers(1, len(PLAN) - 1),
    wobble=st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 1.0)), min_size=1, max_size=80),
)
def test_a_load_hovering_around_a_boundary_switches_at_most_once(
    boundary: int, wobble: list[tuple[float, float]]
) -> None:
    above = PLAN[boundary].above
    top = PLAN[boundary + 1].above if boundary + 1 < len(PLAN) else above * 1.2
    # Loads between the boundary's hysteresis floor and the next gear up, starting in the
    # gear below the boundary (every gear's floor lies above the level of the gear below).
    steps = [(dt, above * 0.8 + u * (top - above * 0.8) * 0.999) for dt, u in wobble]
    _, switches = trace(steps, hysteresis=0.2, hold_s=2.0, start=boundary - 1)
    assert len(switches) <= 1
    assert all(s.new == boundary for s in switches)
