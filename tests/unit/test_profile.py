"""Latency profiles: recorded on the request path, aggregated and traced by `cascade profile`.

The service runs in process (as in test_service.py), the edge app behind httpx's ASGI
transport and, for the command, behind uvicorn on 127.0.0.1. Clocks are injected wherever
a number is asserted; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cascade.backends import CALL_TIMES, InputSpec
from cascade.bench import ProfiledRequest, ProfileReport, run_profile
from cascade.catalog import ModelCard
from cascade.cli import main
from cascade.edge import EdgeSettings, build_edge_app
from cascade.edge.testing import ThreadedServer
from cascade.routing import BatchResult, Decision, TierCall
from cascade.serving import (
    PROFILE_HEADER,
    Coalescer,
    HttpReply,
    InferenceService,
    PolicyText,
    Profile,
    sends_its_time,
)
from cascade.zoo import read_dataset

ROWS = read_dataset("digits").test.X[:6].astype(np.float32)


def _policy(models: Path, folder: Path, *, extra: str = "", threshold: float = 0.9) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits.yaml"
    path.write_text(
        f"name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n" + extra
    )
    return path


class _Deployment:
    """The `large` tier as a Ray deployment tier looks to the engine: it answers class 3 and,
    in a profiled batch, says it waited 0.25 ms for its batch and ran the model for 0.5 ms."""

    def __init__(self, spec: InputSpec) -> None:
        self.name = "large"
        self.input_spec = spec

    async def predict(self, rows: Any) -> np.ndarray:
        times = CALL_TIMES.get()
        if times is not None:
            times.update({"queue": 0.25, "model": 0.5})
        return np.repeat(np.eye(10, dtype=np.float32)[[3]], len(rows), axis=0)


class _Recorder:
    """ServiceMetrics that keeps the sampled profiles."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, dict[str, float]]] = []

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        pass

    def shed(self, model: str, why: str) -> None:
        pass

    def gear(self, model: str, index: int) -> None:
        pass

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        pass

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        pass

    def profile(self, model: str, phases: dict[str, float]) -> None:
        self.profiles.append((model, phases))


