"""The PNG of a load run: latency, accuracy and gear over time, in three stacked panels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade.bench._report import BenchReport

__all__ = ["plot_report"]


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot_report(report: BenchReport, path: Path) -> Path:
    """Save the report's timeline to ``path`` (PNG); see :meth:`BenchReport.plot`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plots need matplotlib: pip install "cascade[plots]"') from exc

    timeline = report.timeline
    x = [second.second + 0.5 for second in timeline]
    figure, (latency, quality, gear) = plt.subplots(
        3, 1, sharex=True, figsize=(8, 7), dpi=110, height_ratios=(3, 2, 1)
    )
    figure.suptitle(f"{report.target} — {report.schedule}", fontsize=10)

    latency.plot(x, [_nan(s.p50_ms) for s in timeline], label="p50", color="tab:blue")
    latency.plot(x, [_nan(s.p95_ms) for s in timeline], label="p95", color="tab:orange")
    if report.deadline_ms is not None:
        latency.axhline(report.deadline_ms, color="tab:red", ls="--", lw=1,
                        label=f"deadline {report.deadline_ms:g} ms")  # fmt: skip
    latency.set_ylabel("latency of answers (ms)")
    latency.set_ylim(bottom=0)
    latency.legend(loc="upper left", fontsize=8)

    quality.plot(x, [_nan(s.accuracy) for s in timeline], label="accuracy", color="tab:green")
    quality.plot(x, [_nan(s.degraded_fraction) for s in timeline], label="degraded",
                 color="tab:purple")  # fmt: skip
    shed = [s.shed / s.offered if s.offered else float("nan") for s in timeline]
    quality.plot(x, shed, label="shed (503)", color="tab:gray", ls=":")
    quality.set_ylabel("fraction")
    quality.set_ylim(-0.02, 1.02)
    quality.legend(loc="lower left", fontsize=8)

    names = list(dict.fromkeys(s.gear for s in timeline if s.gear is not None))
    if names:
        levels = [float(names.index(s.gear)) if s.gear is not None else float("nan")
                  for s in timeline]  # fmt: skip
        gear.step(x, levels, where="mid", color="tab:brown")
        gear.set_yticks(range(len(names)), names)
        gear.set_ylim(-0.5, len(names) - 0.5)
    else:
        gear.set_yticks([])
        gear.text(0.5, 0.5, "gear: n/a", ha="center", va="center", transform=gear.transAxes)
    gear.set_ylabel("gear")
    gear.set_xlabel("seconds since start (by scheduled send time)")
    gear.set_xlim(0, max(len(timeline), 1))

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
