"""`cascade bench`: arrival schedules, report arithmetic, and runs against a loopback server.

The server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 that speaks just enough of the
v2 protocol; it decides each answer by row content or by request number, so every count is
exact. Nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.bench import (
    BenchReport,
    RequestRecord,
    loopback_url,
    poisson_arrivals,
    ramp_arrivals,
    run_load,
)
from cascade.cli import main
from cascade.errors import InputError, ModelUnavailable
from cascade.zoo import read_dataset

# What the fake server does with a request, given its number (1-based) and first row.
Rule = Callable[[int, list[float]], str]


class FakeServer:
    """A loopback v2 server for one model; ``rule`` picks ok/wrong/shed/fail/garbage/hold."""

    def __init__(
        self,
        *,
        X: np.ndarray,
        y: np.ndarray,
        classes: tuple[str, ...] | None,
        rule: Rule,
        model: str = "toy",
    ) -> None:
        self.model = model
        self.width = X.shape[1]
        self.classes = classes
        self.n_classes = int(y.max()) + 1 if classes is None else len(classes)
        rows = zip(X.astype(np.float32), y, strict=True)
        self.truth = {row.tobytes(): int(label) for row, label in rows}
        self.rule = rule
        self.retry_after: str | None = None  # sent with every 503 when set
        self.requests = 0
        self.seen: list[dict[str, Any]] = []  # request bodies, in arrival order
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, self.width]}],
            "parameters": {"classes": None if self.classes is None else list(self.classes)},
        }

    def infer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        with self.lock:
            self.requests += 1
            number = self.requests
            self.seen.append(body)
        tensor = body["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        action = self.rule(number, rows[0].tolist())
        if action == "shed":
            return 503, b'{"error": "overloaded"}'
        if action == "fail":
            return 500, b'{"error": "boom"}'
        if action == "garbage":
            return 200, b"<html>not json</html>"
        if action == "hold":
            self.release.wait(10)
        shift = 1 if action == "wrong" else 0
        labels = [(self.truth[row.tobytes()] + shift) % self.n_classes for row in rows]
        decisions = []
        for row in rows:
            value = float(row[0])
            decision = {
                "answered_by": "tiny" if value % 2 == 0 else "large",
                "reason": "confident",
                "degraded": value % 5 == 0,
            }
            if value < 15:  # from 15 on, no gear at all: the client must cope
                decision["gear"] = "normal" if value < 10 else "brownout"
            decisions.append(decision)
        answer = {
            "model_name": self.model,
            "outputs": [
                {
                    "name": "label",
                    "datatype": "INT64" if self.classes is None else "BYTES",
                    "shape": [len(labels)],
                    "data": labels if self.classes is None else [self.classes[i] for i in labels],
                }
            ],
            "parameters": {"trace": json.dumps(decisions)},
        }
        return 200, json.dumps(answer).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one segment: no Nagle + delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    if status == 503 and server.retry_after is not None:
                        self.send_header("retry-after", server.retry_after)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout); nothing left to answer

            def do_GET(self) -> None:
                if self.path == f"/v2/models/{server.model}":
                    self._reply(200, json.dumps(server.metadata()).encode())
                else:
                    self._reply(404, b'{"error": "unknown model"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path != f"/v2/models/{server.model}/infer":
                    self._reply(404, b'{"error": "unknown model"}')
                    return
                self._reply(*server.infer(body))

        return Handler


def _toy_rows(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Row i is [i, i/2, 1] with label i % 3: the first feature names the row."""
    X = np.array([[i, i / 2, 1.0] for i in range(n)], dtype=np.float32)
    return X, np.arange(n) % 3


def _by_row(number: int, row: list[float]) -> str:
    value = int(row[0])
    if value == 13:
        return "fail"
    if value % 5 == 4:
        return "shed"
    if value % 3 == 2:
        return "wrong"
    return "ok"


