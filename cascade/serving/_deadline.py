"""A request's deadline, from the body's parameters and the standard headers.

A client may say how long it will wait in any of these ways; the tightest one counts:

- ``parameters.deadline_ms`` in the body (the protocol's own place for it);
- ``grpc-timeout`` (gRPC's relative budget: up to 8 digits and a unit, ``H M S m u n``:
  ``250m`` is 250 ms), which gRPC clients and proxies already send;
- ``x-envoy-expected-rq-timeout-ms`` (what Envoy and Istio sidecars tell the upstream);
- ``x-cascade-deadline``: an absolute deadline, epoch seconds.

A relative budget counts from when the client sent the request when it says so
(``x-cascade-sent-at``, epoch seconds, as ``cascade bench`` and ``cascade profile`` send
it), else from when the request reached the service. An absolute deadline and the send
time count the time spent before our code runs, in Serve's proxy or HAProxy's queue, in
the socket: only they let the service see a request that went stale on its way in. Both
read this machine's clock against the client's: on one machine, or with NTP-synchronised
clocks (a few ms apart), that is what they are for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from cascade.errors import InputError
from cascade.serving._profile import PROFILE_HEADER

__all__ = [
    "DEADLINE_HEADER",
    "DEADLINE_HEADERS",
    "epoch_header",
    "request_budget_ms",
    "sent_delay_ms",
]

DEADLINE_HEADER = "x-cascade-deadline"
_GRPC = "grpc-timeout"
_ENVOY = "x-envoy-expected-rq-timeout-ms"
DEADLINE_HEADERS = (_GRPC, _ENVOY, DEADLINE_HEADER)
_GRPC_UNITS_MS = {"H": 3_600_000.0, "M": 60_000.0, "S": 1000.0, "m": 1.0, "u": 1e-3, "n": 1e-6}
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")


def epoch_header(headers: Mapping[str, str], name: str) -> float | None:
    """Header ``name`` as epoch seconds (``None`` when absent); ``InputError`` when it is
    not a finite number."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        what = "the send time in epoch seconds" if name == PROFILE_HEADER else (
            "epoch seconds (like 1767225600.25)")  # fmt: skip
        raise InputError(f"{name} must be {what}, got {value!r}")
    return seconds


def request_budget_ms(
    headers: Mapping[str, str], parameter_ms: float | None, *, wall_s: float
) -> float | None:
    """Milliseconds left of the request's tightest deadline at epoch time ``wall_s``
    (``None``: it has none). May be zero or negative: the deadline has passed.

    ``headers`` are looked up by lower-case name. Raises ``InputError`` for a header that
    does not parse.

    Example::

        request_budget_ms({"grpc-timeout": "250m"}, 1000.0, wall_s=time.time())  # 250.0
    """
    relative: list[float] = [] if parameter_ms is None else [parameter_ms]
    grpc = headers.get(_GRPC)
    if grpc is not None:
        match = _GRPC_TIMEOUT.fullmatch(grpc.strip())
        if match is None:
            raise InputError(
                f"{_GRPC} must be up to 8 digits and a unit (H, M, S, m, u, n), like 250m; "
                f"got {grpc!r}"
            )
        relative.append(int(match.group(1)) * _GRPC_UNITS_MS[match.group(2)])
    envoy = headers.get(_ENVOY)
    if envoy is not None:
        try:
            envoy_ms = float(envoy)
        except ValueError:
            envoy_ms = math.nan
        if not (math.isfinite(envoy_ms) and envoy_ms > 0):
            raise InputError(f"{_ENVOY} must be a positive number of ms, got {envoy!r}")
        relative.append(envoy_ms)
    budgets: list[float] = []
    if relative:
        sent = epoch_header(headers, PROFILE_HEADER)
        # a send time in the future is another machine's clock ahead of ours: no age then
        age_ms = 0.0 if sent is None else max(0.0, (wall_s - sent) * 1000.0)
        budgets.append(min(relative) - age_ms)
    deadline = epoch_header(headers, DEADLINE_HEADER)
    if deadline is not None:
        budgets.append((deadline - wall_s) * 1000.0)
    return min(budgets) if budgets else None


def sent_delay_ms(headers: Mapping[str, str], *, wall_s: float) -> float | None:
    """How long after its send (``x-cascade-sent-at``) the request reached the service at
    epoch time ``wall_s``; ``None`` without the header or with a send time ahead of this
    clock (another machine's). Raises ``InputError`` for a header that does not parse."""
    sent = epoch_header(headers, PROFILE_HEADER)
    if sent is None or sent > wall_s:
        return None
    return (wall_s - sent) * 1000.0
