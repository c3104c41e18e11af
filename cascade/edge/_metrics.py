"""The service's metrics in the Prometheus text format, for ``GET /metrics`` of the edge.

The same names, labels and buckets as the Ray ingress exports (``deployments/app.py``), so
one dashboard reads both runtimes. Hand-written: a few counters and histograms do not need
a client library on a box with a few hundred MB to spare.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

__all__ = ["PrometheusMetrics"]

_LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 64, 256, 1024)

_Labels = tuple[tuple[str, str], ...]

_HELP = {
    "cascade_requests_total": ("counter", "requests"),
    "cascade_answers_total": ("counter", "rows answered per tier"),
    "cascade_escalations_total": ("counter", "rows answered past their entry tier"),
    "cascade_degraded_total": ("counter", "degraded rows"),
    "cascade_request_rows": ("histogram", "rows per request"),
    "cascade_tier_latency_ms": ("histogram", "tier call latency"),
    "cascade_request_latency_ms": ("histogram", "request latency"),
    "cascade_shed_total": ("counter", "requests refused with a 503"),
    "cascade_cache_hits_total": ("counter", "rows answered from a cache"),
    "cascade_cache_rows_total": (
        "counter",
        "rows looked up in the caches, by outcome (exact_hit, similar_hit, miss)",
    ),
    "cascade_cache_false_hit_rate": (
        "gauge",
        "audited similarity hits whose cached answer differed from the cascade's",
    ),
    "cascade_stage_candidates_total": ("counter", "candidates scored per ranking stage"),
    "cascade_gear": ("gauge", "engaged gear (0: normal)"),
}


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: _Labels, extra: str = "") -> str:
    parts = [f'{key}="{_escape(value)}"' for key, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class PrometheusMetrics:
    """:class:`~cascade.serving.ServiceMetrics` kept in memory, rendered as Prometheus text.

    One event loop updates it (the edge runs one), so it takes no locks.

    Example::

        metrics = PrometheusMetrics()
        service = InferenceService(metrics=metrics)
        ...
        body = metrics.render()   # GET /metrics
    """

    def __init__(self) -> None:
        self._values: dict[str, dict[_Labels, float]] = {}
        self._histograms: dict[str, dict[_Labels, _Histogram]] = {}

    def _inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        series = self._values.setdefault(name, {})
        key = tuple(labels.items())
        series[key] = series.get(key, 0.0) + amount

    def _set(self, name: str, value: float, **labels: str) -> None:
        self._values.setdefault(name, {})[tuple(labels.items())] = value

    def _observe(self, name: str, value: float, bounds: tuple[float, ...], **labels: str) -> None:
        series = self._histograms.setdefault(name, {})
        key = tuple(labels.items())
        if key not in series:
            series[key] = _Histogram(bounds)
        series[key].observe(value)

    # ---- ServiceMetrics -----------------------------------------------------------------

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        self._inc("cascade_requests_total", model=model)
        self._observe("cascade_request_rows", len(decisions), _ROW_BUCKETS, model=model)
        self._observe("cascade_request_latency_ms", elapsed_ms, _LATENCY_BUCKETS_MS, model=model)
        for decision in decisions:
            if decision.cache_hit:
                self._inc("cascade_cache_hits_total", model=model, cache=decision.cache or "exact")
                self._inc("cascade_answers_total", model=model, tier="cache")
                continue
            self._inc("cascade_answers_total", model=model, tier=decision.answered_by)
            if decision.steps and decision.answered_by != decision.steps[0].tier:
                self._inc("cascade_escalations_total", model=model)
            if decision.degraded:
                self._inc("cascade_degraded_total", model=model)
        seen = {(s.tier, s.latency_ms) for d in decisions for s in d.steps}
        for tier, latency_ms in seen:  # one observation per batched call, not per row
            self._observe(
                "cascade_tier_latency_ms", latency_ms, _LATENCY_BUCKETS_MS, model=model, tier=tier
            )

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        self._inc("cascade_requests_total", model=model)
        self._observe("cascade_request_latency_ms", elapsed_ms, _LATENCY_BUCKETS_MS, model=model)
        for stage in ranking.stages:
            self._inc(
                "cascade_stage_candidates_total",
                stage.candidates_in,
                model=model,
                stage=stage.stage,
            )
            self._observe(
                "cascade_tier_latency_ms",
                stage.ms,
                _LATENCY_BUCKETS_MS,
                model=model,
                tier=stage.tier,
            )

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        for outcome, rows in outcomes.items():
            if rows:
                self._inc("cascade_cache_rows_total", rows, model=model, outcome=outcome)
        if false_hit_rate is not None:
            self._set("cascade_cache_false_hit_rate", false_hit_rate, model=model)

    def shed(self, model: str, why: str) -> None:
        self._inc("cascade_shed_total", model=model, why=why)

    def gear(self, model: str, index: int) -> None:
        self._set("cascade_gear", index, model=model)

    # ---- exposition ---------------------------------------------------------------------

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4) of every series so far."""
        lines: list[str] = []
        for name in sorted({*self._values, *self._histograms}):
            kind, help_text = _HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(self._values.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
            for labels, histogram in sorted(self._histograms.get(name, {}).items()):
                cumulative = 0
                for bound, count in zip(
                    (*histogram.bounds, math.inf), histogram.counts, strict=True
                ):
                    cumulative += count
                    le = f'le="{_number(bound)}"'
                    lines.append(f"{name}_bucket{_labels(labels, le)} {cumulative}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sum)}")
                lines.append(f"{name}_count{_labels(labels)} {cumulative}")
        return "\n".join(lines) + "\n"