@pytest.fixture
def toy_server() -> Iterator[FakeServer]:
    X, y = _toy_rows()
    with FakeServer(X=X, y=y, classes=("cat", "dog", "eel"), rule=_by_row) as server:
        yield server


def _run(server: FakeServer, offsets: Any, **options: Any) -> BenchReport:
    X, y = _toy_rows()
    options.setdefault("progress", False)
    return asyncio.run(run_load(server.url, server.model, X, y, offsets, **options))


# --- schedules ---------------------------------------------------------------------------


def test_schedules_are_seeded_sorted_and_inside_the_duration() -> None:
    first = poisson_arrivals(50, duration_s=20, seed=3)
    assert np.array_equal(first, poisson_arrivals(50, duration_s=20, seed=3))
    assert not np.array_equal(first, poisson_arrivals(50, duration_s=20, seed=4))
    for offsets in (first, ramp_arrivals(10, 90, duration_s=20, seed=3)):
        assert (np.diff(offsets) >= 0).all()
        assert offsets[0] > 0 and offsets[-1] < 20


def test_poisson_rate_and_exponential_gaps() -> None:
    offsets = poisson_arrivals(200, duration_s=500, seed=0)
    # 100,000 expected arrivals, standard deviation 316: 5 sigma is 1,581.
    assert abs(len(offsets) - 100_000) < 1_600
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: CV 1


def test_ramp_gets_denser_and_matches_the_integrated_rate() -> None:
    offsets = ramp_arrivals(50, 400, duration_s=60, seed=0)
    counts, _ = np.histogram(offsets, bins=6, range=(0, 60))
    # Expected 792, 1375, ..., 3708: neighbours differ by 583, about 9 standard deviations.
    assert (np.diff(counts) > 0).all()
    assert abs(len(offsets) - 13_500) < 5 * np.sqrt(13_500)
    falling = ramp_arrivals(400, 50, duration_s=60, seed=0)
    assert (np.diff(np.histogram(falling, bins=6, range=(0, 60))[0]) < 0).all()


def test_schedules_stop_at_max_requests_and_check_their_arguments() -> None:
    assert len(poisson_arrivals(1000, duration_s=10, max_requests=7)) == 7
    assert len(ramp_arrivals(1, 2, duration_s=1, max_requests=10_000)) < 20
    with pytest.raises(ValueError, match="rate must be a finite number > 0, got 0"):
        poisson_arrivals(0, duration_s=1)
    with pytest.raises(ValueError, match="duration_s must be a finite number > 0, got -1"):
        ramp_arrivals(1, 2, duration_s=-1)
    with pytest.raises(ValueError, match="max_requests must be >= 1, got 0"):
        poisson_arrivals(1, duration_s=1, max_requests=0)


# --- report arithmetic -------------------------------------------------------------------


def _records() -> list[RequestRecord]:
    def answer(offset: float, ms: float, correct: int, tier: str, **extra: Any) -> RequestRecord:
        return RequestRecord(offset, offset, ms, 200, correct=correct, answered_by=(tier,), **extra)

    return [
        answer(0.1, 10, 1, "tiny", gear="normal"),
        answer(0.2, 20, 1, "tiny", gear="normal", degraded=1),
        answer(0.3, 30, 0, "small", gear="normal"),
        answer(0.4, 40, 1, "large"),
        RequestRecord(1.1, 1.1, 5, 503),
        RequestRecord(1.2, 1.2, 7, 500),
        RequestRecord(1.3, 1.3, 1000, error="TimeoutError"),
        RequestRecord(1.4, dropped=True),
        answer(1.5, 100, 1, "large", gear="brownout"),
        answer(1.6, 60, 0, "tiny", gear="brownout", degraded=1),
    ]


