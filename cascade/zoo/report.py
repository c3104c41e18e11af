"""The compression table: each student variant beside the model it was made from."""

from __future__ import annotations

from collections.abc import Sequence

from cascade._table import table
from cascade.catalog import ModelCard

__all__ = ["format_compression"]


def format_compression(cards: Sequence[ModelCard]) -> str:
    """Compare every compressed variant with its baseline; ``""`` when there are none.

    Example::

        print(format_compression(read_cards("models/covertype")))
    """
    by_name = {c.name: c for c in cards}
    rows = []
    for card in cards:
        if card.tier != "student" or card.compression is None:
            continue
        baseline = by_name.get(str(card.compression.get("baseline")))
        method = str(card.compression.get("method", "-"))
        if card.compression.get("method") == "distillation":
            method += f" (alpha {card.compression['alpha']}, T {card.compression['temperature']})"
        if "sparsity" in card.compression:
            method += f" ({card.compression['sparsity']:.1%} zeros)"
        acc = card.accuracy["test"]
        rows.append(
            [
                card.name,
                method,
                f"{card.size_bytes / 1000:.1f} kB",
                f"{card.latency.p50_us:.1f}",
                f"{card.latency.per_row_us[256]:.2f}",
                f"{acc:.4f}",
                baseline.name if baseline else "-",
                f"{(acc - baseline.accuracy['test']) * 100:+.2f}" if baseline else "-",
                f"{card.size_bytes / baseline.size_bytes:.2f}" if baseline else "-",
            ]
        )
    if not rows:
        return ""
    header = [
        "variant",
        "method",
        "size",
        "p50 µs",
        "µs/row @256",
        "test acc",
        "vs",
        "Δacc (pts)",
        "size ratio",
    ]
    return "compression\n" + table(header, rows)
