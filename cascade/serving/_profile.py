"""A request's latency profile: where its time went, phase by phase, on one clock.

A request is profiled when it asks (``parameters.profile: true``) or when its policy samples
it (``profile: {sample_rate: ...}``); every other request records nothing: no
:class:`Profile` exists, no clock is read for it and no tier call keeps its times. A
profile is a list of phases, each ``(name, start, end)`` on the service's clock, contiguous
from the first to the last, so that they add up to the time the request spent in the
service (``total_ms``) by construction:

============================  ==============================================================
``before``                    the client's send time (header ``x-cascade-sent-at``, epoch
                              seconds) until the host's first line of code: network, the
                              HTTP server, Serve's proxy, router and queue. Only with the
                              header, on the same machine; never guessed
``read``                      from the host's first line until the body is read: the edge's
                              ASGI receive, Serve streaming the body to the replica. Only
                              with ``x-cascade-sent-at`` (only then do the hosts read the
                              clock on arrival); without it, the body read is in ``parse``
``parse``                     parsing and validating the request
``admission``                 admission control and the gear
``cache``                     answer cache lookups, and storing the answers after the route
``coalesce``                  waiting in the coalescer for this request's batch to start
``route``                     the engine's own work in the batch, between its tier calls
``tier.NAME``                 a tier call the batch made (an inline model, or a remote HTTP
                              tier whole: its network and the remote's time together)
``tier.NAME.hop``             a Ray deployment tier's call outside its replica: the handle,
                              Ray's router and transport, both ways; drawn as two halves
                              around the replica's parts (how it divides is not measured)
``tier.NAME.queue``           ... waiting in the replica for its ``@serve.batch`` to start
``tier.NAME.model``           ... the replica's model run (the whole merged batch's)
``wake``                      from the batch's end until this request's task runs again
``metrics``                   recording the request's metrics
``encode``                    building and serializing the response
============================  ==============================================================

Every tier call of the batch is in the profile of every request in it, whether or not it
carried that request's rows: the request waits for the whole batch either way. Under
speculative and complexity routing tiers run concurrently; their phases then overlap and
add up to more than the time they took.

An asked-for profile rides in the response as ``parameters.profile``, the compact JSON
*string* of :meth:`Profile.to_dict` (response parameters must stay scalars for KServe and
gRPC clients); a sampled one goes to the metric ``cascade_phase_latency_ms{phase}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cascade.routing import TierCall

__all__ = ["PROFILE_HEADER", "Profile", "sends_its_time"]

PROFILE_HEADER = "x-cascade-sent-at"
"""The request header with the client's send time (epoch seconds, e.g. ``time.time()``):
with it a profile starts at the client, not at the server's first line (phase ``before``)."""
_RAW_HEADER = PROFILE_HEADER.encode("latin-1")


