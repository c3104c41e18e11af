"""A tier answered by a remote Open Inference Protocol v2 endpoint: split inference.

The edge runs its cheap tiers locally and reaches the large one over the network only for
the rows it is unsure of. Everything the network can do wrong becomes a ``BackendError``
(or a ``ModelTimeout``), so the engine's circuit breaker counts it and the rows fall back
to the best local answer, marked ``degraded``, with the error in the trace::

    refused, reset, DNS  ->  ModelUnavailable   (retried only if the request never left)
    slow past the budget ->  ModelTimeout
    non-200, bad JSON,   ->  BackendError       (503/429: ModelUnavailable)
    wrong shape/classes
    401 (token refused), ->  BackendError       (never retried: the breaker counts it)
    TLS not verified
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from cascade.backends._base import CALL_DEADLINE, InputSpec
from cascade.errors import BackendError, ModelTimeout, ModelUnavailable

__all__ = ["HttpModel"]

_BUSY = (429, 503)
_ERROR_CHARS = 200


class _RemoteTimeout(ModelTimeout, TimeoutError):
    """A ``ModelTimeout`` the engine sees as a timeout: it then tells a short request
    deadline (which must not count against the tier) from the tier's own slowness."""


class HttpModel:
    """A remote v2 model as a tier backend, over a pooled ``httpx.AsyncClient``.

    Rows go out in the binary tensor data extension (raw little-endian float32 after a JSON
    header; texts as JSON ``BYTES``), asking for ``probabilities`` only and no trace. The
    remote's metadata is read once before the first call: its input width and class list
    must match the local tiers'. Each call's network timeout is what is left of the engine's
    budget for it (``CALL_DEADLINE``), else ``timeout_s``. A call is retried (``retries``
    times at most) only when the connection could not be made, so the request never reached
    the server, and only while the budget left is at least ``min_retry_ms``.

    ``token``: sent as ``Authorization: Bearer`` on every request (never logged, nor put in
    an error). ``ca_bundle``: a PEM file of the authorities an ``https://`` endpoint's
    certificate is checked against instead of the system's; a certificate that does not
    verify is a ``BackendError``, never a plain-text fallback.

    Example::

        large = HttpModel(
            "http://cluster:8000/v2/models/covertype",
            input_spec=InputSpec("input", 54),
            classes=["1", "2", "3", "4", "5", "6", "7"],
        )
        probabilities = await large.predict(rows)   # (len(rows), 7) float32
        await large.aclose()
    """

    def __init__(
        self,
        url: str,
        *,
        input_spec: InputSpec,
        classes: Sequence[str] | None = None,
        n_classes: int | None = None,
        name: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 1,
        min_retry_ms: float = 5.0,
        max_connections: int = 32,
        binary: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        token: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        segments = parts.path.rstrip("/").split("/")
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or len(segments) < 4
            or (segments[-3:-1] != ["v2", "models"])
        ):
            raise ValueError(f"expected http(s)://HOST[:PORT]/.../v2/models/NAME, got {url!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.name = name or segments[-1]
        self.input_spec = input_spec
        self.classes = None if classes is None else [str(c) for c in classes]
        self.n_classes = len(self.classes) if self.classes is not None else n_classes
        self.timeout_s = timeout_s
        self.retries = retries
        self.min_retry_ms = min_retry_ms
        self.binary = binary and input_spec.dtype != "string"
        self.retried = 0  # connection retries so far: what the tests and metadata look at
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._transport = transport
        self._headers = {} if token is None else {"authorization": f"Bearer {token}"}
        self._tls: ssl.SSLContext | bool = True
        if ca_bundle is not None:
            try:
                self._tls = ssl.create_default_context(cafile=os.fspath(ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"ca_bundle {ca_bundle}: not a readable PEM file ({exc})"
                ) from None
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._verified = False

    def _http(self) -> httpx.AsyncClient:
        # Pooled connections belong to the event loop that opened them: a client made on
        # another loop (a test's, a reload's) would hand out dead sockets.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(
                limits=self._limits,
                transport=self._transport,
                verify=self._tls,
                headers=self._headers,
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled connections (the server's shutdown calls it)."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None

    def _where(self) -> str:
        return f"remote tier '{self.name}' ({self.url})"

    def _budget_s(self) -> float:
        """Seconds left for this call: the engine's deadline for it, else ``timeout_s``."""
        ends = CALL_DEADLINE.get()
        if ends is None:
            return self.timeout_s
        return min(self.timeout_s, ends - time.monotonic())

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, retried only when the connection could not be made."""
        attempt = 0
        while True:
            budget_s = self._budget_s()
            if budget_s <= 0:
                raise _RemoteTimeout(f"{self._where()}: no time left for the call")
            try:
                return await self._http().request(method, url, timeout=budget_s, **kwargs)
            except httpx.ConnectError as exc:
                self._verified = False
                if _tls_failure(exc):  # the same certificate fails again: no retry
                    raise BackendError(f"{self._where()}: TLS: {exc}") from exc
                # Refused or unreachable: nothing was sent, so trying again is safe.
                if attempt < self.retries and self._budget_s() * 1000 >= self.min_retry_ms:
                    attempt += 1
                    self.retried += 1
                    continue
                raise ModelUnavailable(f"{self._where()}: cannot connect: {exc}") from exc
            except httpx.TimeoutException as exc:
                self._verified = False
                raise _RemoteTimeout(
                    f"{self._where()}: no answer within {budget_s * 1000:.0f} ms "
                    f"({type(exc).__name__})"
                ) from exc
            except httpx.HTTPError as exc:  # reset mid-request: it may have reached the server
                self._verified = False
                raise ModelUnavailable(f"{self._where()}: {type(exc).__name__}: {exc}") from exc

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        return self._answer(response)[0]

    def _answer(self, response: httpx.Response) -> tuple[dict[str, Any], bytes]:
        """A 200 answer's JSON document, and the binary data after it (binary extension)."""
        if response.status_code == 401:
            # not retried, and the breaker counts it: the token will not change by itself
            why = "refused the token" if self._headers else "asks for a bearer token"
            raise BackendError(
                f"{self._where()}: HTTP 401: the endpoint {why} (the tier's token_env or "
                f"token_file): {response.text[:_ERROR_CHARS]}"
            )
        if response.status_code != 200:
            text = response.text[:_ERROR_CHARS]
            kind = ModelUnavailable if response.status_code in _BUSY else BackendError
            raise kind(f"{self._where()}: HTTP {response.status_code}: {text}")
        content, raw = response.content, b""
        length = response.headers.get("inference-header-content-length")
        try:
            if length is not None:
                content, raw = content[: int(length)], content[int(length) :]
            document = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise BackendError(f"{self._where()}: malformed JSON answer: {exc}") from exc
        if not isinstance(document, dict):
            raise BackendError(f"{self._where()}: answer is not a JSON object")
        return document, raw

    async def _verify(self) -> None:
        """Read the remote's metadata: its input and classes must match the local tiers'."""
        meta = self._json(await self._send("GET", self.url))
        try:
            tensor = meta["inputs"][0]
            remote_width = tensor["shape"][-1] if self.input_spec.dtype != "string" else None
            params = meta.get("parameters") or {}
            remote_classes = params.get("classes")
            if isinstance(remote_classes, str):  # a list as JSON text: parameters are scalars
                remote_classes = json.loads(remote_classes)
            outputs = {o["name"]: o for o in meta.get("outputs", [])}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(f"{self._where()}: malformed metadata: {exc!r}") from exc
        width = self.input_spec.width
        if width is not None and remote_width not in (None, -1, width):
            raise BackendError(
                f"{self._where()}: takes {remote_width} features per row; the local tiers "
                f"take {width}"
            )
        if self.classes is not None and remote_classes is not None:
            if [str(c) for c in remote_classes] != self.classes:
                raise BackendError(
                    f"{self._where()}: classes {remote_classes} differ from the local tiers' "
                    f"{self.classes}"
                )
        elif self.n_classes is not None and "probabilities" in outputs:
            shape = outputs["probabilities"].get("shape") or []
            if shape and shape[-1] not in (-1, self.n_classes):
                raise BackendError(
                    f"{self._where()}: answers {shape[-1]} classes; the local tiers "
                    f"{self.n_classes}"
                )
        self._verified = True

    def _request(self, batch: Any) -> tuple[bytes, dict[str, str], int]:
        options: dict[str, Any] = {"trace": False}
        if CALL_DEADLINE.get() is not None:
            # the remote sheds (503) what it cannot answer in time instead of answering late
            options["deadline_ms"] = max(1.0, round(self._budget_s() * 1000.0, 1))
        # probabilities only, as raw float32 after the JSON header when rows go binary too
        wanted = {"name": "probabilities", "parameters": {"binary_data": self.binary}}
        parameters = {"outputs": [wanted], "parameters": options}
        spec = self.input_spec
        if spec.dtype == "string":
            texts = [str(t) for t in np.asarray(batch, dtype=object).ravel()]
            tensor: dict[str, Any] = {"name": spec.name, "shape": [len(texts)],
                                      "datatype": "BYTES", "data": texts}  # fmt: skip
            body = json.dumps({"inputs": [tensor], **parameters}).encode()
            return body, {"content-type": "application/json"}, len(texts)
        rows = np.ascontiguousarray(batch, dtype="<f4")
        if rows.ndim != 2:
            rows = rows.reshape(len(rows), -1)
        tensor = {"name": spec.name, "shape": list(rows.shape), "datatype": "FP32"}
        if not self.binary:
            tensor["data"] = rows.ravel().tolist()
            body = json.dumps({"inputs": [tensor], **parameters}).encode()
            return body, {"content-type": "application/json"}, len(rows)
        raw = rows.tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps({"inputs": [tensor], **parameters}).encode()
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
        return header + raw, headers, len(rows)

    def _probabilities(self, document: dict[str, Any], n: int, raw: bytes = b"") -> np.ndarray:
        """The answer's ``probabilities``: JSON ``data``, or ``raw`` (the bytes after the
        JSON header of a binary answer)."""
        outputs = document.get("outputs")
        found = None
        if isinstance(outputs, list):
            found = next(
                (o for o in outputs if isinstance(o, dict) and o.get("name") == "probabilities"),
                None,
            )
        if found is None:
            raise BackendError(f"{self._where()}: the answer has no 'probabilities' output")
        try:
            shape = [int(d) for d in found["shape"]]
            if "data" in found:
                data = np.asarray(found["data"], dtype=np.float32)
            else:  # binary: the only output asked for, so all the bytes after the header
                size = int(found["parameters"]["binary_data_size"])
                if found.get("datatype") != "FP32" or size != len(raw):
                    raise ValueError(f"binary {found.get('datatype')} of {size} bytes, "
                                     f"{len(raw)} sent")  # fmt: skip
                data = np.frombuffer(raw, dtype="<f4")
            probabilities = data.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{self._where()}: malformed 'probabilities': {exc}") from exc
        k = self.n_classes
        if (
            probabilities.ndim != 2
            or probabilities.shape[0] != n
            or (k is not None and probabilities.shape[1] != k)
        ):
            raise BackendError(
                f"{self._where()}: expected probabilities of shape [{n}, {k or 'n_classes'}], "
                f"got {list(probabilities.shape)}"
            )
        return probabilities

    async def predict(self, batch: Any) -> np.ndarray:
        """Class probabilities ``(len(batch), n_classes)`` from the remote endpoint."""
        if not self._verified:
            await self._verify()
        body, headers, n = self._request(batch)
        response = await self._send("POST", f"{self.url}/infer", content=body, headers=headers)
        document, raw = self._answer(response)
        return self._probabilities(document, n, raw)


def _tls_failure(exc: BaseException) -> bool:
    """Whether a connection failed on TLS (a certificate not verified, a handshake refused)
    rather than on the network: httpx wraps the ``ssl`` error in ``ConnectError``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
