"""`cascade bench`: an open-loop HTTP load generator for a local cascade server.

Schedules say when requests leave (Poisson at a fixed rate, or a linear ramp), the runner
replays labelled rows against ``/v2/models/{name}/infer`` on this machine and records every
request, and the report turns the records into latency percentiles, goodput, shedding,
errors, accuracy and a per-second timeline (JSON, a table, a PNG). ``run_profile`` sends a
short load of profiled requests and breaks their latency down by phase (`cascade profile`).

Example::

    import asyncio
    from cascade.bench import poisson_arrivals, run_load
    from cascade.zoo import read_dataset

    split = read_dataset("digits").test
    report = asyncio.run(run_load(
        "http://127.0.0.1:8000", "digits", split.X, split.y,
        poisson_arrivals(100, duration_s=30, seed=0), duration_s=30, deadline_ms=50,
    ))
    print(report.summary())
    report.plot("bench-results/bench.png")
"""

from __future__ import annotations

from cascade.bench._footprint import (
    Footprint,
    TierFootprint,
    format_footprint,
    measure_footprint,
    rss_mb,
)
from cascade.bench._http import infer_body
from cascade.bench._loadgen import (
    LOOPBACK_HOSTS,
    ModelInfo,
    drive,
    fetch_metadata,
    loopback_url,
    run_load,
)
from cascade.bench._profile import PhaseStats, ProfiledRequest, ProfileReport, run_profile
from cascade.bench._report import MAX_SEND_LAG_MS, BenchReport, Outcome, RequestRecord, SecondStats
from cascade.bench._schedule import poisson_arrivals, ramp_arrivals

__all__ = [
    "LOOPBACK_HOSTS",
    "MAX_SEND_LAG_MS",
    "BenchReport",
    "Footprint",
    "ModelInfo",
    "Outcome",
    "PhaseStats",
    "ProfileReport",
    "ProfiledRequest",
    "RequestRecord",
    "SecondStats",
    "TierFootprint",
    "drive",
    "fetch_metadata",
    "format_footprint",
    "infer_body",
    "loopback_url",
    "measure_footprint",
    "poisson_arrivals",
    "ramp_arrivals",
    "rss_mb",
    "run_load",
    "run_profile",
]
