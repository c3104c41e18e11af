"""Measuring what the workshop builds: latency, relative costs, and progress while it builds.

Every tier is timed the same way (onnxruntime, one intra-op thread, after warm-up), so the
costs in the cards compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from cascade.catalog import BATCH_SIZES, COST_BATCH, Latency, ModelCard
from cascade.errors import BuildError

__all__ = ["measure_latency", "progress_steps", "with_relative_costs"]


def measure_latency(
    model: Any,
    rows: np.ndarray | Sequence[str],
    *,
    threads: int = 1,
    single_row_runs: int = 300,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    min_seconds: float = 0.2,
) -> Latency:
    """Time ``model.predict_sync`` on ``rows`` (an ``OnnxModel`` built with ``threads``).

    ``rows`` is a float matrix, or a sequence of texts for a text tier (its featurization or
    tokenization is timed too). Single rows cycle through ``rows``; each batch size runs for
    at least ``min_seconds`` and at least 5 calls, and reports the median call time divided
    by the batch size.
    """
    items: np.ndarray | list[str] = (
        np.ascontiguousarray(rows, dtype=np.float32) if isinstance(rows, np.ndarray) else list(rows)
    )
    if len(items) == 0:
        raise BuildError("need at least one row to measure latency")

    def take(start: int, size: int) -> Any:
        picked = [(start + j) % len(items) for j in range(size)]
        return items[picked] if isinstance(items, np.ndarray) else [items[k] for k in picked]

    for i in range(20):  # warm-up: allocator, caches, branch predictors
        model.predict_sync(take(i, 1))
    singles = []
    for i in range(single_row_runs):
        row = take(i, 1)
        start = time.perf_counter()
        model.predict_sync(row)
        singles.append(time.perf_counter() - start)
    per_row: dict[int, float] = {}
    for size in batch_sizes:
        batch = take(0, size)
        model.predict_sync(batch)
        calls: list[float] = []
        began = time.perf_counter()
        while len(calls) < 5 or time.perf_counter() - began < min_seconds:
            start = time.perf_counter()
            model.predict_sync(batch)
            calls.append(time.perf_counter() - start)
        per_row[size] = statistics.median(calls) / size * 1e6
    micro = np.asarray(singles) * 1e6
    return Latency(
        threads=threads,
        p50_us=float(np.percentile(micro, 50)),
        p99_us=float(np.percentile(micro, 99)),
        per_row_us=per_row,
    )


def with_relative_costs(cards: Sequence[ModelCard]) -> list[ModelCard]:
    """The cards with ``relative_cost`` (per-row cost over the large tier's, at batch
    :data:`~cascade.catalog.COST_BATCH`) and the same ratio at every measured batch size."""
    large = next((c for c in cards if c.tier == "large" and c.variant is None), None)
    if large is None:
        return list(cards)
    out = []
    for card in cards:
        by_batch = {
            b: card.latency.per_row_us[b] / large.latency.per_row_us[b] for b in BATCH_SIZES
        }
        out.append(
            card.model_copy(
                update={"relative_cost": by_batch[COST_BATCH], "relative_cost_by_batch": by_batch}
            )
        )
    return out


@contextmanager
def progress_steps(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar of ``total`` steps; the ``step(label)`` it yields starts the next one."""
    from tqdm import tqdm

    with tqdm(total=total, disable=not enabled, unit="step", leave=False) as bar:
        first = True

        def step(label: str) -> None:
            nonlocal first
            if not first:
                bar.update(1)
            first = False
            bar.set_description(label)

        yield step
        bar.update(1)
