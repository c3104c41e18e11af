"""What a load run measured: one record per scheduled request, and the report built from them.

Outcomes: an HTTP 200 is *answered*, a 503 is *shed*, any other status and every transport
error or client timeout is an *error*, and a request the in-flight cap kept from being sent
is *client_dropped*. Fractions are of the requests sent (dropped ones were never offered to
the server). Accuracy and the degraded fraction count rows, the rest count requests.

Example::

    report = BenchReport.from_records(records, duration_s=30, deadline_ms=50)
    print(report.summary())
    json.dumps(report.to_json())
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade._table import table

__all__ = ["MAX_SEND_LAG_MS", "BenchReport", "Outcome", "RequestRecord", "SecondStats"]

Outcome = Literal["answered", "shed", "error", "client_dropped"]

MAX_SEND_LAG_MS = 10.0
"""A run whose send lag p99 is over this measures its client, not the server: invalid."""


@dataclass(frozen=True)
class RequestRecord:
    """One scheduled request: when it was due and sent, how long it took, how it went.

    ``latency_ms`` runs from the *scheduled* send time, so a client that falls behind its
    schedule cannot hide the queueing it causes (coordinated omission); ``sent_s - offset_s``
    is that lag. ``status`` is the HTTP status, ``None`` without a response; ``error`` names
    the exception of a transport error or timeout (``"TimeoutError"``, ``"ConnectError"``)
    or ``"BadResponse"`` for a 200 whose body is not a v2 answer. Per-row fields
    (``correct``, ``degraded``, ``answered_by``) are filled for answered requests only.
    ``retries``: how often a 503 with ``Retry-After`` was sent again (the client's retry
    budget; the latency and outcome are the last attempt's, timed from the first schedule).

    Example::

        RequestRecord(offset_s=0.01, sent_s=0.011, latency_ms=4.2, status=200, rows=1,
                      correct=1, degraded=0, answered_by=("tiny",), gear="normal")
    """

    offset_s: float
    sent_s: float | None = None
    latency_ms: float | None = None
    status: int | None = None
    error: str | None = None
    rows: int = 1
    correct: int = 0
    degraded: int = 0
    answered_by: tuple[str, ...] = ()
    gear: str | None = None
    dropped: bool = False
    retries: int = 0

    @property
    def outcome(self) -> Outcome:
        """``answered``, ``shed``, ``error`` or ``client_dropped``."""
        if self.dropped:
            return "client_dropped"
        if self.error is None and self.status == 200:
            return "answered"
        if self.error is None and self.status == 503:
            return "shed"
        return "error"

    @property
    def error_kind(self) -> str | None:
        """What went wrong, for the breakdown: ``"500"``, ``"TimeoutError"``, … else None."""
        if self.outcome != "error":
            return None
        return self.error if self.error is not None else str(self.status)


@dataclass(frozen=True)
class SecondStats:
    """One second of the run, by *scheduled* send time: what was offered and how it went.

    Latency, accuracy and degraded fraction cover that second's answers (``None`` without
    any); ``gear`` is the most common gear among them.
    """

    second: int
    offered: int
    answered: int
    shed: int
    errors: int
    client_dropped: int
    p50_ms: float | None
    p95_ms: float | None
    accuracy: float | None
    degraded_fraction: float | None
    gear: str | None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ratio(part: int | float, whole: int | float) -> float | None:
    return part / whole if whole else None


def _most_common(items: Iterable[str | None]) -> str | None:
    counts = Counter(item for item in items if item is not None)
    return counts.most_common(1)[0][0] if counts else None


def _second(records: Sequence[RequestRecord], second: int) -> SecondStats:
    answers = [r for r in records if r.outcome == "answered"]
    latencies = [r.latency_ms for r in answers if r.latency_ms is not None]
    rows = sum(r.rows for r in answers)
    outcomes = Counter(r.outcome for r in records)
    return SecondStats(
        second=second,
        offered=len(records),
        answered=outcomes["answered"],
        shed=outcomes["shed"],
        errors=outcomes["error"],
        client_dropped=outcomes["client_dropped"],
        p50_ms=_percentile(latencies, 50),
        p95_ms=_percentile(latencies, 95),
        accuracy=_ratio(sum(r.correct for r in answers), rows),
        degraded_fraction=_ratio(sum(r.degraded for r in answers), rows),
        gear=_most_common(r.gear for r in answers),
    )


@dataclass(frozen=True)
class BenchReport:
    """The summary of a load run, built from its records by :meth:`from_records`.

    Rates are per second of ``duration_s`` (the window the schedule covered). Goodput counts
    answers within ``deadline_ms`` (every answer when there is no deadline); ``late_answers``
    the 200s past it. Fractions are of ``sent``; ``None`` where nothing was there to divide
    by. ``valid`` is false when the generator sent late (``send_lag_p99_ms`` over
    ``max_send_lag_ms``, or nothing sent): then the figures measure the client, not the
    server, and the summary and the JSON say so.

    Example::

        report = BenchReport.from_records(records, duration_s=10, deadline_ms=50)
        report.p99_ms, report.goodput_fraction, report.shed, report.errors_by_kind
    """

    target: str
    schedule: str
    duration_s: float
    deadline_ms: float | None
    scheduled: int
    sent: int
    answered: int
    shed: int
    errors: int
    client_dropped: int
    offered_rps: float
    throughput_rps: float
    goodput_rps: float
    goodput_fraction: float | None
    shed_fraction: float | None
    error_fraction: float | None
    errors_by_kind: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    send_lag_p99_ms: float | None
    rows_answered: int
    accuracy: float | None
    degraded_fraction: float | None
    answers_by_tier: dict[str, int]
    gears: dict[str, int]
    timeline: tuple[SecondStats, ...]
    max_send_lag_ms: float = MAX_SEND_LAG_MS
    valid: bool = True
    late_answers: int = 0
    shed_p50_ms: float | None = None
    shed_p99_ms: float | None = None
    retried: int = 0
    records: tuple[RequestRecord, ...] = field(repr=False, compare=False, default=())

    @classmethod
    def from_records(
        cls,
        records: Sequence[RequestRecord],
        *,
        duration_s: float,
        deadline_ms: float | None = None,
        target: str = "",
        schedule: str = "",
        max_send_lag_ms: float = MAX_SEND_LAG_MS,
    ) -> BenchReport:
        """Summarise the records of a run that covered ``duration_s`` seconds.

        Example::

            BenchReport.from_records([RequestRecord(0.1, 0.1, 3.0, 200, correct=1)],
                                     duration_s=1.0).accuracy    # 1.0
        """
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be a finite number > 0, got {duration_s}")
        answers = [r for r in records if r.outcome == "answered"]
        latencies = [r.latency_ms for r in answers if r.latency_ms is not None]
        sent = [r for r in records if not r.dropped]
        outcomes = Counter(r.outcome for r in records)
        good = sum(
            1
            for r in answers
            if deadline_ms is None or (r.latency_ms is not None and r.latency_ms <= deadline_ms)
        )
        lags = [1000.0 * (r.sent_s - r.offset_s) for r in sent if r.sent_s is not None]
        lag_p99 = _percentile(lags, 99)
        sheds = [r.latency_ms for r in records if r.outcome == "shed" and r.latency_ms is not None]
        rows = sum(r.rows for r in answers)
        kinds = Counter(r.error_kind for r in records if r.error_kind is not None)
        tiers = Counter(tier for r in answers for tier in r.answered_by)
        gears = Counter(r.gear for r in answers if r.gear is not None)
        seconds = max(math.ceil(duration_s), *(int(r.offset_s) + 1 for r in records), 1)
        by_second: list[list[RequestRecord]] = [[] for _ in range(seconds)]
        for r in records:
            by_second[max(int(r.offset_s), 0)].append(r)
        return cls(
            target=target,
            schedule=schedule,
            duration_s=duration_s,
            deadline_ms=deadline_ms,
            scheduled=len(records),
            sent=len(sent),
            answered=outcomes["answered"],
            shed=outcomes["shed"],
            errors=outcomes["error"],
            client_dropped=outcomes["client_dropped"],
            offered_rps=len(records) / duration_s,
            throughput_rps=outcomes["answered"] / duration_s,
            goodput_rps=good / duration_s,
            goodput_fraction=_ratio(good, len(sent)),
            shed_fraction=_ratio(outcomes["shed"], len(sent)),
            error_fraction=_ratio(outcomes["error"], len(sent)),
            errors_by_kind=dict(sorted(kinds.items())),
            p50_ms=_percentile(latencies, 50),
            p95_ms=_percentile(latencies, 95),
            p99_ms=_percentile(latencies, 99),
            send_lag_p99_ms=lag_p99,
            rows_answered=rows,
            accuracy=_ratio(sum(r.correct for r in answers), rows),
            degraded_fraction=_ratio(sum(r.degraded for r in answers), rows),
            answers_by_tier=dict(tiers.most_common()),
            gears=dict(gears.most_common()),
            timeline=tuple(_second(chunk, i) for i, chunk in enumerate(by_second)),
            max_send_lag_ms=max_send_lag_ms,
            valid=lag_p99 is not None and lag_p99 <= max_send_lag_ms,
            late_answers=len(answers) - good,
            shed_p50_ms=_percentile(sheds, 50),
            shed_p99_ms=_percentile(sheds, 99),
            retried=sum(r.retries for r in records),
            records=tuple(records),
        )

    def to_json(self, *, include_requests: bool = False) -> dict[str, Any]:
        """The report as plain JSON types; the per-request records only when asked for.

        Example::

            Path("bench.json").write_text(json.dumps(report.to_json(), indent=2))
        """
        out = {key: value for key, value in asdict(self).items() if key != "records"}
        out["timeline"] = [asdict(second) for second in self.timeline]
        if include_requests:
            out["requests"] = [
                {**asdict(r), "answered_by": list(r.answered_by), "outcome": r.outcome}
                for r in self.records
            ]
        return out

    def summary(self) -> str:
        """A two-column plain-text table of the headline numbers."""
        return table(["metric", "value"], self._summary_rows())

    def _summary_rows(self) -> list[list[str]]:
        deadline = (
            "no deadline" if self.deadline_ms is None else f"deadline {self.deadline_ms:g} ms"
        )
        rows = [
            ["valid", self.validity()],
            ["target", self.target],
            ["schedule", f"{self.schedule} ({self.duration_s:g} s)"],
            ["offered", f"{self.scheduled} requests ({self.offered_rps:.1f}/s)"],
            ["sent", str(self.sent)],
            ["answered (200)", f"{self.answered} ({_pct(_ratio(self.answered, self.sent))})"],
            [
                "shed (503)",
                f"{self.shed} ({_pct(self.shed_fraction)}), p50/p99 "
                f"{_ms(self.shed_p50_ms)}/{_ms(self.shed_p99_ms)} ms",
            ],
            ["errors", f"{self.errors} ({_pct(self.error_fraction)})"],
        ]
        if self.errors_by_kind:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in self.errors_by_kind.items())
            rows.append(["  by kind", kinds])
        rows += [
            ["client dropped", f"{self.client_dropped} (in-flight cap)"],
            [
                "latency p50/p95/p99",
                "/".join(_ms(v) for v in (self.p50_ms, self.p95_ms, self.p99_ms)) + " ms",
            ],
            ["throughput", f"{self.throughput_rps:.1f} answers/s"],
            [
                "goodput",
                f"{self.goodput_rps:.1f}/s ({_pct(self.goodput_fraction)} of sent, {deadline})",
            ],
            ["late answers", f"{self.late_answers} (200s past the deadline)"],
            ["accuracy", f"{_pct(self.accuracy)} of {self.rows_answered} rows"],
            ["degraded", f"{_pct(self.degraded_fraction)} of rows"],
            ["answered by", _counts(self.answers_by_tier, "rows")],
            ["gears", _counts(self.gears, "answers")],
            ["send lag p99", f"{_ms(self.send_lag_p99_ms)} ms"],
        ]
        if self.retried:
            rows.append(["retried", f"{self.retried} sends after a 503's Retry-After"])
        return rows

    def validity(self) -> str:
        """One line: whether the generator kept its schedule, so that the run measures the
        server (``yes``) or the client (``INVALID``)."""
        lag = f"send lag p99 {_ms(self.send_lag_p99_ms)} ms"
        if self.valid:
            return f"yes ({lag} <= {self.max_send_lag_ms:g} ms)"
        if self.send_lag_p99_ms is None:
            return "INVALID: nothing was sent"
        return (f"INVALID: the generator fell behind its schedule ({lag} > "
                f"{self.max_send_lag_ms:g} ms); these figures measure the client")  # fmt: skip

    def plot(self, path: str | Path) -> Path:
        """Save latency, accuracy and gear over time as a PNG (needs ``cascade[plots]``).

        Raises ``ImportError`` with the install hint when matplotlib is missing.

        Example::

            report.plot("bench-results/bench.png")
        """
        return _plot_report(self, Path(path))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _counts(counts: dict[str, int], unit: str) -> str:
    if not counts:
        return "n/a"
    return ", ".join(f"{name} {n}" for name, n in counts.items()) + f" {unit}"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _plot_report(report: BenchReport, path: Path) -> Path:
    """Save the report's timeline to ``path`` (PNG); see :meth:`BenchReport.plot`."""
    try:
        import matplotlib  # noqa: F401  (absent: the hint below, not an error half-way)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plots need matplotlib: pip install "cascade[plots]"') from exc

    timeline = report.timeline
    x = [second.second + 0.5 for second in timeline]
    # a Figure of its own, not pyplot: the caller's backend (a notebook's) stays as it is
    figure = Figure(figsize=(8, 7), dpi=110)
    latency, quality, gear = figure.subplots(3, 1, sharex=True, height_ratios=(3, 2, 1))
    mark = "" if report.valid else "INVALID (generator behind schedule): "
    figure.suptitle(f"{mark}{report.target} — {report.schedule}", fontsize=10)

    latency.plot(x, [_nan(s.p50_ms) for s in timeline], label="p50", color="tab:blue")
    latency.plot(x, [_nan(s.p95_ms) for s in timeline], label="p95", color="tab:orange")
    if report.deadline_ms is not None:
        latency.axhline(report.deadline_ms, color="tab:red", ls="--", lw=1,
                        label=f"deadline {report.deadline_ms:g} ms")  # fmt: skip
    latency.set_ylabel("latency of answers (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper left", fontsize=8)

    quality.plot(x, [_nan(s.accuracy) for s in timeline], label="accuracy", color="tab:green")
    quality.plot(x, [_nan(s.degraded_fraction) for s in timeline], label="degraded",
                 color="tab:purple")  # fmt: skip
    shed = [s.shed / s.offered if s.offered else float("nan") for s in timeline]
    quality.plot(x, shed, label="shed (503)", color="tab:gray", ls=":")
    quality.set_ylabel("fraction")
    quality.set_ylim(-0.02, 1.02)
    quality.legend(loc="lower left", fontsize=8)

    names = list(dict.fromkeys(s.gear for s in timeline if s.gear is not None))
    if names:
        levels = [float(names.index(s.gear)) if s.gear is not None else float("nan")
                  for s in timeline]  # fmt: skip
        gear.step(x, levels, where="mid", color="tab:brown")
        gear.set_yticks(range(len(names)), names)
        gear.set_ylim(-0.5, len(names) - 0.5)
    else:
        gear.set_yticks([])
        gear.text(0.5, 0.5, "gear: n/a", ha="center", va="center", transform=gear.transAxes)
    gear.set_ylabel("gear")
    gear.set_xlabel("seconds since start (by scheduled send time)")
    gear.set_xlim(0, max(len(timeline), 1))

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
