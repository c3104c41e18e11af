"""`cascade profile`: a short load of profiled requests, and where their time went.

The client sends pre-encoded requests with ``parameters.profile: true`` and its send time
(header ``x-cascade-sent-at``, epoch seconds: same machine, loopback only), times each one
end to end, and reads the server's phases from the response (``parameters.profile``, a JSON
string; the phases are described in ``cascade.serving._profile``). The report aggregates
them into a breakdown (each phase's share of the client-measured end-to-end time, p50 and
p99), draws it as a PNG and lays every request out as Chrome trace events that Perfetto and
chrome://tracing open. The client is one bare keep-alive HTTP/1.1 connection per sender
(``cascade.bench._http``): a general client's own work per request would count as the server's.

What no phase covers is *unattributed*: the response's way back (the host writing it, Serve's
proxy on Ray, the network, the client reading it) and the profile's own serialization.

Example::

    report = asyncio.run(run_profile("http://127.0.0.1:8000", "covertype", X, rows=64,
                                     requests=200, binary=True))
    print(report.table())
    report.plot("profile-results/profile.png")
    Path("profile.trace.json").write_text(json.dumps(report.trace()))
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from cascade._table import table
from cascade.bench._http import TRANSPORT_ERRORS, Connection, infer_body, request_head
from cascade.bench._loadgen import ModelInfo, fetch_metadata, loopback_url
from cascade.errors import InputError
from cascade.serving import PROFILE_HEADER

__all__ = ["PhaseStats", "ProfileReport", "ProfiledRequest", "run_profile"]


@dataclass(frozen=True)
class ProfiledRequest:
    """One request of the run, as the client saw it and as the server profiled it.

    ``sent_ms`` is when it was sent (client clock, ms since the run started) and ``e2e_ms``
    how long it took until the whole response was read. ``phases`` are the server's
    ``[name, start_ms, duration_ms]``, starts relative to where the server's part began
    (``before`` starts below 0); empty when the request failed (``status`` not 200, or
    ``error``) or came back without a profile.
    """

    index: int
    sent_ms: float
    e2e_ms: float
    status: int | None = None
    error: str | None = None
    total_ms: float | None = None
    phases: tuple[tuple[str, float, float], ...] = ()
    batch: dict[str, int] | None = None

    @property
    def profiled(self) -> bool:
        return self.status == 200 and self.total_ms is not None

    def durations(self) -> dict[str, float]:
        """Milliseconds per phase name (a recurring name, such as ``route``, summed)."""
        out: dict[str, float] = {}
        for name, _, duration in self.phases:
            out[name] = out.get(name, 0.0) + duration
        return out


@dataclass(frozen=True)
class PhaseStats:
    """One row of the breakdown: a phase's share of all end-to-end time, its p50 and p99
    over the requests it occurred in, and the share of requests it occurred in."""

    phase: str
    share: float
    p50_ms: float
    p99_ms: float
    seen: float


def _stats(name: str, values: Sequence[float], e2e_total: float, n: int) -> PhaseStats:
    array = np.asarray(values, dtype=float)
    return PhaseStats(
        phase=name,
        share=float(array.sum() / e2e_total) if e2e_total > 0 else 0.0,
        p50_ms=float(np.percentile(array, 50)) if len(array) else math.nan,
        p99_ms=float(np.percentile(array, 99)) if len(array) else math.nan,
        seen=len(array) / n if n else 0.0,
    )


@dataclass(frozen=True)
class ProfileReport:
    """The breakdown of a profiled run, built from its requests by :meth:`from_records`.

    ``phases`` are in the order they first occur; ``end_to_end`` is the client-measured
    latency, ``phase_sum`` the phases added up per request (``before`` included) and
    ``unattributed`` what is left of each request's end to end. Only profiled requests
    count; ``failed`` are those that were not answered with a profile.

    Example::

        report = ProfileReport.from_records(records, target=url)
        print(report.table())
    """

    target: str
    settings: dict[str, Any]
    phases: tuple[PhaseStats, ...]
    end_to_end: PhaseStats
    phase_sum: PhaseStats
    unattributed: PhaseStats
    profiled: int
    failed: int
    mean_batch_requests: float | None
    records: tuple[ProfiledRequest, ...] = field(repr=False, compare=False, default=())

    @classmethod
    def from_records(
        cls,
        records: Sequence[ProfiledRequest],
        *,
        target: str = "",
        settings: dict[str, Any] | None = None,
    ) -> ProfileReport:
        """Aggregate the requests of a run.

        Example::

            ProfileReport.from_records([ProfiledRequest(0, 0.0, 2.0, 200, total_ms=1.5,
                                        phases=(("parse", 0.0, 1.5),))]).unattributed.p50_ms
            # 0.5
        """
        done = [r for r in records if r.profiled]
        e2e = [r.e2e_ms for r in done]
        e2e_total = float(sum(e2e))
        per_phase: dict[str, list[float]] = {}
        sums, rests = [], []
        for r in done:
            durations = r.durations()
            for name, ms in durations.items():
                per_phase.setdefault(name, []).append(ms)
            sums.append(sum(durations.values()))
            rests.append(r.e2e_ms - sums[-1])
        batches = [r.batch["requests"] for r in done if r.batch]
        n = len(done)
        return cls(
            target=target,
            settings=dict(settings or {}),
            phases=tuple(_stats(name, v, e2e_total, n) for name, v in per_phase.items()),
            end_to_end=_stats("end to end (client)", e2e, e2e_total, n),
            phase_sum=_stats("sum of phases", sums, e2e_total, n),
            unattributed=_stats("unattributed", rests, e2e_total, n),
            profiled=n,
            failed=len(records) - n,
            mean_batch_requests=float(np.mean(batches)) if batches else None,
            records=tuple(records),
        )

    def table(self) -> str:
        """The breakdown as a plain-text table: phase, share of end to end, p50, p99, and
        the share of requests the phase occurred in."""
        rows = [_row(s) for s in self.phases]
        rows += [_row(s) for s in (self.phase_sum, self.unattributed, self.end_to_end)]
        lines = [table(["phase", "share", "p50 ms", "p99 ms", "in"], rows)]
        counts = f"\n{self.profiled} profiled requests ({self.failed} failed)"
        if self.mean_batch_requests is not None:
            counts += f"; {self.mean_batch_requests:.2f} requests per engine batch"
        lines.append(counts)
        return "\n".join(lines)

    def to_json(self, *, include_requests: bool = True) -> dict[str, Any]:
        """The report as plain JSON types (``NaN`` as ``None``), requests included."""
        out: dict[str, Any] = {
            "target": self.target,
            "settings": self.settings,
            "profiled": self.profiled,
            "failed": self.failed,
            "mean_batch_requests": self.mean_batch_requests,
            "phases": [_clean(asdict(s)) for s in self.phases],
            "phase_sum": _clean(asdict(self.phase_sum)),
            "unattributed": _clean(asdict(self.unattributed)),
            "end_to_end": _clean(asdict(self.end_to_end)),
        }
        if include_requests:
            out["requests"] = [
                {**asdict(r), "phases": [list(p) for p in r.phases]} for r in self.records
            ]
        return out

    def trace(self) -> dict[str, Any]:
        """Every profiled request as Chrome trace events (JSON object format).

        One thread (``tid``) per request: a ``request`` event for the client's end to end,
        the server's phases inside it, as complete events (``"ph": "X"``, ``ts`` and ``dur``
        in µs since the run started). The server's part is placed after ``before`` where
        the request has it, else in the middle of its end to end; phases are kept inside
        the request's window. Opens in Perfetto (ui.perfetto.dev) and chrome://tracing.
        """
        events = [_meta("process_name", 0, f"cascade profile {self.target}")]
        for r in self.records:
            if not r.profiled:
                continue
            tid = r.index + 1
            start_us, end_us = r.sent_ms * 1000.0, (r.sent_ms + r.e2e_ms) * 1000.0
            phases = r.durations()
            assert r.total_ms is not None
            before = phases.get("before")
            origin_ms = r.sent_ms + (
                before if before is not None else max(0.0, (r.e2e_ms - r.total_ms) / 2.0)
            )
            events.append(_meta("thread_name", tid, f"request {r.index}"))
            args: dict[str, Any] = {"e2e_ms": r.e2e_ms, "server_ms": r.total_ms}
            if r.batch:
                args["batch"] = r.batch
            own = [_event("request", "client", tid, start_us, end_us - start_us, args)]
            for name, at, duration in r.phases:
                ts = min(max((origin_ms + at) * 1000.0, start_us), end_us)
                ends = min(max(ts + duration * 1000.0, ts), end_us)
                kind = "tier" if name.startswith("tier.") else "server"
                own.append(_event(name, kind, tid, ts, ends - ts))
            own.sort(key=lambda e: (e["ts"], -e["dur"]))  # parents before their children
            events.extend(own)
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"target": self.target, **{k: str(v) for k, v in self.settings.items()}},
        }

    def plot(self, path: str | Path) -> Path:
        """Save the breakdown as a PNG: each phase's mean ms per request, stacked into the
        mean end to end (same colours as below), and its p50 and p99 (needs
        ``cascade[plots]``).

        Example::

            report.plot("profile-results/profile.png")
        """
        return _plot(self, Path(path))


def _meta(name: str, tid: int, value: str) -> dict[str, Any]:
    """A metadata event naming the process or a thread."""
    return {"name": name, "ph": "M", "pid": 1, "tid": tid, "args": {"name": value}}


def _event(
    name: str, cat: str, tid: int, ts: float, dur: float, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A complete event (``"ph": "X"``), ``ts`` and ``dur`` in µs."""
    ts, dur = round(ts, 3), round(dur, 3)  # ns: finer is noise, and bytes
    event = {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": dur, "pid": 1, "tid": tid}
    return event if args is None else {**event, "args": args}


def _row(s: PhaseStats) -> list[str]:
    return [s.phase, f"{100 * s.share:.1f}%", _ms(s.p50_ms), _ms(s.p99_ms), f"{100 * s.seen:.0f}%"]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


def _requests(
    features: npt.NDArray[np.float32],
    info: ModelInfo,
    rows: int,
    count: int,
    *,
    path: str,
    host: str,
    binary: bool,
) -> list[tuple[bytes, bytes]]:
    """Up to ``count`` distinct requests of ``rows`` rows each (cycling through the rows),
    encoded up front: the HTTP head up to the send-time header's value, and the body."""
    n = len(features)
    parameters = {"trace": False, "profile": True}
    out = []
    for i in range(min(n // math.gcd(n, rows), count)):
        chunk = features[[(i * rows + j) % n for j in range(rows)]]
        body, header_length = infer_body(info.input_name, chunk, parameters, binary=binary)
        extra = {"inference-header-content-length": str(header_length)} if binary else {}
        head = request_head(host, path, len(body), {**extra, PROFILE_HEADER: ""})
        out.append((head, body))  # ends with "x-cascade-sent-at: ": post stamps the time
    return out


def _parse_profile(payload: Any) -> tuple[float, tuple[tuple[str, float, float], ...], Any]:
    text = payload["parameters"]["profile"]
    profile = json.loads(text)
    phases = tuple((str(n), float(s), float(d)) for n, s, d in profile["phases"])
    return float(profile["total_ms"]), phases, profile.get("batch")


async def run_profile(
    url: str,
    model: str,
    X: npt.ArrayLike,
    *,
    rows: int = 1,
    requests: int = 200,
    concurrency: int = 1,
    binary: bool = False,
    warmup: int = 20,
    timeout_s: float = 30.0,
) -> ProfileReport:
    """Send ``requests`` profiled requests of ``rows`` rows of ``X`` to
    ``{url}/v2/models/{model}/infer``, ``concurrency`` at a time (closed loop), after
    ``warmup`` unrecorded ones, and aggregate their profiles.

    Only this machine is a valid target: the send time the server reads against its own
    clock means nothing across machines, and load belongs on one's own server.

    Example::

        report = await run_profile("http://127.0.0.1:8000", "digits", X, requests=100)
    """
    base = loopback_url(url)
    for name, value in (("rows", rows), ("requests", requests), ("concurrency", concurrency)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if warmup < 0:
        raise InputError(f"warmup must be >= 0, got {warmup}")
    parsed = httpx.URL(base)
    if parsed.scheme != "http":
        raise InputError(f"cascade profile speaks plain HTTP to this machine, got {url!r}")
    port = parsed.port or 80
    path = f"/v2/models/{quote(model, safe='')}/infer"
    target = f"{base}{path}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), trust_env=False) as client:
        info = await fetch_metadata(client, base, model)
    features = np.asarray(X, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != info.width or not len(features):
        raise InputError(
            f"the rows have shape {list(features.shape)} but model {model!r} takes "
            f"[n, {info.width}] (input {info.input_name!r})"
        )
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    encoded = _requests(features, info, rows, warmup + requests, path=path,
                        host=f"{host}:{port}", binary=binary)  # fmt: skip
    start = time.perf_counter()

    async def one(connection: Connection, index: int) -> ProfiledRequest:
        head, body = encoded[index % len(encoded)]
        began = time.perf_counter()
        try:
            answer = await connection.post(head, body, timeout_s, stamp=True)
        except TRANSPORT_ERRORS as exc:
            took = (time.perf_counter() - began) * 1000.0
            return ProfiledRequest(index, (began - start) * 1000.0, took,
                                   error=type(exc).__name__)  # fmt: skip
        took = (time.perf_counter() - answer.sent) * 1000.0
        record = ProfiledRequest(index, (answer.sent - start) * 1000.0, took, answer.status)
        if answer.status != 200:
            return record
        try:
            total, phases, batch = _parse_profile(json.loads(answer.payload))
        except (ValueError, KeyError, TypeError):
            return ProfiledRequest(index, record.sent_ms, took, 200, error="NoProfile")
        return ProfiledRequest(index, record.sent_ms, took, 200, None, total, phases, batch)

    async def worker(connection: Connection, indices: range, out: list[ProfiledRequest]) -> None:
        for index in indices:
            out.append(await one(connection, index))

    # one connection per sender, warmed up by the unrecorded requests and kept
    connections = [Connection(parsed.host, port) for _ in range(concurrency)]
    try:
        warm: list[ProfiledRequest] = []
        await asyncio.gather(
            *(worker(c, range(w, warmup, concurrency), warm) for w, c in enumerate(connections))
        )
        start = time.perf_counter()
        done: list[ProfiledRequest] = []
        await asyncio.gather(
            *(worker(c, range(w, requests, concurrency), done) for w, c in enumerate(connections))
        )
    finally:
        for connection in connections:
            await connection.aclose()
    done.sort(key=lambda r: r.index)
    settings = {"rows": rows, "requests": requests, "concurrency": concurrency,
                "binary": binary, "warmup": warmup}  # fmt: skip
    return ProfileReport.from_records(done, target=target, settings=settings)


def _plot(report: ProfileReport, path: Path) -> Path:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plots need matplotlib: pip install "cascade[plots]"') from exc

    phases = [*report.phases, report.unattributed]
    n = max(report.profiled, 1)
    e2e_mean = float(np.mean([r.e2e_ms for r in report.records if r.profiled] or [0.0]))
    means = [s.share * e2e_mean for s in phases]
    # a Figure of its own, not pyplot: the caller's backend (a notebook's) stays as it is
    figure = Figure(figsize=(9, 2.2 + 0.32 * len(phases)), dpi=110)
    stacked, spread = figure.subplots(2, 1, height_ratios=(1, max(2.0, len(phases) * 0.45)))
    figure.suptitle(
        f"{report.target}: {n} requests, end to end p50 {report.end_to_end.p50_ms:.2f} ms",
        fontsize=10,
    )
    cmap = matplotlib.colormaps["tab20"]
    colours = [cmap(i % 20) for i in range(len(phases))]
    left = 0.0
    for stats, mean, colour in zip(phases, means, colours, strict=True):
        stacked.barh(0, mean, left=left, color=colour, label=stats.phase)
        left += mean
    stacked.set_yticks([])
    stacked.set_xlabel("mean ms per request (share of the client's end to end)")
    stacked.set_xlim(0, max(left, 1e-6))

    y = np.arange(len(phases))
    p50 = [0.0 if math.isnan(s.p50_ms) else max(s.p50_ms, 0.0) for s in phases]
    p99 = [0.0 if math.isnan(s.p99_ms) else max(s.p99_ms, 0.0) for s in phases]
    spread.barh(y + 0.2, p50, height=0.4, color=colours, label="p50")
    spread.barh(y - 0.2, p99, height=0.4, color=colours, alpha=0.45, label="p99")
    spread.set_yticks(y, [f"{s.phase} ({100 * s.share:.1f}%)" for s in phases], fontsize=8)
    spread.invert_yaxis()
    spread.set_xlabel("ms per request: p50 (solid), p99 (light)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