class _Ticks:
    """A clock that advances 1 ms each time it is read, and counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return 1000.0 + self.reads / 1000.0


def _service(
    models: Path, folder: Path, *, extra: str = "", clock: Callable[[], float] | None = None
) -> tuple[InferenceService, _Recorder]:
    path = _policy(models, folder, extra=extra, threshold=0.999)  # some rows escalate
    metrics = _Recorder()
    svc = InferenceService(
        metrics=metrics, **({"clock": clock, "wall_clock": lambda: 5000.0} if clock else {})
    )
    svc.apply_policies(
        [PolicyText(str(path), path.read_text())],
        remote=lambda name: {"large": _Deployment},
    )
    assert not svc.reload_errors, svc.reload_errors
    return svc, metrics


def _infer(
    svc: InferenceService, rows: np.ndarray, headers: dict[str, str] | None = None, **params: Any
) -> HttpReply:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    raw = json.dumps({"inputs": [tensor], "parameters": params}).encode()

    async def read() -> bytes:
        return raw

    return asyncio.run(svc.handle("POST", "/v2/models/digits/infer", headers or {}, read))


def _profile_of(reply: HttpReply) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    text = json.loads(reply.body)["parameters"]["profile"]
    assert isinstance(text, str)  # a scalar parameter, as KServe and gRPC clients need
    profile: dict[str, Any] = json.loads(text)
    return profile


def _check_contiguous(profile: dict[str, Any]) -> None:
    """Server phases follow each other without gap or overlap, from 0 to total_ms."""
    at = 0.0
    for name, start, duration in profile["phases"]:
        if name == "before":
            assert start == pytest.approx(-duration, abs=2e-3)
            continue
        assert start == pytest.approx(at, abs=2e-3), (name, profile)
        assert duration >= 0
        at = start + duration
    assert at == pytest.approx(profile["total_ms"], abs=2e-3)


def test_phases_add_up_to_the_service_time_and_before_comes_from_the_send_time(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    svc, _ = _service(digits_zoo[0], tmp_path, clock=_Ticks())
    # the wall clock says 5000.0 s; the client sent 12 ms before that. The service read its
    # clock twice since the request arrived (on arrival, then beside the wall clock): 1 ms
    reply = _infer(svc, ROWS, {PROFILE_HEADER: "4999.988"}, profile=True, trace=False)
    profile = _profile_of(reply)
    names = [name for name, _, _ in profile["phases"]]
    assert profile["phases"][0] == ["before", -11.0, 11.0]
    assert names[1:4] == ["parse", "admission", "coalesce"]
    assert names[-3:] == ["wake", "metrics", "encode"]
    assert "tier.tiny" in names and "route" in names
    # the deployment tier's call: hop halves around its replica's queue and model time
    large = [p for p in profile["phases"] if p[0].startswith("tier.large")]
    assert [p[0] for p in large] == ["tier.large.hop", "tier.large.queue", "tier.large.model",
                                     "tier.large.hop"]  # fmt: skip
    queue, model = large[1][2], large[2][2]
    # the fake replica says 0.25 + 0.5 ms; the engine timed the call (real clock) shorter
    # still, so both are scaled into it, in proportion
    assert model == pytest.approx(2 * queue, abs=2e-3) and model > 0
    assert large[0][2] == pytest.approx(large[3][2], abs=2e-3)
    assert profile["batch"] == {"requests": 1, "rows": 6}
    _check_contiguous(profile)
    durations = sum(d for n, _, d in profile["phases"] if n != "before")
    assert durations == pytest.approx(profile["total_ms"], abs=0.02)


def test_real_clock_profiles_are_contiguous_too(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    svc, _ = _service(digits_zoo[0], tmp_path)
    reply = _infer(svc, ROWS, profile=True, trace=True)
    profile = _profile_of(reply)
    _check_contiguous(profile)
    assert "before" not in {n for n, _, _ in profile["phases"]}  # no send time: no guess
    body = json.loads(reply.body)
    assert body["outputs"][2]["data"] == [d["answered_by"] for d in json.loads(
        body["parameters"]["trace"])]  # fmt: skip


def test_a_sampled_policy_profiles_without_the_parameter_and_leaves_the_response(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    sampled, metrics = _service(digits_zoo[0], tmp_path / "a", extra="profile: {sample_rate: 1}\n")
    plain, _ = _service(digits_zoo[0], tmp_path / "b")
    got, want = _infer(sampled, ROWS, trace=False), _infer(plain, ROWS, trace=False)
    body, expected = json.loads(got.body), json.loads(want.body)
    assert "profile" not in body["parameters"]
    assert body["outputs"] == expected["outputs"]
    assert body["parameters"] == expected["parameters"]
    assert len(metrics.profiles) == 1
    model, phases = metrics.profiles[0]
    assert model == "digits"
    assert {"parse", "admission", "coalesce", "tier.tiny", "wake", "encode"} <= set(phases)
    # asked and sampled: in the response and in the metric
    both = _infer(sampled, ROWS, profile=True)
    assert set(_profile_of(both)) >= {"total_ms", "phases"} and len(metrics.profiles) == 2


def test_cache_lookups_and_stores_are_the_cache_phases(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    svc, _ = _service(digits_zoo[0], tmp_path, extra="cache: {exact_max_entries: 100}\n")
    first, again = (_profile_of(_infer(svc, ROWS, profile=True)) for _ in range(2))
    names = [n for n, _, _ in first["phases"]]
    assert names[:4] == ["parse", "admission", "cache", "coalesce"]
    assert names[-4:] == ["wake", "cache", "metrics", "encode"]
    # every row answered by the exact cache: no batch ran
    assert [n for n, _, _ in again["phases"]] == ["parse", "admission", "cache", "cache",
                                                  "metrics", "encode"]  # fmt: skip
    assert "batch" not in again
    for profile in (first, again):
        _check_contiguous(profile)


def test_profiling_off_reads_no_clock_for_it_and_changes_nothing(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    ticks = _Ticks()
    svc, metrics = _service(digits_zoo[0], tmp_path, clock=ticks, extra="profile: {}\n")
    body = json.loads(_infer(svc, ROWS, {PROFILE_HEADER: "1.0"}, trace=False).body)
    assert ticks.reads == 2  # arrival and the request's latency: what it always read
    assert set(body["parameters"]) == {"gear"}
    same = json.loads(_infer(svc, ROWS, trace=False, profile=False).body)
    assert same == body and metrics.profiles == []


def test_bad_profile_parameters_are_400(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    svc, _ = _service(digits_zoo[0], tmp_path)
    reply = _infer(svc, ROWS, profile="yes")
    assert reply.status == 400
    assert json.loads(reply.body)["error"] == 'parameters.profile must be true or false, got "yes"'
    reply = _infer(svc, ROWS, {PROFILE_HEADER: "soon"}, profile=True)
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert error == "x-cascade-sent-at must be the send time in epoch seconds, got 'soon'"


def test_a_request_id_holding_the_placeholder_stays_as_sent(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    svc, _ = _service(digits_zoo[0], tmp_path)
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32",
              "data": ROWS[0].tolist()}  # fmt: skip
    sneaky = "\u0000cascade-profile\u0000"
    raw = json.dumps({"id": sneaky, "inputs": [tensor], "parameters": {"profile": True}})

    async def read() -> bytes:
        return raw.encode()

    reply = asyncio.run(svc.handle("POST", "/v2/models/digits/infer", {}, read))
    body = json.loads(reply.body)
    assert body["id"] == sneaky
    assert json.loads(body["parameters"]["profile"])["total_ms"] > 0


def test_the_edge_host_times_its_body_read_when_the_client_sends_its_send_time(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    app = build_edge_app(EdgeSettings(policies=[str(_policy(digits_zoo[0], tmp_path))]))
    tensor = {"name": "input", "shape": [6, 64], "datatype": "FP32",
              "data": ROWS.ravel().tolist()}  # fmt: skip
    body = {"inputs": [tensor], "parameters": {"profile": True, "trace": False}}

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            url = "/v2/models/digits/infer"
            sent = {PROFILE_HEADER: repr(1.0)}  # long ago: the before phase is there
            return [await client.post(url, json=body, headers=sent),
                    await client.post(url, json=body)]  # fmt: skip

    with_header, without = asyncio.run(run())
    for response in (with_header, without):
        assert response.status_code == 200, response.text
    first = json.loads(with_header.json()["parameters"]["profile"])
    second = json.loads(without.json()["parameters"]["profile"])
    # the client sent its send time: the host timed the body read, a phase of its own
    assert [p[0] for p in first["phases"]][:3] == ["before", "read", "parse"]
    assert second["phases"][0][0] == "parse"
    for profile in (first, second):
        _check_contiguous(profile)
        assert "tier.tiny" in {p[0] for p in profile["phases"]}  # the edge runs large inline


def test_a_host_finds_the_send_time_among_raw_asgi_headers() -> None:
    assert sends_its_time([(b"host", b"a"), (b"x-cascade-sent-at", b"1.5")])
    assert not sends_its_time([(b"host", b"a"), (b"content-type", b"application/json")])


def _decision() -> Decision:
    return Decision(steps=(), answered_by="large", reason="last_tier", cost=1.0,
                    latency_ms=0.0, deadline_ms=None)  # fmt: skip


def test_the_coalescer_gives_each_profiled_request_its_batch() -> None:
    """Two profiled requests and one plain one share a batch that runs in another task:
    each profiled one gets the batch's tier calls, its own wait, and its wake-up."""
    clock = itertools.count(0.0, 0.001).__next__  # 1 ms per read
    asked: list[bool] = []

    async def run(
        rows: np.ndarray, deadlines: Any, caps: Any, *, timeline: bool = False
    ) -> BatchResult:
        asked.append(timeline)
        idx = np.arange(len(rows))
        calls = (
            TierCall("tiny", idx, None, 0.0, 0.2, 0.01),
            TierCall("large", idx[:1], None, 0.4, 0.9, 1.0, {"queue": 0.1, "model": 0.2}),
        )
        probabilities = np.full((len(rows), 2), 0.5, np.float32)
        return BatchResult(probabilities, tuple(_decision() for _ in rows), calls)

    async def main() -> list[Profile]:
        coalescer = Coalescer(run, eager=False, max_wait_ms=5)
        profiles = [Profile(clock, clock()), Profile(clock, clock())]
        await asyncio.gather(
            coalescer.submit(np.zeros((2, 2), np.float32), profile=profiles[0]),
            coalescer.submit(np.zeros((1, 2), np.float32)),
            coalescer.submit(np.zeros((3, 2), np.float32), profile=profiles[1]),
        )
        return profiles

    profiles = asyncio.run(main())
    assert asked == [True]
    for profile in profiles:
        document = profile.to_dict()
        assert document["batch"] == {"requests": 3, "rows": 6}
        names = [p[0] for p in document["phases"]]
        assert names == ["coalesce", "tier.tiny", "route", "tier.large.hop", "tier.large.queue",
                         "tier.large.model", "tier.large.hop", "route", "wake"]  # fmt: skip
        durations = profile.durations()
        assert durations["tier.tiny"] == pytest.approx(0.2)
        assert durations["tier.large.hop"] == pytest.approx(0.2)  # 0.5 - 0.1 - 0.2
        assert sum(durations.values()) == pytest.approx(profile.total_ms)


