"""What a request costs served: its rows in the models at the batch each tier really sees, plus
the serving work paid per request and per hop.

A card's ``relative_cost`` compares per-row cost at batch 256, where a model's per-call
overhead is amortised. Served, a tier sees smaller batches: a request of ``R`` rows sends the
large tier only its escalated rows (about 18 of 64 on covertype), where a row costs about
twice as much; and each request pays the runtime's own work (parse, route, encode, Ray's
proxy and router) once, each call to a deployment tier one hop more. This model counts all
three, per request, without coalescing (concurrent requests merged into one engine batch
only make batches larger: the figures are the cost at low load, the upper bound).

For a tier reached by a share ``p`` of the rows (rows escalating independently), a request of
``R`` rows calls it with probability ``P = 1 - (1 - p)^R`` and then sends it ``R·p / P`` rows;
a request costs::

    request_us(R) + Σ_tiers P · (hop_us(rows) [deployment or remote] + rows · per_row_us(rows))

``per_row_us(b)`` is the card's per-row cost interpolated at batch ``b`` (linear in ``1/b``
between the measured 1/32/256, flat outside). Relative figures divide by always-large's
request of the same size: ``request_us(R) + hop_us(R) + R · per_row_us_large(R)``. The
overheads have a fixed part and a part per row (``x_us + x_us_per_row · rows``).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cascade.catalog import TierInfo
from cascade.errors import PolicyError
from cascade.policy import PolicyFile

__all__ = [
    "FALLBACK_OVERHEADS",
    "CostModel",
    "Overheads",
    "RequestCost",
    "per_row_us_at",
    "read_overheads",
]


def per_row_us_at(per_row_us: Mapping[int, float], batch: float) -> float:
    """Per-row cost at ``batch`` from costs measured at a few batch sizes.

    Linear in ``1/batch`` between measured sizes (exact when a call costs a fixed part plus
    a per-row part), the nearest measurement outside them.

    Example::

        per_row_us_at({1: 96.6, 32: 73.7, 256: 68.7}, 64)   # ≈ 71.8
    """
    if not per_row_us:
        raise PolicyError("cost model: a model card without per-row costs")
    sizes = sorted(per_row_us)
    if batch <= sizes[0]:
        return float(per_row_us[sizes[0]])
    if batch >= sizes[-1]:
        return float(per_row_us[sizes[-1]])
    hi = bisect.bisect_left(sizes, batch)
    b0, b1 = sizes[hi - 1], sizes[hi]
    t0, t1 = per_row_us[b0], per_row_us[b1]
    weight = (1 / b0 - 1 / batch) / (1 / b0 - 1 / b1)
    return float(t0 + weight * (t1 - t0))


@dataclass(frozen=True)
class Overheads:
    """Server CPU a runtime spends per request beyond the models, and per call to a tier that
    is not in the serving process (a Ray deployment, a remote endpoint), in µs: a fixed part
    and a part per row carried (parsing rows, encoding answers, moving them across a hop)."""

    runtime: str
    request_us: float
    hop_us: float
    source: str
    request_us_per_row: float = 0.0
    hop_us_per_row: float = 0.0

    def request(self, rows: float) -> float:
        """µs of serving work for a request of ``rows`` rows."""
        return self.request_us + self.request_us_per_row * rows

    def hop(self, rows: float) -> float:
        """µs of serving work for one call carrying ``rows`` rows to another process."""
        return self.hop_us + self.hop_us_per_row * rows

    def __post_init__(self) -> None:
        for name in ("request_us", "hop_us", "request_us_per_row", "hop_us_per_row"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise PolicyError(f"serving overheads: {name} must be >= 0, got {value}")


FALLBACK_OVERHEADS = {
    "ray": Overheads("ray", 5000.0, 2000.0, "fallback defaults (`cascade plan`'s)"),
    "edge": Overheads("edge", 250.0, 0.0, "fallback defaults"),
}
"""Used when no measurement is given: ``benchmarks/served_cost.py`` measures them and writes
``benchmarks/results/served_cost.json``, which :func:`read_overheads` reads."""

MEASURED = Path("benchmarks") / "results" / "served_cost.json"


def read_overheads(path: str | os.PathLike[str] | None = None) -> dict[str, Overheads]:
    """Per-runtime overheads measured by ``benchmarks/served_cost.py`` (its JSON's
    ``overheads``), else :data:`FALLBACK_OVERHEADS`. ``path=None`` looks for the benchmark's
    file under the working directory and falls back quietly; a given path must be readable.

    Example::

        read_overheads()["ray"].request_us
    """
    file = Path(path) if path is not None else MEASURED
    if not file.is_file():
        if path is not None:
            raise PolicyError(f"{file}: no such file (serving overheads)")
        return dict(FALLBACK_OVERHEADS)
    try:
        measured = json.loads(file.read_text())["overheads"]
        return {
            runtime: Overheads(
                runtime,
                float(value["request_us"]),
                float(value["hop_us"]),
                f"measured: {file} ({value.get('note', 'benchmarks/served_cost.py')})",
                float(value.get("request_us_per_row", 0.0)),
                float(value.get("hop_us_per_row", 0.0)),
            )
            for runtime, value in measured.items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{file}: not a served-cost measurement: {exc!r}") from exc


@dataclass(frozen=True)
class RequestCost:
    """One request's cost, in µs of server CPU, and how it splits."""

    rows: int
    request_us: float
    hops_us: float
    model_us: float
    calls: dict[str, float]  # expected calls per request, per tier
    batch: dict[str, float]  # rows per call, per tier

    @property
    def total_us(self) -> float:
        return self.request_us + self.hops_us + self.model_us

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_us": self.total_us}


