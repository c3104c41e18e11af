"""The open-loop load generator: labelled rows sent to a local v2 endpoint on a schedule.

Open loop means the schedule alone decides when a request leaves: each request is its own
asyncio task, so a slow server never slows the sender. Requests that would exceed the
in-flight cap are recorded as ``client_dropped`` instead of being sent late.

Only this machine is a valid target (127.0.0.1, localhost, ::1): a load generator pointed
at someone else's server is a denial of service.

Example::

    split = cascade.read_dataset("digits").test
    offsets = poisson_arrivals(100, duration_s=30, seed=0)
    report = asyncio.run(run_load("http://127.0.0.1:8000", "digits", split.X, split.y,
                                  offsets, deadline_ms=50))
    print(report.summary())
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from cascade.bench._http import TRANSPORT_ERRORS, ConnectionPool, infer_body, request_head
from cascade.bench._report import MAX_SEND_LAG_MS, BenchReport, RequestRecord
from cascade.errors import InputError, ModelUnavailable
from cascade.serving import PROFILE_HEADER

__all__ = [
    "LOOPBACK_HOSTS",
    "Client",
    "Loop",
    "ModelInfo",
    "drive",
    "fetch_metadata",
    "loopback_url",
    "run_load",
]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The only hosts :func:`run_load` sends to."""

_JSON = {"content-type": "application/json"}


