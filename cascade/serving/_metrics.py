"""What the service counts, once for every runtime: metric names, labels, buckets and the
recording of a request's decisions into them.

A runtime subclasses :class:`RecordingMetrics` with three primitives (``inc``, ``set``,
``observe``) over its own sink: Ray Serve's metrics in the cluster, Prometheus text kept in
memory on the edge. One dashboard reads both: a scraper sees the same names on both runtimes
(:data:`SCRAPED_PREFIX`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from cascade.audit import ALARM_KINDS

__all__ = [
    "LATENCY_BUCKETS_MS",
    "METRICS",
    "PHASE_BUCKETS_MS",
    "ROW_BUCKETS",
    "SCRAPED_PREFIX",
    "MetricSpec",
    "RecordingMetrics",
]

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
PHASE_BUCKETS_MS = (0.01, 0.025, 0.05, *LATENCY_BUCKETS_MS)
"""Phases of a request run from µs (admission) to the whole request's time."""
ROW_BUCKETS = (1, 2, 4, 8, 16, 64, 256, 1024)
SCRAPED_PREFIX = "ray_"
"""What a scraper sees before every name of :data:`METRICS`: Ray's exporter puts its
namespace there (hard-coded in Ray 2.60), and the edge writes the same, so that one
dashboard, alert or recording rule reads both runtimes (``ray_cascade_requests_total``)."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its kind, help text, label names and (histograms) bucket bounds."""

    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ("model",)
    buckets: tuple[float, ...] = ()


METRICS: dict[str, MetricSpec] = {
    "cascade_requests_total": MetricSpec("counter", "requests"),
    "cascade_answers_total": MetricSpec("counter", "rows answered per tier", ("model", "tier")),
    "cascade_escalations_total": MetricSpec("counter", "rows answered past their entry tier"),
    "cascade_degraded_total": MetricSpec("counter", "degraded rows"),
    "cascade_request_rows": MetricSpec("histogram", "rows per request", buckets=ROW_BUCKETS),
    "cascade_tier_latency_ms": MetricSpec(
        "histogram", "tier call latency", ("model", "tier"), LATENCY_BUCKETS_MS
    ),
    "cascade_request_latency_ms": MetricSpec(
        "histogram", "request latency", buckets=LATENCY_BUCKETS_MS
    ),
    "cascade_shed_total": MetricSpec("counter", "requests refused with a 503", ("model", "why")),
    "cascade_cache_hits_total": MetricSpec(
        "counter", "rows answered from a cache", ("model", "cache")
    ),
    "cascade_cache_rows_total": MetricSpec(
        "counter",
        "rows looked up in the caches, by outcome (exact_hit, similar_hit, miss)",
        ("model", "outcome"),
    ),
    "cascade_cache_false_hit_rate": MetricSpec(
        "gauge", "audited similarity hits whose cached answer differed from the cascade's"
    ),
    "cascade_stage_candidates_total": MetricSpec(
        "counter", "candidates scored per ranking stage", ("model", "stage")
    ),
    "cascade_gear": MetricSpec("gauge", "engaged gear (0: normal)"),
    "cascade_audit_rows_total": MetricSpec(
        "counter",
        "rows of the live audit by the tier that answered them and outcome (agreed, "
        "disagreed with the top tier; dropped, failed, skipped_gear, skipped_shed)",
        ("model", "tier", "outcome"),
    ),
    "cascade_live_relative_accuracy": MetricSpec(
        "gauge",
        "live agreement with the top tier over the audit's window: estimate and lower bound",
        ("model", "bound"),
    ),
    "cascade_live_relative_cost": MetricSpec(
        "gauge", "live cost per row over the audit's window, relative to the top tier's"
    ),
    "cascade_live_escalation_rate": MetricSpec(
        "gauge", "share of rows answered past their entry tier over the audit's window"
    ),
    "cascade_drift_score": MetricSpec(
        "gauge", "PSI of the first tier's confidence against the calibration split's"
    ),
    "cascade_alarm": MetricSpec(
        "gauge",
        "1 while the audit's alarm of this kind (accuracy, cost, drift) is raised",
        ("model", "kind"),
    ),
    "cascade_phase_latency_ms": MetricSpec(
        "histogram",
        "time per phase of the requests the policy's profile section samples",
        ("model", "phase"),
        PHASE_BUCKETS_MS,
    ),
    "cascade_log_records_total": MetricSpec(
        "counter",
        "rows of the answer log (and feedback labels), by outcome: written, dropped (its "
        "queue full) or failed (a write error)",
        ("model", "outcome"),
    ),
    # a shadow policy (cascade.serving._shadow): its rows and the side-by-side figures;
    # ``policy`` is serving or candidate
    "cascade_shadow_rows_total": MetricSpec(
        "counter",
        "sampled rows of a shadow policy, by outcome (compared; dropped: queue full; "
        "skipped: a gear or shedding; failed)",
        ("model", "outcome"),
    ),
    "cascade_shadow_agreement": MetricSpec(
        "gauge", "share of shadowed rows where the candidate's answer equals the served one"
    ),
    "cascade_shadow_top_agreement": MetricSpec(
        "gauge",
        "share of a policy's answers equal to the top tier's, over the shadowed rows the "
        "other policy answered with the top tier",
        ("model", "policy"),
    ),
    "cascade_shadow_relative_cost": MetricSpec(
        "gauge", "cost per shadowed row over the top tier's", ("model", "policy")
    ),
    "cascade_shadow_escalation_rate": MetricSpec(
        "gauge", "share of shadowed rows answered past their entry tier", ("model", "policy")
    ),
    "cascade_shadow_latency_ms": MetricSpec(
        "histogram",
        "engine time of a shadowed request (its slowest row)",
        ("model", "policy"),
        LATENCY_BUCKETS_MS,
    ),
}