def test_report_counts_fractions_and_percentiles() -> None:
    report = BenchReport.from_records(_records(), duration_s=2.0, deadline_ms=50)
    assert (report.scheduled, report.sent, report.answered) == (10, 9, 6)
    assert (report.shed, report.errors, report.client_dropped) == (1, 2, 1)
    assert report.errors_by_kind == {"500": 1, "TimeoutError": 1}
    assert report.offered_rps == 5.0 and report.throughput_rps == 3.0
    assert report.shed_fraction == pytest.approx(1 / 9)
    assert report.error_fraction == pytest.approx(2 / 9)
    # Latencies 10, 20, 30, 40, 60, 100; the four within 50 ms are the goodput.
    assert (report.p50_ms, report.p95_ms, report.p99_ms) == pytest.approx((35, 90, 98))
    assert report.goodput_rps == 2.0 and report.goodput_fraction == pytest.approx(4 / 9)
    assert report.rows_answered == 6
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.degraded_fraction == pytest.approx(2 / 6)
    assert report.answers_by_tier == {"tiny": 3, "large": 2, "small": 1}
    assert report.gears == {"normal": 3, "brownout": 2}
    no_deadline = BenchReport.from_records(_records(), duration_s=2.0)
    assert no_deadline.goodput_rps == 3.0 and no_deadline.goodput_fraction == pytest.approx(6 / 9)


def test_report_timeline_per_scheduled_second() -> None:
    first, second = BenchReport.from_records(_records(), duration_s=2.0).timeline
    assert (first.offered, first.answered, first.shed, first.errors) == (4, 4, 0, 0)
    assert (first.p50_ms, first.accuracy, first.degraded_fraction) == (25, 0.75, 0.25)
    assert first.gear == "normal"
    assert (second.offered, second.answered, second.shed, second.errors) == (6, 2, 1, 2)
    assert (second.client_dropped, second.p50_ms, second.accuracy) == (1, 80, 0.5)
    assert second.gear == "brownout"
    longer = BenchReport.from_records(_records(), duration_s=4.5).timeline
    assert [s.offered for s in longer] == [4, 6, 0, 0, 0]
    assert longer[4].p95_ms is None and longer[4].gear is None


def test_report_json_summary_and_an_empty_run() -> None:
    report = BenchReport.from_records(_records(), duration_s=2.0, deadline_ms=50, target="t")
    document = json.loads(json.dumps(report.to_json()))
    assert document["shed"] == 1 and len(document["timeline"]) == 2
    assert "requests" not in document
    requests = report.to_json(include_requests=True)["requests"]
    assert [r["outcome"] for r in requests].count("client_dropped") == 1
    summary = report.summary()
    assert "shed (503)" in summary and "1 (11.1%)" in summary
    assert "500: 1, TimeoutError: 1" in summary and "tiny 3, large 2, small 1 rows" in summary
    empty = BenchReport.from_records([RequestRecord(0.5, dropped=True)], duration_s=1.0)
    assert empty.p50_ms is None and empty.accuracy is None and empty.shed_fraction is None
    assert "n/a" in empty.summary()
    with pytest.raises(ValueError, match="duration_s must be a finite number > 0, got 0"):
        BenchReport.from_records([], duration_s=0)


def test_plot_writes_a_png_and_names_the_extra_when_matplotlib_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = BenchReport.from_records(_records(), duration_s=2.0, deadline_ms=50)
    png = report.plot(tmp_path / "out" / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "cascade\[plots\]"'):
        report.plot(tmp_path / "never.png")


# --- the runner against a loopback server ------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://example.com:8000", "http://10.0.0.1:8000", "http://0.0.0.0:8000"]
)
def test_only_loopback_hosts_are_targets(url: str) -> None:
    X, y = _toy_rows()
    with pytest.raises(InputError, match="is not this machine; cascade bench only sends load to "
                       r"loopback \(allowed hosts: 127.0.0.1, localhost, ::1\)"):  # fmt: skip
        asyncio.run(run_load(url, "toy", X, y, [0.0], progress=False))
    assert loopback_url("http://[::1]:8000/") == "http://[::1]:8000"
    assert loopback_url("http://localhost:8000") == "http://localhost:8000"
    with pytest.raises(InputError, match="must start with http:// or https://"):
        loopback_url("127.0.0.1:8000")


