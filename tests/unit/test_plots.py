"""The library's PNGs leave the caller's matplotlib alone (a notebook's backend included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.bench import BenchReport, RequestRecord
from cascade.evaluate import Point, plot_frontier

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def svg_backend() -> Iterator[str]:
    """A backend the library would never pick itself; restored after the test."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield matplotlib.get_backend()
    matplotlib.use(before)


def test_plots_write_pngs_without_switching_the_backend(svg_backend: str, tmp_path: Path) -> None:
    points = [Point(0.1, 0.95, label="a"), Point(0.4, 0.99, label="b"), Point(1.0, 1.0)]
    frontier = plot_frontier(
        tmp_path / "frontier.png", points=points, front=points, chosen=points[1], title="t"
    )
    records = [
        RequestRecord(
            offset_s=i / 10,
            sent_s=i / 10,
            latency_ms=5.0,
            status=200,
            rows=1,
            correct=1,
            answered_by=("tiny",),
            gear="normal",
        )
        for i in range(20)
    ]
    timeline = BenchReport.from_records(records, duration_s=2.0, deadline_ms=50).plot(
        tmp_path / "bench.png"
    )
    for png in (frontier, timeline):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == svg_backend