def loopback_url(url: str) -> str:
    """Check that ``url`` is an http(s) URL of this machine; return it without a trailing /.

    Example::

        >>> loopback_url("http://127.0.0.1:8000/")
        'http://127.0.0.1:8000'
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InputError(f"bench URL {url!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise InputError(f"bench URL {url!r} must start with http:// or https://")
    if parsed.host not in LOOPBACK_HOSTS:
        raise InputError(
            f"bench URL {url!r}: host {parsed.host!r} is not this machine; cascade bench "
            f"only sends load to loopback (allowed hosts: {', '.join(LOOPBACK_HOSTS)})"
        )
    if parsed.query or parsed.fragment:
        raise InputError(f"bench URL {url!r} must not hold a query or fragment")
    return str(parsed).rstrip("/")


@dataclass(frozen=True)
class ModelInfo:
    """What the bench needs from the v2 model metadata (``GET /v2/models/{name}``).

    Example::

        ModelInfo(name="digits", input_name="input", width=64, classes=None)
    """

    name: str
    input_name: str
    width: int
    classes: tuple[str, ...] | None


def _model_path(model: str) -> str:
    return f"/v2/models/{quote(model, safe='')}"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text[:200]


async def fetch_metadata(client: httpx.AsyncClient, base: str, model: str) -> ModelInfo:
    """Read the model's input name, width and classes; fail clearly if it is not there.

    Example::

        async with httpx.AsyncClient() as client:
            info = await fetch_metadata(client, "http://127.0.0.1:8000", "digits")
    """
    url = base + _model_path(model)
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        raise ModelUnavailable(
            f"cannot reach {url}: {type(exc).__name__} {exc} (is `cascade serve` running?)"
        ) from exc
    if response.status_code == 404:
        raise ModelUnavailable(
            f"{url}: no model {model!r} there (HTTP 404: {_error_text(response)})"
        )
    if response.status_code != 200:
        raise ModelUnavailable(
            f"{url}: metadata request failed with HTTP {response.status_code}: "
            f"{_error_text(response)}"
        )
    try:
        meta = response.json()
        tensor = meta["inputs"][0]
        name, shape = tensor["name"], tensor["shape"]
        classes = (meta.get("parameters") or {}).get("classes")
        if isinstance(classes, str):  # a list as JSON text: the protocol's parameters are scalars
            classes = json.loads(classes)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelUnavailable(
            f"{url}: not v2 model metadata ({type(exc).__name__}: {exc})"
        ) from exc
    valid_shape = (
        isinstance(shape, list)
        and len(shape) == 2
        and shape[0] == -1
        and isinstance(shape[1], int)
        and shape[1] > 0
    )
    if not isinstance(name, str) or not valid_shape:
        raise ModelUnavailable(
            f"{url}: expected inputs[0] with a name and shape [-1, width], got {json.dumps(tensor)}"
        )
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise ModelUnavailable(
            f"{url}: parameters.classes must be a list of strings or null, got {classes!r}"
        )
    return ModelInfo(model, name, shape[1], None if classes is None else tuple(classes))


def _expected_labels(y: npt.NDArray[Any], info: ModelInfo) -> list[str]:
    """The label output each row should get, as text (class names, or indices)."""
    if y.dtype.kind in "iu":
        if info.classes is None:
            return [str(int(v)) for v in y]
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(info.classes):
            raise InputError(
                f"labels run from {int(y.min())} to {int(y.max())} but model {info.name!r} "
                f"has {len(info.classes)} classes"
            )
        return [info.classes[int(v)] for v in y]
    return [str(v) for v in y]


def _check_rows(X: npt.ArrayLike, y: npt.ArrayLike, info: ModelInfo) -> npt.NDArray[np.float32]:
    features = np.asarray(X)
    if features.ndim != 2 or features.dtype.kind not in "fiub":
        raise InputError(
            f"bench replays numeric tables of shape (rows, features); got an array of shape "
            f"{features.shape} and dtype {features.dtype}"
        )
    if len(features) == 0 or len(features) != len(np.asarray(y)):
        raise InputError(
            f"need as many labels as rows (>= 1), got {len(features)} rows and "
            f"{len(np.asarray(y))} labels"
        )
    if features.shape[1] != info.width:
        raise InputError(
            f"the rows have {features.shape[1]} features but model {info.name!r} takes "
            f"{info.width} (input {info.input_name!r})"
        )
    return features.astype(np.float32)


class _BadResponse(Exception):
    pass


def _score(body: Any, expected: list[str]) -> tuple[int, int, tuple[str, ...], str | None]:
    """Correct rows, degraded rows, answering tiers and the main gear of a 200 body."""
    try:
        outputs = {tensor["name"]: tensor for tensor in body["outputs"]}
        labels = outputs["label"]["data"]
        parameters = body.get("parameters") or {}
        if "answered_by" in outputs:  # cascade's per-row outputs
            tiers = tuple(str(t) for t in outputs["answered_by"]["data"])
            degraded = sum(bool(d) for d in (outputs.get("degraded") or {}).get("data") or [])
            gear_name = parameters.get("gear")
            gears = Counter([str(gear_name)] if gear_name is not None else [])
        else:  # a trace (a JSON string, or a list from servers before it was one), or none
            decisions = parameters.get("trace") or parameters.get("decisions") or []
            if isinstance(decisions, str):
                decisions = json.loads(decisions)
            degraded = sum(bool(d.get("degraded")) for d in decisions)
            tiers = tuple(str(d["answered_by"]) for d in decisions)
            gears = Counter(str(d["gear"]) for d in decisions if d.get("gear") is not None)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _BadResponse(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(labels, list) or len(labels) != len(expected):
        raise _BadResponse(f"expected {len(expected)} labels, got {labels!r:.80}")
    correct = sum(str(got) == want for got, want in zip(labels, expected, strict=True))
    gear = gears.most_common(1)[0][0] if gears else None
    return correct, degraded, tiers, gear


class _Sender:
    """The state of one run: the client, the in-flight count, the retry budget and a record
    per request."""

    def __init__(
        self,
        post: _Post,
        bodies: list[bytes],
        expected: list[list[str]],
        *,
        timeout_s: float,
        max_in_flight: int,
        deadline_ms: float | None,
        retry_budget: float,
        start_epoch: float | None = None,
    ) -> None:
        self.post = post
        self.bodies = bodies
        self.expected = expected
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.deadline_ms = deadline_ms
        self.retry_budget = retry_budget
        self.rows = len(expected[0])
        self.in_flight = 0
        self.first_sends = 0
        self.retries = 0
        self.answers: dict[int, tuple[int, bytes]] = {}  # request -> (body slot, 200 body)
        self.loop = asyncio.get_running_loop()
        # offset 0 is now, or the epoch time every process of a run starts at
        lead = 0.0 if start_epoch is None else start_epoch - time.time()
        self.start = self.loop.time() + lead

    async def send(self, index: int, offset: float) -> RequestRecord:
        """Post request ``index`` now; record what came back, whatever it was."""
        slot = index % len(self.bodies)
        expected = self.expected[slot]
        done = partial(RequestRecord, offset, self.loop.time() - self.start, rows=len(expected))
        retries = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        status, retry_after, payload = await self.post(slot)
                except _ERRORS as exc:
                    return done(self._since(offset), error=type(exc).__name__, retries=retries)
                wait_s = self._retry_wait(status, retry_after, offset)
                if wait_s is None:
                    break
                retries += 1
                self.retries += 1
                await asyncio.sleep(wait_s)
        finally:
            self.in_flight -= 1
        latency = self._since(offset)
        if status != 200:
            return done(latency, status, retries=retries)
        # scored after the run (``_scored``): parsing answers here would hold up the sender
        self.answers[index] = (slot, payload)
        return done(latency, 200, retries=retries)

    def _retry_wait(self, status: int, retry_after: str | None, offset: float) -> float | None:
        """Seconds to wait before sending a shed request again, or None: not a 503 with a
        ``Retry-After`` in seconds, the budget spent (retries at most ``retry_budget`` of the
        first sends so far), or the wait would outlast the request's deadline."""
        if status != 503 or retry_after is None or not self.retry_budget:
            return None
        try:
            wait_s = max(float(retry_after), 0.0)
        except ValueError:  # an HTTP date: not what a server under load should send
            return None
        if self.retries + 1 > self.retry_budget * self.first_sends:
            return None
        if self.deadline_ms is not None and self._since(offset) + 1000.0 * wait_s >= (
            self.deadline_ms
        ):
            return None
        return wait_s

    def _since(self, offset: float) -> float:
        return 1000.0 * (self.loop.time() - self.start - offset)

    async def send_all(
        self, indices: list[int], offsets: list[float], progress: bool
    ) -> list[RequestRecord]:
        """Send request ``indices[k]`` at ``offsets[k]``; their records, in that order."""
        from tqdm import tqdm

        records: dict[int, RequestRecord] = {}
        tasks: list[tuple[int, asyncio.Task[RequestRecord]]] = []
        with tqdm(total=len(offsets), disable=not progress, unit="req", leave=False) as bar:
            for index, offset in zip(indices, offsets, strict=True):
                delay = self.start + offset - self.loop.time()
                # Yield even when late, so sent requests get written while the sender catches up.
                await asyncio.sleep(max(delay, 0.0))
                bar.update(1)
                if self.in_flight >= self.max_in_flight:
                    records[index] = RequestRecord(offset, rows=self.rows, dropped=True)
                    continue
                self.in_flight += 1  # now, not when the task starts: the cap holds in bursts
                self.first_sends += 1
                tasks.append((index, asyncio.create_task(self.send(index, offset))))
            for index, task in tasks:
                records[index] = await task
        return [self._scored(index, records[index]) for index in indices]

    def _scored(self, index: int, record: RequestRecord) -> RequestRecord:
        """The record of an answered request with its answer scored against the labels."""
        if index not in self.answers:
            return record
        slot, payload = self.answers.pop(index)
        try:
            correct, degraded, tiers, gear = _score(json.loads(payload), self.expected[slot])
        except (ValueError, _BadResponse):
            return replace(record, error="BadResponse")
        return replace(record, correct=correct, degraded=degraded, answered_by=tiers, gear=gear)