class RecordingMetrics(ABC):
    """:class:`~cascade.serving.ServiceMetrics` over the metrics of :data:`METRICS`.

    ``cascade_answers_total{tier}`` counts rows answered per tier (cache hits as
    ``tier="cache"``); ``cascade_escalations_total``, rows answered past their entry tier;
    ``cascade_tier_latency_ms``, one observation per batched call; ``cascade_shed_total{why}``,
    503s (``admission``: a deadline out of reach on arrival, ``late``: an answer past its
    deadline, ``body``, ``backpressure``); ``cascade_cache_false_hit_rate``, the audited
    similarity hits (see ``audit_rate``); ``cascade_phase_latency_ms{phase}``, one observation
    per phase of each request the policy sampled (phases: ``cascade.serving._profile``);
    ``cascade_audit_rows_total`` and the ``cascade_live_*``, ``cascade_drift_score`` and
    ``cascade_alarm`` gauges, the live audit (``cascade.serving._audit``), about once a
    second while it runs.
    ``cascade_log_records_total{outcome}``, the answer log's rows (``written``, ``dropped``,
    ``failed``), reported as requests pass, so it trails the writer by a request.
    """

    @abstractmethod
    def inc(self, name: str, amount: float, labels: dict[str, str]) -> None:
        """Add ``amount`` to counter ``name``."""

    @abstractmethod
    def set(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Set gauge ``name``."""

    @abstractmethod
    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        """Add one observation to histogram ``name``."""

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        tags = {"model": model}
        self.inc("cascade_requests_total", 1, tags)
        self.observe("cascade_request_rows", len(decisions), tags)
        self.observe("cascade_request_latency_ms", elapsed_ms, tags)
        # rows counted here, each series incremented once: a sink's call costs µs (Ray's
        # Counter.inc checks its tags), 64 of them per 64-row request were 7 % of the ingress
        answers: dict[str, int] = {}
        cache_hits: dict[str, int] = {}
        escalated = degraded = 0
        for decision in decisions:
            if decision.cache_hit:
                cache = decision.cache or "exact"
                cache_hits[cache] = cache_hits.get(cache, 0) + 1
                answers["cache"] = answers.get("cache", 0) + 1
                continue
            answers[decision.answered_by] = answers.get(decision.answered_by, 0) + 1
            if decision.steps and decision.answered_by != decision.steps[0].tier:
                escalated += 1
            if decision.degraded:
                degraded += 1
        for cache, rows in cache_hits.items():
            self.inc("cascade_cache_hits_total", rows, tags | {"cache": cache})
        for tier, rows in answers.items():
            self.inc("cascade_answers_total", rows, tags | {"tier": tier})
        if escalated:
            self.inc("cascade_escalations_total", escalated, tags)
        if degraded:
            self.inc("cascade_degraded_total", degraded, tags)
        seen = {(s.tier, s.latency_ms) for d in decisions for s in d.steps}
        for tier, latency_ms in seen:  # one observation per batched call, not per row
            self.observe("cascade_tier_latency_ms", latency_ms, tags | {"tier": tier})

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        tags = {"model": model}
        self.inc("cascade_requests_total", 1, tags)
        self.observe("cascade_request_latency_ms", elapsed_ms, tags)
        for stage in ranking.stages:
            self.inc("cascade_stage_candidates_total", stage.candidates_in,
                     tags | {"stage": stage.stage})  # fmt: skip
            self.observe("cascade_tier_latency_ms", stage.ms, tags | {"tier": stage.tier})

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        for outcome, rows in outcomes.items():
            if rows:
                self.inc("cascade_cache_rows_total", rows, {"model": model, "outcome": outcome})
        if false_hit_rate is not None:
            self.set("cascade_cache_false_hit_rate", false_hit_rate, {"model": model})

    def shed(self, model: str, why: str) -> None:
        self.inc("cascade_shed_total", 1, {"model": model, "why": why})

    def profile(self, model: str, phases: dict[str, float]) -> None:
        for phase, ms in phases.items():
            self.observe("cascade_phase_latency_ms", ms, {"model": model, "phase": phase})

    def gear(self, model: str, index: int) -> None:
        self.set("cascade_gear", index, {"model": model})

    def audit(self, model: str, snapshot: dict[str, Any], rows: dict[tuple[str, str], int]) -> None:
        tags = {"model": model}
        for (tier, outcome), n in rows.items():
            if n:
                self.inc("cascade_audit_rows_total", n,
                         tags | {"tier": tier, "outcome": outcome})  # fmt: skip
        window = snapshot["window"]
        for bound, value in window["relative_accuracy"].items():
            if value is not None:
                self.set("cascade_live_relative_accuracy", value, tags | {"bound": bound})
        if window["relative_cost"] is not None:
            self.set("cascade_live_relative_cost", window["relative_cost"], tags)
        if window["escalation"] is not None:
            self.set("cascade_live_escalation_rate", window["escalation"], tags)
        if snapshot["drift"]["score"] is not None:
            self.set("cascade_drift_score", snapshot["drift"]["score"], tags)
        for kind in ALARM_KINDS:
            self.set("cascade_alarm", float(kind in snapshot["alarms"]), tags | {"kind": kind})

    def answer_log(self, model: str, rows: dict[str, int]) -> None:
        for outcome, count in rows.items():
            self.inc("cascade_log_records_total", count, {"model": model, "outcome": outcome})

    def shadow(self, model: str, outcome: str, rows: int, figures: Any = None) -> None:
        """``rows`` sampled rows of a shadow policy and their ``outcome``; after a
        comparison, ``figures`` (a :class:`~cascade.serving._shadow.ShadowFigures`) sets
        the gauges and the two latency histograms."""
        tags = {"model": model}
        self.inc("cascade_shadow_rows_total", rows, tags | {"outcome": outcome})
        if figures is None:
            return
        if figures.agreement is not None:
            self.set("cascade_shadow_agreement", figures.agreement, tags)
        for policy, side in (("serving", figures.serving), ("candidate", figures.candidate)):
            labels = tags | {"policy": policy}
            self.set("cascade_shadow_relative_cost", side.relative_cost, labels)
            self.set("cascade_shadow_escalation_rate", side.escalation_rate, labels)
            if side.top_agreement is not None:
                self.set("cascade_shadow_top_agreement", side.top_agreement, labels)
            self.observe("cascade_shadow_latency_ms", side.latency_ms, labels)
