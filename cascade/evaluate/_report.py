"""Tables of evaluation rows."""

from __future__ import annotations

from collections.abc import Sequence

from cascade._table import table
from cascade.evaluate._replay import EvalRow

__all__ = ["format_rows"]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_rows(rows: Sequence[EvalRow], *, title: str = "") -> str:
    """The policy and its baselines side by side.

    Example::

        print(format_rows(Evaluator(loaded).evaluate(X, y), title="digits / test"))
    """
    served = any(row.served_relative_cost is not None for row in rows)
    shares = any(row.oracle_share is not None for row in rows)
    header = ["configuration", "accuracy", "rel acc", "rel cost", "escalated",
              "rows reaching each tier", "p50 ms", "p99 ms"]  # fmt: skip
    if served:
        header[4:4] = ["rel cost @ served batch", "served rel cost"]
    if shares:
        header.insert(4, "oracle share")
    body = []
    for row in rows:
        cells = [
            row.name,
            f"{row.accuracy:.4f}",
            f"{row.relative_accuracy:.4f}",
            f"{row.relative_cost:.3f}",
            f"{row.escalation_rate:.1%}",
            " ".join(f"{tier} {rate:.0%}" for tier, rate in row.tier_rates.items()),
            f"{row.latency_p50_ms:.3f}",
            f"{row.latency_p99_ms:.3f}",
        ]
        if served:
            cells[4:4] = [_ratio(row.served_batch_relative_cost), _ratio(row.served_relative_cost)]
        if shares:
            cells.insert(4, _ratio(row.oracle_share))
        body.append(cells)
    text = table(header, body)
    if shares:
        text += (
            "\noracle share: (1 - rel cost) / (1 - the oracle's rel cost at the same accuracy), "
            "the share of the possible saving captured; the oracle knows the labels and "
            "escalates only rows the reference tier fixes"
        )
    return f"{title}\n{text}" if title else text
