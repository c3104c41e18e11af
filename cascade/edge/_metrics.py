"""The service's metrics in the Prometheus text format, for ``GET /metrics`` of the edge.

The names, labels, buckets and what is recorded come from ``cascade.serving._metrics``,
shared with the Ray ingress, and the names carry the prefix Ray's exporter gives them
(``ray_cascade_requests_total``), so one dashboard reads both runtimes. Hand-written: a few
counters and histograms need no client library on a box with a few hundred MB to spare.
"""

from __future__ import annotations

import bisect
import math

from cascade.serving import METRICS, SCRAPED_PREFIX, RecordingMetrics

__all__ = ["PrometheusMetrics"]

_Labels = tuple[tuple[str, str], ...]


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


class PrometheusMetrics(RecordingMetrics):
    """The service's metrics kept in memory, rendered as Prometheus text.

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

    def inc(self, name: str, amount: float, labels: dict[str, str]) -> None:
        series = self._values.setdefault(name, {})
        key = tuple(labels.items())
        series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: dict[str, str]) -> None:
        self._values.setdefault(name, {})[tuple(labels.items())] = value

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        series = self._histograms.setdefault(name, {})
        key = tuple(labels.items())
        if key not in series:
            series[key] = _Histogram(METRICS[name].buckets)
        series[key].observe(value)

    # ---- exposition ---------------------------------------------------------------------

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4) of every series so far."""
        lines: list[str] = []
        for metric in sorted({*self._values, *self._histograms}):
            spec = METRICS[metric]
            name = SCRAPED_PREFIX + metric  # as Ray's exporter names it: one dashboard
            lines += [f"# HELP {name} {spec.help}", f"# TYPE {name} {spec.kind}"]
            for labels, value in sorted(self._values.get(metric, {}).items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
            for labels, histogram in sorted(self._histograms.get(metric, {}).items()):
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