@pytest.mark.parametrize("client", ["bare", "httpx"])
def test_a_run_counts_answers_sheds_errors_and_accuracy_exactly(
    toy_server: FakeServer, client: str
) -> None:
    # 30 requests of one row: rows 0..19, then 0..9. Row 13 fails (500); rows 4, 9, 14, 19
    # are shed (503); rows with i % 3 == 2 get a wrong label.
    report = _run(
        toy_server, np.linspace(0, 0.3, 30), deadline_ms=60_000, duration_s=1.0, client=client
    )
    assert (report.scheduled, report.sent, report.client_dropped) == (30, 30, 0)
    assert (report.answered, report.shed, report.errors) == (23, 6, 1)
    assert report.errors_by_kind == {"500": 1}
    # Wrong: rows 2, 5, 8, 11, 17 and again 2, 5, 8; degraded: rows 0, 5, 10, 15, 0, 5.
    assert report.rows_answered == 23
    assert report.accuracy == pytest.approx(15 / 23)
    assert report.degraded_fraction == pytest.approx(6 / 23)
    assert report.answers_by_tier == {"tiny": 12, "large": 11}
    # Gear: rows < 10 "normal" (16 answers), 10..14 "brownout" (3), none from 15 on.
    assert report.gears == {"normal": 16, "brownout": 3}
    assert report.goodput_rps == 23.0  # a minute-long deadline: every answer is in time
    assert [r.status for r in report.records].count(503) == 6
    sent = toy_server.seen[0]
    assert sent["parameters"] == {"trace": False, "deadline_ms": 60_000}
    assert sent["inputs"][0]["name"] == "features" and sent["inputs"][0]["shape"] == [1, 3]


@pytest.mark.parametrize("client", ["bare", "httpx"])
def test_multi_row_requests_integer_labels_and_bad_bodies(client: str) -> None:
    X, y = _toy_rows()

    def rule(number: int, row: list[float]) -> str:
        return {8: "garbage", 4: "wrong"}.get(int(row[0]), "ok")

    with FakeServer(X=X, y=y, classes=None, rule=rule) as server:
        # 10 requests of rows (0, 1), (2, 3), ... (18, 19).
        report = _run(server, np.zeros(10), rows_per_request=2, client=client)
        assert "deadline_ms" not in server.seen[0]["parameters"]
        assert server.seen[0]["inputs"][0]["shape"] == [2, 3]
    assert (report.answered, report.errors, report.errors_by_kind) == (9, 1, {"BadResponse": 1})
    assert report.rows_answered == 18
    assert report.accuracy == pytest.approx(16 / 18)
    assert report.answers_by_tier == {"tiny": 9, "large": 9}


@pytest.mark.parametrize("client", ["bare", "httpx"])
def test_the_in_flight_cap_drops_and_the_client_timeout_is_an_error(client: str) -> None:
    X, y = _toy_rows()
    with FakeServer(X=X, y=y, classes=None, rule=lambda n, row: "hold") as server:
        report = _run(server, np.zeros(6), max_in_flight=2, timeout_s=1.0, client=client)
    assert (report.sent, report.client_dropped, report.answered) == (2, 4, 0)
    assert report.errors_by_kind == {"TimeoutError": 2}
    assert report.error_fraction == 1.0


def test_sender_processes_share_the_schedule_and_count_the_same(
    toy_server: FakeServer,
) -> None:
    # the schedule of the exact-count test, dealt out to two sender processes
    report = _run(toy_server, np.linspace(0, 0.3, 30), deadline_ms=60_000, duration_s=1.0,
                  processes=2)  # fmt: skip
    assert (report.scheduled, report.sent, report.answered) == (30, 30, 23)
    assert (report.shed, report.errors_by_kind) == (6, {"500": 1})
    assert report.accuracy == pytest.approx(15 / 23)
    assert report.answers_by_tier == {"tiny": 12, "large": 11}
    # the records are in schedule order, each request sent once, at its own offset
    assert [r.offset_s for r in report.records] == pytest.approx(np.linspace(0, 0.3, 30))
    assert toy_server.requests == 30
    with pytest.raises(InputError, match="processes must be >= 1, got 0"):
        _run(toy_server, [0.0], processes=0)