def test_an_unprofiled_batch_keeps_no_timeline() -> None:
    asked: list[bool] = []

    async def run(rows: np.ndarray, deadlines: Any, caps: Any, **kwargs: Any) -> BatchResult:
        asked.append(bool(kwargs))
        return BatchResult(np.zeros((len(rows), 2), np.float32), tuple(_decision() for _ in rows))

    async def main() -> None:
        await Coalescer(run).submit(np.zeros((1, 2), np.float32))

    asyncio.run(main())
    assert asked == [False]


# ---- the workshop: report, trace, command -------------------------------------------------


def _records() -> list[ProfiledRequest]:
    phases = (("before", -0.5, 0.5), ("parse", 0.0, 0.2), ("coalesce", 0.2, 0.1),
              ("tier.tiny", 0.3, 0.3), ("route", 0.6, 0.1), ("tier.large.hop", 0.7, 1.0),
              ("tier.large.model", 1.7, 0.5), ("tier.large.hop", 2.2, 1.0),
              ("encode", 3.2, 0.3))  # fmt: skip
    late = (("parse", 0.0, 0.4), ("tier.tiny", 0.4, 0.6), ("encode", 1.0, 0.5))
    return [
        ProfiledRequest(0, 0.0, 4.0, 200, None, 3.5, phases, {"requests": 1, "rows": 64}),
        ProfiledRequest(1, 4.5, 2.0, 200, None, 1.5, late, {"requests": 3, "rows": 9}),
        ProfiledRequest(2, 7.0, 1.0, 503),
    ]