class CostModel:
    """The served cost of a policy's requests from the share of rows reaching each tier.

    Example::

        model = CostModel.for_policy(loaded, evaluator.tiers, rows_per_request=64,
                                     overheads=read_overheads()["ray"])
        model.relative({"small": 1.0, "large": 0.28})   # (at served batches, served)
    """

    def __init__(
        self,
        per_row_us: Mapping[str, Mapping[int, float]],
        hops: Mapping[str, bool],
        *,
        reference: str,
        rows_per_request: int,
        overheads: Overheads,
    ) -> None:
        if rows_per_request < 1:
            raise PolicyError(f"rows per request must be >= 1, got {rows_per_request}")
        if reference not in per_row_us:
            raise PolicyError(f"cost model: no per-row costs for the reference tier {reference}")
        self.per_row_us = {t: dict(c) for t, c in per_row_us.items()}
        self.hops = dict(hops)
        self.reference = reference
        self.rows = rows_per_request
        self.overheads = overheads

    @classmethod
    def for_policy(
        cls,
        loaded: PolicyFile,
        tiers: Mapping[str, TierInfo],
        *,
        rows_per_request: int,
        overheads: Overheads,
    ) -> CostModel:
        """From the tiers' cards; a tier without a card costs its relative cost times the
        reference tier's per-row cost, at every batch."""
        reference = max(tiers, key=lambda name: tiers[name].cost)
        ref_card = tiers[reference].card
        if ref_card is None:
            raise PolicyError(
                f"{loaded.path or loaded.policy.name}: tiers.{reference}: the served cost needs "
                "the reference (dearest) tier's model card for per-row costs at each batch"
            )
        per_row: dict[str, Mapping[int, float]] = {}
        for name, info in tiers.items():
            if info.card is not None:
                per_row[name] = info.card.latency.per_row_us
            else:
                scale = info.cost / tiers[reference].cost
                per_row[name] = {b: us * scale for b, us in ref_card.latency.per_row_us.items()}
        spec = loaded.policy.tiers
        hops = {n: spec[n].placement == "deployment" or spec[n].is_remote for n in tiers}
        return cls(per_row, hops, reference=reference, rows_per_request=rows_per_request,
                   overheads=overheads)  # fmt: skip

    def request(self, reach: Mapping[str, float]) -> RequestCost:
        """The cost of one request whose rows reach the tiers in these shares (0..1)."""
        calls: dict[str, float] = {}
        batch: dict[str, float] = {}
        hops = model = 0.0
        for tier, share in reach.items():
            if share <= 0:
                continue
            share = min(share, 1.0)
            called = 1.0 - (1.0 - share) ** self.rows
            rows = self.rows * share / called
            calls[tier], batch[tier] = called, rows
            model += called * rows * per_row_us_at(self.per_row_us[tier], rows)
            hops += called * (self.overheads.hop(rows) if self.hops.get(tier) else 0.0)
        request = self.overheads.request(self.rows)
        return RequestCost(self.rows, request, hops, model, calls, batch)

    def relative(self, reach: Mapping[str, float]) -> tuple[float, float]:
        """``(model time at the batches served, served cost)`` relative to always-large's."""
        mine = self.request(reach)
        large = self.request({self.reference: 1.0})
        return mine.model_us / large.model_us, mine.total_us / large.total_us