def _shed_first_sight() -> Rule:
    """Shed a row the first time it is seen, answer it the next."""
    seen: set[float] = set()
    lock = threading.Lock()

    def rule(number: int, row: list[float]) -> str:
        with lock:
            first = row[0] not in seen
            seen.add(row[0])
        return "shed" if first else "ok"

    return rule


@pytest.mark.parametrize("client", ["bare", "httpx"])
def test_the_retry_budget_honours_retry_after_and_stays_within_its_share(client: str) -> None:
    X, y = _toy_rows()

    def run(**options: Any) -> BenchReport:
        with FakeServer(X=X, y=y, classes=None, rule=_shed_first_sight()) as server:
            server.retry_after = options.pop("retry_after", "0.01")
            return _run(server, np.zeros(10), client=client, **options)

    off = run()  # the default: a shed request stays shed
    assert (off.shed, off.answered, off.retried) == (10, 0, 0)
    every = run(retry_budget=1.0)
    assert (every.shed, every.answered, every.retried) == (0, 10, 10)
    assert all(r.retries == 1 for r in every.records)
    assert "retried" in every.summary()
    half = run(retry_budget=0.5)  # retries never exceed half of the requests sent
    assert 1 <= half.retried <= 5 and half.answered == half.retried
    assert half.shed == 10 - half.retried
    # a wait that would outlast the deadline is not worth it: the shed stands
    late = run(retry_budget=1.0, retry_after="1", deadline_ms=500)
    assert (late.shed, late.retried) == (10, 0)
    dated = run(retry_budget=1.0, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    assert (dated.shed, dated.retried) == (10, 0)


def test_a_run_is_invalid_when_the_generator_falls_behind_its_schedule() -> None:
    on_time = BenchReport.from_records(_records(), duration_s=2.0, deadline_ms=50)
    assert on_time.valid and on_time.send_lag_p99_ms == 0
    assert "yes (send lag p99 0.0 ms <= 10 ms)" in on_time.summary()
    late = [RequestRecord(i / 100, i / 100 + lag / 1000, 5.0, 200, correct=1)
            for i, lag in enumerate([0, 1, 2, 3, 30] * 20)]  # fmt: skip
    behind = BenchReport.from_records(late, duration_s=1.0)
    assert behind.send_lag_p99_ms == pytest.approx(30) and not behind.valid
    assert "INVALID: the generator fell behind its schedule (send lag p99 30.0 ms > 10 ms)" in (
        behind.summary()
    )
    assert json.loads(json.dumps(behind.to_json()))["valid"] is False
    assert BenchReport.from_records(late, duration_s=1.0, max_send_lag_ms=50).valid
    nothing = BenchReport.from_records([RequestRecord(0.5, dropped=True)], duration_s=1.0)
    assert not nothing.valid and "INVALID: nothing was sent" in nothing.summary()


def test_the_report_times_sheds_and_counts_late_answers() -> None:
    report = BenchReport.from_records(_records(), duration_s=2.0, deadline_ms=50)
    assert (report.shed_p50_ms, report.shed_p99_ms) == (5, 5)
    assert report.late_answers == 2  # the answers of 60 and 100 ms
    assert "2 (200s past the deadline)" in report.summary()
    assert BenchReport.from_records(_records(), duration_s=2.0).late_answers == 0


def test_the_bare_client_reads_chunked_answers_and_reopens_closed_connections() -> None:
    from cascade.bench._http import Connection, ConnectionPool, request_head

    answers = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n"
        b"connection: close\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
        b"",  # the server closes the kept-alive connection as the request arrives
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain",
    ]
    connections: list[int] = []
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            received.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            if not answer:
                break
            writer.write(answer)
            await writer.drain()
            if b"connection: close" in answer:
                break
        writer.close()

    async def scenario() -> list[tuple[int, bytes, bytes | None]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, size=1)
        out = []
        for _ in range(4):
            async with pool.connection() as connection:
                assert isinstance(connection, Connection)
                head = request_head(f"127.0.0.1:{port}", "/v2/x", 2, {"x-sent-at": ""})
                answer = await connection.post(head, b"{}", 5.0, stamp=True)
            out.append((answer.status, answer.payload, answer.headers.get(b"retry-after")))
        await pool.aclose()
        server.close()
        await server.wait_closed()
        return out

    assert asyncio.run(scenario()) == [(200, b"abcde", None), (503, b"{}", b"1"),
                                       (200, b"next", None), (200, b"again", None)]  # fmt: skip
    # the server closed the first (connection: close), then the second without a word: the
    # request that met the silent close went again on a third
    assert len(connections) == 3
    assert len(received) == 5
    assert received[0].startswith(b"POST /v2/x HTTP/1.1\r\nhost: 127.0.0.1:")
    stamp = float(received[0].split(b"x-sent-at: ")[1].split(b"\r\n")[0])
    assert stamp > 1.7e9  # an epoch time, written as the request left