def test_the_report_adds_phases_up_against_the_clients_end_to_end() -> None:
    report = ProfileReport.from_records(_records(), target="http://127.0.0.1:1/v2/models/x/infer")
    assert (report.profiled, report.failed, report.mean_batch_requests) == (2, 1, 2.0)
    by_name = {s.phase: s for s in report.phases}
    assert list(by_name)[:4] == ["before", "parse", "coalesce", "tier.tiny"]
    assert by_name["tier.large.hop"].p50_ms == pytest.approx(2.0)  # both halves, one request
    assert by_name["tier.large.hop"].seen == 0.5
    assert by_name["tier.tiny"].share == pytest.approx(0.9 / 6.0)
    # request 0: 4.0 ms end to end, 4.0 in phases; request 1: 2.0 and 1.5
    assert report.phase_sum.share + report.unattributed.share == pytest.approx(1.0)
    assert sorted(
        r.e2e_ms - sum(r.durations().values()) for r in report.records if r.profiled
    ) == pytest.approx([0.0, 0.5])
    assert report.unattributed.share == pytest.approx(0.5 / 6.0)
    assert sum(s.share for s in report.phases) == pytest.approx(report.phase_sum.share)
    text = report.table()
    assert "unattributed" in text and "end to end (client)" in text and "2 profiled" in text
    document = json.loads(json.dumps(report.to_json()))
    assert len(document["requests"]) == 3 and document["phases"][0]["phase"] == "before"