def sends_its_time(raw_headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether ASGI headers (names lower-case, as servers give them) carry the client's send
    time: a host asks on every request, so this allocates nothing and reads no clock.

    Example::

        received_s = service.clock() if sends_its_time(scope["headers"]) else None
    """
    for name, _ in raw_headers:  # noqa: SIM110 (any() over a generator allocates one)
        if name == _RAW_HEADER:
            return True
    return False


class Profile:
    """The phases of one profiled request, recorded as it runs (see the module's table).

    ``clock`` returns seconds (the service's: ``time.perf_counter``); ``origin_s`` is where
    the service's part starts on it. ``before_ms`` is the time before it, from the client's
    send time. ``asked``: the request asked for its profile (it rides in the response);
    ``sampled``: the policy sampled it (it goes to the phase metric).

    Example::

        profile = Profile(time.perf_counter, began)
        ...parse...
        profile.mark("parse")
        profile.to_json()   # '{"total_ms":0.08,"phases":[["parse",0.0,0.08]]}'
    """

    __slots__ = ("asked", "batch", "clock", "cursor_s", "origin_s", "phases", "sampled")

    def __init__(
        self,
        clock: Callable[[], float],
        origin_s: float,
        *,
        before_ms: float | None = None,
        asked: bool = True,
        sampled: bool = False,
    ) -> None:
        self.clock = clock
        self.origin_s = origin_s
        self.cursor_s = origin_s  # where the next phase starts
        self.phases: list[tuple[str, float, float]] = []
        if before_ms is not None:
            self.phases.append(("before", origin_s - before_ms / 1000.0, origin_s))
        self.batch: tuple[int, int] | None = None  # (requests, rows) of the engine batch
        self.asked = asked
        self.sampled = sampled

    def mark(self, name: str, *, at_s: float | None = None) -> None:
        """End phase ``name`` now (or at ``at_s``, a time read earlier on this clock): it
        ran from the end of the previous phase until then."""
        now = self.clock() if at_s is None else at_s
        self.phases.append((name, self.cursor_s, now))
        self.cursor_s = now

    def ran_in_batch(
        self,
        began_s: float,
        ended_s: float,
        calls: Iterable[TierCall],
        *,
        requests: int,
        rows: int,
    ) -> None:
        """The request's engine batch ran from ``began_s`` to ``ended_s`` (this profile's
        clock) and made ``calls`` (engine ms since the batch began): phases ``coalesce``
        (until it began), the tier calls and ``route`` (the rest of the batch).

        The engine starts its own clock a few µs after ``began_s``; a call is placed at
        ``began_s`` plus its engine offset, so that slack lands in the last ``route``.
        """
        self.phases.append(("coalesce", self.cursor_s, max(self.cursor_s, began_s)))
        cursor = began_s
        for call in sorted(calls, key=lambda c: c.started_ms):
            start = min(max(began_s + call.started_ms / 1000.0, began_s), ended_s)
            end = min(max(began_s + call.ended_ms / 1000.0, start), ended_s)
            if start > cursor:
                self.phases.append(("route", cursor, start))
            self._tier(call.tier, start, end, call.parts)
            cursor = max(cursor, end)
        if ended_s > cursor:
            self.phases.append(("route", cursor, ended_s))
        self.cursor_s = max(self.cursor_s, ended_s)
        self.batch = (requests, rows)

    def _tier(self, tier: str, start: float, end: float, parts: dict[str, float] | None) -> None:
        name = f"tier.{tier}"
        if not parts:
            self.phases.append((name, start, end))
            return
        took = end - start
        inside = sum(parts.values()) / 1000.0
        # the replica's parts on its own clock; should they exceed the call (clock
        # granularity), they are scaled into it rather than pushed past its end
        scale = 1.0 if inside <= took or inside <= 0 else took / inside
        half = (took - inside * scale) / 2.0
        at = start + half
        self.phases.append((f"{name}.hop", start, at))
        for part, ms in parts.items():
            self.phases.append((f"{name}.{part}", at, at + ms / 1000.0 * scale))
            at += ms / 1000.0 * scale
        self.phases.append((f"{name}.hop", at, max(at, end)))

    @property
    def total_ms(self) -> float:
        """The service's part: from ``origin_s`` to the end of the last phase."""
        return (self.cursor_s - self.origin_s) * 1000.0

    def durations(self) -> dict[str, float]:
        """Milliseconds per phase name (a name that recurs, such as ``route``, summed)."""
        out: dict[str, float] = {}
        for name, start, end in self.phases:
            out[name] = out.get(name, 0.0) + (end - start) * 1000.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """``{"total_ms", "phases": [[name, start_ms, duration_ms], ...], "batch"}``: times in
        ms from ``origin_s`` (``before`` starts below 0), rounded to the µs; ``batch`` is
        ``{"requests", "rows"}`` of the engine batch (absent when no batch ran: every row
        came from a cache)."""
        origin = self.origin_s
        out: dict[str, Any] = {
            "total_ms": round(self.total_ms, 3),
            "phases": [
                [name, round((start - origin) * 1000.0, 3), round((end - start) * 1000.0, 3)]
                for name, start, end in self.phases
            ],
        }
        if self.batch is not None:
            out["batch"] = {"requests": self.batch[0], "rows": self.batch[1]}
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON: the response's ``parameters.profile`` string."""
        return json.dumps(self.to_dict(), separators=(",", ":"))