def test_drive_runs_on_uvloop_when_installed_and_on_asyncio_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cascade.bench import drive

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert drive(loop_module()).startswith("uvloop")  # installed with [edge]
    assert drive(loop_module(), loop="asyncio").startswith("asyncio")
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert drive(loop_module()).startswith("asyncio")  # auto falls back
    coroutine = loop_module()
    with pytest.raises(InputError, match="uvloop is not installed: pip install uvloop"):
        drive(coroutine, loop="uvloop")
    coroutine.close()


def test_unknown_model_unreachable_server_and_wrong_width(toy_server: FakeServer) -> None:
    X, y = _toy_rows()
    with pytest.raises(
        ModelUnavailable, match=r"/v2/models/nope: no model 'nope' there \(HTTP 404"
    ):
        asyncio.run(run_load(toy_server.url, "nope", X, y, [0.0], progress=False))
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelUnavailable, match=r"cannot reach .* \(is `cascade serve` running\?\)"):
        asyncio.run(run_load(f"http://127.0.0.1:{port}", "toy", X, y, [0.0], progress=False))
    with pytest.raises(InputError, match="the rows have 4 features but model 'toy' takes 3"):
        asyncio.run(run_load(toy_server.url, "toy", np.ones((2, 4)), y[:2], [0.0], progress=False))


# --- the command line --------------------------------------------------------------------


def _by_number(number: int, row: list[float]) -> str:
    if number == 3:
        return "fail"
    if number % 5 == 0:
        return "shed"
    return "wrong" if number % 4 == 0 else "ok"