def _check_trace(document: dict[str, Any]) -> None:
    """The Chrome trace-event format (JSON object form): required keys, complete events with
    µs timestamps, non-negative durations, timestamps monotone per thread, phases inside
    their request."""
    assert isinstance(document["traceEvents"], list) and document["traceEvents"]
    last: dict[int, float] = {}
    windows: dict[int, tuple[float, float]] = {}
    for event in document["traceEvents"]:
        assert {"name", "ph", "pid", "tid"} <= set(event), event
        assert isinstance(event["name"], str) and isinstance(event["tid"], int)
        if event["ph"] == "M":
            assert event["name"] in {"process_name", "thread_name"} and "name" in event["args"]
            continue
        assert event["ph"] == "X", event
        ts, dur, tid = event["ts"], event["dur"], event["tid"]
        assert isinstance(ts, int | float) and isinstance(dur, int | float)
        assert ts >= 0 and dur >= 0, event
        assert ts >= last.get(tid, 0.0), ("timestamps must not go back on a thread", event)
        last[tid] = ts
        if event["name"] == "request":
            windows[tid] = (ts, ts + dur)
        else:
            start, end = windows[tid]
            assert start <= ts and ts + dur <= end + 2e-3, event  # µs, rounded to ns
    assert json.loads(json.dumps(document)) == document


def test_the_trace_is_valid_trace_event_json_with_one_thread_per_request() -> None:
    trace = ProfileReport.from_records(_records(), target="t").trace()
    _check_trace(trace)
    threads = {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert threads == {1, 2}  # the failed request has no profile to draw
    first = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] == 1]
    assert [e["name"] for e in first[:3]] == ["request", "before", "parse"]
    parse = first[2]
    assert parse["ts"] == pytest.approx(500.0) and parse["dur"] == pytest.approx(200.0)


def test_cascade_profile_against_the_edge_runtime(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(digits_zoo[0], tmp_path, threshold=0.99)
    app = build_edge_app(EdgeSettings(policies=[str(policy)]))
    out = tmp_path / "out"
    with ThreadedServer(app) as server:
        argv = ["profile", server.url, "--model", "digits", "--rows", "8", "--requests", "12",
                "--concurrency", "2", "--warmup", "2", "--binary", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
    printed = capsys.readouterr().out
    for phase in ("before", "parse", "admission", "coalesce", "tier.tiny", "encode",
                  "unattributed", "end to end (client)"):  # fmt: skip
        assert phase in printed
    document = json.loads((out / "profile.json").read_text())
    assert document["profiled"] == 12 and document["failed"] == 0
    for request in document["requests"]:
        server_phases = [p for p in request["phases"] if p[0] != "before"]
        assert sum(p[2] for p in server_phases) == pytest.approx(request["total_ms"], abs=0.02)
    _check_trace(json.loads((out / "profile.trace.json").read_text()))
    assert (out / "profile.png").stat().st_size > 0


def test_cascade_profile_refuses_other_hosts_and_unknown_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["profile", "http://example.com:8000", "--model", "digits"]) == 1
    assert "is not this machine" in capsys.readouterr().err
    assert main(["profile", "http://127.0.0.1:9", "--model", "mine"]) == 1
    assert "say which rows to send with --dataset" in capsys.readouterr().err


class _Chunked(BaseHTTPRequestHandler):
    """A v2 server that answers in chunks and closes every other connection."""

    protocol_version = "HTTP/1.1"
    posts = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        meta = {"inputs": [{"name": "input", "shape": [-1, 64]}], "parameters": {}}
        self._send(json.dumps(meta).encode(), chunked=False)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        type(self).posts += 1
        profile = {"total_ms": 1.0, "phases": [["parse", 0.0, 1.0]]}
        body = {"outputs": [], "parameters": {"profile": json.dumps(profile)}}
        self._send(json.dumps(body).encode(), chunked=True, close=self.posts % 2 == 0)

    def _send(self, data: bytes, *, chunked: bool, close: bool = False) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if close:
            self.send_header("connection", "close")
            self.close_connection = True
        if not chunked:
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for part in (data[:10], data[10:]):
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


def test_the_bare_client_reads_chunked_answers_and_reconnects_after_a_close() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        report = asyncio.run(run_profile(url, "toy", ROWS, requests=5, warmup=1, concurrency=2))
    finally:
        server.shutdown()
        server.server_close()
    assert (report.profiled, report.failed) == (5, 0)
    assert [s.phase for s in report.phases] == ["parse"]