_Post = Callable[[int], Awaitable[tuple[int, str | None, bytes]]]
"""Send request body ``slot``; its status, ``Retry-After`` and body."""

_ERRORS = (httpx.HTTPError, *TRANSPORT_ERRORS)

Client = Literal["bare", "httpx"]
Loop = Literal["auto", "uvloop", "asyncio"]
T = TypeVar("T")


@contextlib.asynccontextmanager
async def _poster(
    client: Client, base: str, path: str, bodies: list[bytes], headers: list[dict[str, str]],
    *, max_connections: int, timeout_s: float, stamp: bool = False,
) -> AsyncIterator[_Post]:  # fmt: skip
    """A function that sends body ``slot`` with the chosen client, for the run's length.
    ``stamp``: every request carries its send time (``x-cascade-sent-at``), so that a
    relative deadline counts from the send, the time before the server's code included."""
    if client == "httpx":
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(timeout_s, pool=None), trust_env=False
        ) as session:

            async def post_httpx(slot: int) -> tuple[int, str | None, bytes]:
                sent = {PROFILE_HEADER: repr(time.time())} if stamp else {}
                response = await session.post(
                    base + path, content=bodies[slot], headers={**_JSON, **headers[slot], **sent}
                )
                return response.status_code, response.headers.get("retry-after"), response.content

            yield post_httpx
        return
    parsed = httpx.URL(base)
    if parsed.scheme != "http":
        raise InputError(f"the bare client speaks plain HTTP; use client='httpx' for {base!r}")
    port = parsed.port or 80
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    last = {PROFILE_HEADER: ""} if stamp else {}  # post writes the time after it
    heads = [request_head(f"{host}:{port}", path, len(body), {**extra, **last})
             for body, extra in zip(bodies, headers, strict=True)]  # fmt: skip
    pool = ConnectionPool(parsed.host, port, max_connections)

    async def post_bare(slot: int) -> tuple[int, str | None, bytes]:
        async with pool.connection() as connection:
            answer = await connection.post(heads[slot], bodies[slot], timeout_s, stamp=stamp)
        retry_after = answer.headers.get(b"retry-after")
        return answer.status, None if retry_after is None else retry_after.decode(), answer.payload

    try:
        yield post_bare
    finally:
        await pool.aclose()


