"""Pareto frontier of accuracy against cost, as a table and as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade._table import table

__all__ = ["Point", "format_frontier", "pareto_front", "plot_frontier"]


@dataclass(frozen=True)
class Point:
    """One candidate setting of a policy, scored on a split."""

    relative_cost: float
    relative_accuracy: float
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    label: str = field(default="", compare=False)


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost.

    Example::

        >>> points = [Point(1, 1), Point(0.5, 0.99), Point(0.6, 0.98)]
        >>> [p.relative_cost for p in pareto_front(points)]
        [0.5, 1]
    """
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.relative_cost, -p.relative_accuracy)):
        if not front or point.relative_accuracy > front[-1].relative_accuracy:
            front.append(point)
    return front


def format_frontier(front: Sequence[Point], *, chosen: Point | None = None, rows: int = 12) -> str:
    """A table of (a thinned-out) frontier; the chosen point is marked with ``*``."""
    if not front:
        return "(empty frontier)"
    step = max(1, len(front) // rows)
    shown = list(front[::step])
    if front[-1] not in shown:
        shown.append(front[-1])
    if chosen is not None and chosen not in shown:
        shown = sorted([*shown, chosen], key=lambda p: p.relative_cost)
    body = [
        [
            "*" if chosen is not None and p == chosen else "",
            f"{p.relative_cost:.3f}",
            f"{p.relative_accuracy:.4f}",
            " ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in p.params.items()
            ),
        ]
        for p in shown
    ]
    return table(["", "rel cost", "rel accuracy", "setting"], body)


def plot_frontier(
    path: str | Path,
    *,
    points: Sequence[Point],
    front: Sequence[Point],
    chosen: Point | None,
    baselines: Sequence[Point] = (),
    title: str,
    target: float | None = None,
    oracle: Sequence[tuple[float, float]] = (),
) -> Path:
    """Save accuracy against relative cost: all candidates, the frontier, the chosen point;
    ``oracle``: the label-aware oracle's (cost, accuracy) line, the floor under any router."""
    try:
        import matplotlib  # noqa: F401  (absent: the hint below, not an error half-way)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError('plots need matplotlib: pip install "cascade[plots]"') from exc

    # a Figure of its own, not pyplot: the caller's backend (a notebook's) stays as it is
    figure = Figure(figsize=(7, 4.5), dpi=110)
    axes = figure.subplots()
    axes.scatter(
        [p.relative_cost for p in points],
        [p.relative_accuracy for p in points],
        s=6, alpha=0.25, color="tab:gray", label="candidates (calibration split)",
    )  # fmt: skip
    axes.plot(
        [p.relative_cost for p in front],
        [p.relative_accuracy for p in front],
        color="tab:blue", lw=1.5, label="Pareto frontier",
    )  # fmt: skip
    if oracle:
        axes.plot([c for c, _ in oracle], [a for _, a in oracle], color="tab:green", ls="--",
                  lw=1.2, label="oracle (labels known)")  # fmt: skip
    for base in baselines:
        axes.scatter([base.relative_cost], [base.relative_accuracy], marker="s", color="black")
        axes.annotate(base.label, (base.relative_cost, base.relative_accuracy),
                      textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    if target is not None:
        axes.axhline(target, color="tab:red", ls=":", lw=1, label=f"target {target:g}")
    if chosen is not None:
        axes.scatter([chosen.relative_cost], [chosen.relative_accuracy], marker="*", s=180,
                     color="tab:red", zorder=5, label=chosen.label or "chosen")  # fmt: skip
    axes.set_xlabel("cost relative to always-large")
    axes.set_ylabel("accuracy relative to always-large")
    axes.set_title(title)
    low = min([p.relative_accuracy for p in front] + [b.relative_accuracy for b in baselines])
    axes.set_ylim(max(low - 0.01, 0.0), 1.01 + max(0.0, max((p.relative_accuracy for p in front),
                                                               default=1.0) - 1.0))  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out