def test_cli_bench_prints_the_summary_and_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    digits = read_dataset("digits")
    test = digits.test
    server = FakeServer(X=test.X, y=test.y, classes=digits.classes, rule=_by_number, model="digits")
    argv = ["bench", server.url, "--model", "digits", "--rate", "500", "--max-requests", "25",
            "--deadline-ms", "60000", "--no-progress"]  # fmt: skip
    with server:
        assert main([*argv, "--out", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        # Request 3 fails; 5, 10, 15, 20, 25 are shed; 4, 8, 12, 16, 24 get wrong labels.
        report = json.loads((tmp_path / "bench.json").read_text())
        assert (report["scheduled"], report["answered"], report["shed"]) == (25, 19, 5)
        assert report["errors_by_kind"] == {"500": 1}
        assert report["accuracy"] == pytest.approx(14 / 19)
        assert report["deadline_ms"] == 60_000
        assert report["target"] == f"{server.url}/v2/models/digits/infer"
        assert sum(second["offered"] for second in report["timeline"]) == 25
        assert (tmp_path / "bench.png").stat().st_size > 0
        assert "shed (503)" in out and f"wrote {tmp_path / 'bench.json'} and" in out

        # the same schedule from one sender process (the default is two); the server
        # numbers on from 26, so 30, 35, ..., 50 are shed and nothing fails
        assert main([*argv, "--processes", "1", "--out", str(tmp_path / "two")]) == 0
        assert "send lag p99" in capsys.readouterr().out
        two = json.loads((tmp_path / "two" / "bench.json").read_text())
        assert (two["scheduled"], two["sent"], two["answered"], two["shed"]) == (25, 25, 20, 5)
        assert two["errors"] == 0 and isinstance(two["valid"], bool)

        monkeypatch.setitem(sys.modules, "matplotlib", None)
        assert main([*argv, "--out", str(tmp_path / "no-plot")]) == 0
        out = capsys.readouterr().out
        assert 'bench.png: plots need matplotlib: pip install "cascade[plots]"' in out
        assert (tmp_path / "no-plot" / "bench.json").exists()


def test_cli_bench_refuses_other_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "http://192.168.1.5:8000", "--model", "digits"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cascade: error: bench URL 'http://192.168.1.5:8000': host")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ramp", "50"], "argument --ramp: needs START:END rates > 0"),
        (["--ramp", "0:400"], "argument --ramp: needs START:END rates > 0"),
        (["--rate", "-5"], "argument --rate: must be a number > 0, got '-5'"),
        (["--rate", "5", "--ramp", "1:2"], "argument --ramp: not allowed with argument --rate"),
        (["--rows-per-request", "0"], "argument --rows-per-request: must be a whole number >= 1"),
        (["--duration", "soon"], "argument --duration: must be a number > 0, got 'soon'"),
    ],
)
def test_cli_bench_usage_errors_exit_2(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "http://127.0.0.1:8000", "--model", "digits", *options])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_per_row_outputs_of_an_untraced_answer_are_read() -> None:
    from cascade.bench._loadgen import _score

    body = {
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [3], "data": ["1", "2", "3"]},
            {"name": "answered_by", "datatype": "BYTES", "shape": [3],
             "data": ["tiny", "large", "tiny"]},
            {"name": "degraded", "datatype": "BOOL", "shape": [3], "data": [False, True, True]},
        ],
        "parameters": {"gear": "brownout"},
    }  # fmt: skip
    assert _score(body, ["1", "2", "0"]) == (2, 2, ("tiny", "large", "tiny"), "brownout")


def test_binary_bodies_carry_the_rows_after_a_json_header() -> None:
    import json as json_module

    from cascade.bench import ModelInfo
    from cascade.bench._loadgen import _requests

    features = np.arange(30, dtype=np.float32).reshape(10, 3) / 7
    info = ModelInfo(name="m", input_name="x", width=3, classes=None)
    labels = [str(i % 2) for i in range(10)]
    bodies, expected, lengths = _requests(features, labels, info, 4, 50.0, count=3, binary=True)
    assert lengths is not None and len(bodies) == len(lengths) == 3
    header = json_module.loads(bodies[1][: lengths[1]])
    (tensor,) = header["inputs"]
    assert tensor["shape"] == [4, 3] and "data" not in tensor
    assert tensor["parameters"] == {"binary_data_size": 48}
    assert header["parameters"] == {"trace": False, "deadline_ms": 50.0}
    rows = np.frombuffer(bodies[1][lengths[1] :], dtype="<f4").reshape(4, 3)
    np.testing.assert_array_equal(rows, features[[4, 5, 6, 7]])
    assert expected[1] == [labels[i] for i in (4, 5, 6, 7)]
    assert _requests(features, labels, info, 4, None, count=3)[2] is None  # JSON numbers
