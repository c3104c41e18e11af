"""A bare HTTP/1.1 client for load on this machine: pre-encoded requests, keep-alive
connections, the status, a few headers and the body read back, nothing more.

A general client's work per request (httpx here: about 1 ms of CPU, half before the
request leaves) would be counted as the server's by ``cascade profile``, and caps the rate
at which ``cascade bench`` can keep its schedule on a 2-core machine
(``benchmarks/loadgen.py`` measures both).

Example::

    head = request_head("127.0.0.1:8000", "/v2/models/digits/infer", len(body))
    pool = ConnectionPool("127.0.0.1", 8000, size=64)
    async with pool.connection() as connection:
        answer = await connection.post(head, body, timeout_s=5.0)
    answer.status, answer.payload
    await pool.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "TRANSPORT_ERRORS",
    "Answer",
    "Connection",
    "ConnectionPool",
    "infer_body",
    "request_head",
]

TRANSPORT_ERRORS = (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError)
"""What a request on a :class:`Connection` may raise: the server closed or refused the
connection, answered something that is not HTTP/1.1, or took longer than the timeout."""


def infer_body(
    input_name: str, rows: npt.ArrayLike, parameters: dict[str, Any], *, binary: bool
) -> tuple[bytes, int]:
    """A v2 infer request body for FP32 ``rows`` (2-D), and the length of its JSON header.

    ``binary``: the binary tensor data extension, the JSON header then the raw little-endian
    float32 values (send the length as ``Inference-Header-Content-Length``); otherwise the
    values as JSON numbers (the length is then the whole body's).

    Example::

        >>> infer_body("input", [[1.0, 2.0]], {"trace": False}, binary=True)[1]
        139
    """
    values = np.asarray(rows, dtype=np.float32)
    tensor: dict[str, Any] = {"name": input_name, "shape": list(values.shape), "datatype": "FP32"}
    raw = b""
    if binary:
        raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = values.ravel().tolist()
    header = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
    return header + raw, len(header)


def request_head(host: str, path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    """A POST request's line and headers, without the blank line that ends them (``post``
    writes it, after the send time when asked to stamp one).

    Example::

        >>> request_head("127.0.0.1:8000", "/v2", 2).split(b"\\r\\n")[-1]
        b'content-length: 2'
    """
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json",
             f"content-length: {length}"]  # fmt: skip
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join(lines).encode("latin-1")


@dataclass(frozen=True)
class Answer:
    """One response: its status, its headers (lower-case names) and its body; ``sent`` is
    the ``time.perf_counter()`` at which the request was written."""

    status: int
    headers: dict[bytes, bytes]
    payload: bytes
    sent: float


class Connection:
    """One keep-alive HTTP/1.1 connection to the loopback server, opened on first use and
    again after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(
        self, head: bytes, body: bytes, timeout_s: float, *, stamp: bool = False
    ) -> Answer:
        """Send one request and read its response (``Content-Length`` or chunked). With
        ``stamp`` the head's last header gets this epoch time as its value (it must end
        with ``name: ``). Raises one of :data:`TRANSPORT_ERRORS`; the connection is closed
        then, and the next request opens another.

        A kept-alive connection the server has closed meanwhile (its idle timeout) is not
        written to; when the close crosses the request (the server answers nothing at all),
        the request goes once more on a new connection, as browsers and httpx do."""
        try:
            async with asyncio.timeout(timeout_s):
                if self._reader is not None and self._reader.at_eof():
                    self.close()
                reused = self._writer is not None
                try:
                    return await self._exchange(head, body, stamp)
                except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                    answered = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                    if not reused or answered:
                        raise
                    self.close()
                    return await self._exchange(head, body, stamp)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, head: bytes, body: bytes, stamp: bool) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader = self._reader
        assert reader is not None
        sent = time.perf_counter()
        if stamp:
            self._writer.writelines([head, repr(time.time()).encode(), b"\r\n\r\n", body])
        else:
            self._writer.writelines([head, b"\r\n\r\n", body])
        status, headers = _head(await reader.readuntil(b"\r\n\r\n"))
        if b"content-length" in headers:
            payload = await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = await _chunked(reader)
        else:
            raise ValueError("a response without Content-Length or chunked encoding")
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return Answer(status, headers, payload, sent)

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def aclose(self) -> None:
        """Close the connection and wait until it is closed."""
        writer = self._writer
        self.close()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class ConnectionPool:
    """At most ``size`` connections to one server; the most recently used is lent first, so
    only as many are opened as requests are in flight at once."""

    def __init__(self, host: str, port: int, size: int) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one connection, got {size}")
        self._all = [Connection(host, port) for _ in range(size)]
        self._idle: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()
        for connection in reversed(self._all):
            self._idle.put_nowait(connection)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Borrow a connection (waiting for one when all are lent) and give it back."""
        connection = await self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put_nowait(connection)

    async def aclose(self) -> None:
        """Close every connection."""
        for connection in self._all:
            await connection.aclose()


def _head(raw: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = raw.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = (line.split(b":", 1) for line in lines[1:] if b":" in line)
    return status, {name.strip().lower(): value.strip() for name, value in fields}


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the (empty) trailer
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