def drive(coroutine: Coroutine[Any, Any, T], *, loop: Loop = "auto") -> T:
    """Run ``coroutine`` to its end on a fresh event loop: uvloop's when it is installed
    (``loop="auto"``, the default; ``ray[serve]`` brings it) or asked for, else asyncio's.
    A load generator on uvloop keeps its schedule at higher rates (benchmarks/loadgen.py).

    Example::

        report = drive(run_load("http://127.0.0.1:8000", "digits", X, y, offsets))
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise InputError("uvloop is not installed: pip install uvloop") from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


async def run_load(
    url: str,
    model: str,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    offsets: npt.ArrayLike,
    *,
    rows_per_request: int = 1,
    deadline_ms: float | None = None,
    timeout_s: float = 30.0,
    max_in_flight: int = 1024,
    max_connections: int = 256,
    duration_s: float | None = None,
    schedule: str = "",
    progress: bool = True,
    binary: bool = False,
    client: Client = "bare",
    retry_budget: float = 0.0,
    max_send_lag_ms: float = MAX_SEND_LAG_MS,
    processes: int = 1,
) -> BenchReport:
    """Send the labelled rows to ``{url}/v2/models/{model}/infer`` at ``offsets`` (seconds).

    Rows are replayed in order and cycled, ``rows_per_request`` per request, with
    ``parameters.trace`` off (and ``deadline_ms`` when given, with each request's send
    time in ``x-cascade-sent-at``: the server counts the deadline from the send, as the
    report does from the schedule). Each request may take
    ``timeout_s`` (connection wait included) before it counts as an error; at most
    ``max_in_flight`` are outstanding, over at most ``max_connections`` connections.
    ``duration_s`` is the window the rates in the report are per (default: the last offset);
    ``schedule`` describes the schedule in the report. ``binary`` sends the rows as the
    binary tensor data extension (raw float32 after a JSON header) instead of JSON numbers.
    ``client``: ``bare`` (default; pre-encoded requests over keep-alive connections, the
    cheapest per request) or ``httpx``. ``retry_budget``: a 503 with ``Retry-After`` is sent
    again after that wait while retries stay under this share of the requests sent (0, the
    default: never) and the wait ends before the deadline. The report is marked invalid when
    the send lag p99 exceeds ``max_send_lag_ms``. ``processes`` > 1 deals the schedule out
    to that many sender processes (every N-th request each, the in-flight cap and the
    connections shared out too), started together; no progress bar then.

    Raises ``InputError`` for a host other than this machine or rows that do not fit the
    model, and ``ModelUnavailable`` when the server or the model cannot be reached.

    Example::

        report = await run_load("http://127.0.0.1:8000", "digits", X, y,
                                poisson_arrivals(100, duration_s=10), deadline_ms=50)
    """
    base = loopback_url(url)
    times = np.asarray(offsets, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0 or not np.isfinite(times).all() or (times < 0).any():
        raise InputError("offsets must be a non-empty list of finite seconds >= 0")
    times = np.sort(times)
    counts = {"rows_per_request": rows_per_request, "max_in_flight": max_in_flight,
              "max_connections": max_connections, "processes": processes}  # fmt: skip
    for name, value in counts.items():
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    for name, number in (("timeout_s", timeout_s), ("deadline_ms", deadline_ms),
                         ("max_send_lag_ms", max_send_lag_ms)):  # fmt: skip
        if number is not None and not (math.isfinite(number) and number > 0):
            raise InputError(f"{name} must be a finite number > 0, got {number}")
    if not (math.isfinite(retry_budget) and retry_budget >= 0):
        raise InputError(f"retry_budget must be a share >= 0, got {retry_budget}")
    if client not in ("bare", "httpx"):
        raise InputError(f"client must be 'bare' or 'httpx', got {client!r}")
    window = duration_s if duration_s is not None else max(float(times[-1]), 1e-3)
    # trust_env=False: an HTTP(S)_PROXY in the environment must not carry loopback traffic away.
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), trust_env=False) as meta:
        info = await fetch_metadata(meta, base, model)
    features = _check_rows(X, y, info)
    labels = _expected_labels(np.asarray(y), info)
    path = f"{_model_path(model)}/infer"
    share = _Share(
        base=base, path=path, info=info, features=features, labels=labels,
        rows_per_request=rows_per_request, deadline_ms=deadline_ms, count=len(times),
        binary=binary, client=client, timeout_s=timeout_s,
        max_in_flight=math.ceil(max_in_flight / processes),
        max_connections=math.ceil(max_connections / processes), retry_budget=retry_budget,
    )  # fmt: skip
    if processes == 1:
        records = await share.send(list(range(len(times))), times.tolist(), None, progress)
    else:
        records = await asyncio.to_thread(_in_processes, share, times, processes)
    return BenchReport.from_records(
        records,
        duration_s=window,
        deadline_ms=deadline_ms,
        target=f"{base}{path}",
        schedule=schedule,
        max_send_lag_ms=max_send_lag_ms,
    )


@dataclass(frozen=True)
class _Share:
    """What one sender process needs to send its share of a run (picklable)."""

    base: str
    path: str
    info: ModelInfo
    features: npt.NDArray[np.float32]
    labels: list[str]
    rows_per_request: int
    deadline_ms: float | None
    count: int
    binary: bool
    client: Client
    timeout_s: float
    max_in_flight: int
    max_connections: int
    retry_budget: float

    def bodies(self) -> tuple[list[bytes], list[list[str]], list[dict[str, str]]]:
        bodies, expected, lengths = _requests(
            self.features, self.labels, self.info, self.rows_per_request, self.deadline_ms,
            count=self.count, binary=self.binary,
        )  # fmt: skip
        headers = [{} if lengths is None else {"inference-header-content-length": str(n)}
                   for n in (lengths or [0] * len(bodies))]  # fmt: skip
        return bodies, expected, headers

    async def send(
        self, indices: list[int], offsets: list[float], start_epoch: float | None,
        progress: bool, encoded: tuple[list[bytes], list[list[str]], list[dict[str, str]]]
        | None = None,
    ) -> list[RequestRecord]:  # fmt: skip
        """Send requests ``indices`` at ``offsets`` from ``start_epoch`` (None: now)."""
        bodies, expected, headers = encoded or self.bodies()
        async with _poster(self.client, self.base, self.path, bodies, headers,
                           max_connections=self.max_connections, timeout_s=self.timeout_s,
                           stamp=self.deadline_ms is not None) as post:  # fmt: skip
            sender = _Sender(post, bodies, expected, timeout_s=self.timeout_s,
                             max_in_flight=self.max_in_flight, deadline_ms=self.deadline_ms,
                             retry_budget=self.retry_budget, start_epoch=start_epoch)  # fmt: skip
            # What exists now (the bodies, the rows, the modules) is moved out of the
            # collector's way: a full collection over it paused the sender for tens of ms
            # (send lag p99 at 1,000 req/s: 20 ms before, 4 ms after; benchmarks/loadgen.py)
            gc.collect()
            gc.freeze()
            try:
                return await sender.send_all(indices, offsets, progress)
            finally:
                gc.unfreeze()


def _in_processes(
    share: _Share, times: npt.NDArray[np.float64], processes: int
) -> list[RequestRecord]:
    """Run ``share`` in ``processes`` sender processes, every N-th request each, started at
    one epoch time once all of them are ready; the records in schedule order."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    ready, go = context.Barrier(processes + 1), context.Barrier(processes + 1)
    start_at = context.Value("d", 0.0)
    results = context.Queue()
    workers = [
        context.Process(target=_sender_process, daemon=True,
                        args=(share, k, processes, times, ready, go, start_at, results))
        for k in range(processes)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    try:
        ready.wait(timeout=120)
        start_at.value = time.time() + 0.05
        go.wait(timeout=10)
        gathered: dict[int, RequestRecord] = {}
        for _ in workers:
            outcome = results.get()
            if isinstance(outcome, str):
                raise ModelUnavailable(f"a sender process failed: {outcome}")
            gathered.update(outcome)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    return [gathered[index] for index in range(len(times))]


def _sender_process(
    share: _Share, k: int, processes: int, times: npt.NDArray[np.float64],
    ready: Any, go: Any, start_at: Any, results: Any,
) -> None:  # fmt: skip
    """One sender process: its share of the schedule, from the common start."""
    try:
        indices = list(range(k, len(times), processes))
        encoded = share.bodies()
        ready.wait()
        go.wait()
        offsets = times[indices].tolist()
        records = drive(share.send(indices, offsets, start_at.value, False, encoded))
        results.put(dict(zip(indices, records, strict=True)))
    except BaseException as exc:  # the parent must hear of it, or it waits for ever
        results.put(f"{type(exc).__name__}: {exc}")


def _requests(
    features: npt.NDArray[np.float32],
    labels: list[str],
    info: ModelInfo,
    rows_per_request: int,
    deadline_ms: float | None,
    *,
    count: int,
    binary: bool = False,
) -> tuple[list[bytes], list[list[str]], list[int] | None]:
    """Every distinct request body of the cycle through the rows, with its expected labels.

    Request ``i`` starts at row ``i * rows_per_request`` (mod the row count), so the bodies
    repeat after ``n / gcd(n, rows_per_request)`` requests. The first ``count`` of them are
    encoded up front, to keep JSON encoding off the sender's clock.
    """
    n = len(features)
    # no full trace (the default): the outputs answered_by and degraded and the gear say
    # enough, and 64 rows of traces cost more to encode and parse than the answer itself
    parameters: dict[str, Any] = {"trace": False}
    if deadline_ms is not None:
        parameters["deadline_ms"] = deadline_ms
    bodies, expected, header_lengths = [], [], []
    for i in range(min(n // math.gcd(n, rows_per_request), count)):
        rows = [(i * rows_per_request + j) % n for j in range(rows_per_request)]
        body, header_length = infer_body(info.input_name, features[rows], parameters,
                                         binary=binary)  # fmt: skip
        bodies.append(body)
        header_lengths.append(header_length)
        expected.append([labels[r] for r in rows])
    return bodies, expected, header_lengths if binary else None
