"""Zoo benchmark: tiers, compression variants, and ONNX vs scikit-learn speed, in one run.

    python benchmarks/zoo.py [--datasets digits covertype] [--out benchmarks/results]

Per dataset it builds every tier and every compression variant (distilled / hard-label
student, dynamic and static INT8, 80 % pruned), prints the tier table, the compression table
and the cost spread (large vs tiny), then times scikit-learn ``predict_proba`` against the
same model run by onnxruntime (one thread each, single rows and batches of 256). Results go
to ``OUT/zoo.json``; the models to ``OUT/models/DATASET`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from cascade import OnnxModel
from cascade.catalog import format_cards
from cascade.zoo import CompressionOptions, Dataset, build_zoo, read_dataset
from cascade.zoo.export import sklearn_to_onnx
from cascade.zoo.report import format_compression
from cascade.zoo.tiers import recipes_for

COMPRESSION = CompressionOptions(distill=True, quantize=("dynamic", "static"), prune=0.8)


def _median_seconds(call: Callable[[], object], *, min_calls: int, min_seconds: float) -> float:
    call()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_vs_sklearn(dataset: Dataset) -> list[dict[str, Any]]:
    """Fit each tier again (same recipe, same seed) and time sklearn against onnxruntime."""
    rows = []
    one = dataset.test.X[:1]
    batch = np.resize(dataset.test.X, (256, dataset.n_features))
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes_for(dataset.name):
            tier = recipe.tier
            estimator = recipe.make(seed=dataset.seed).fit(dataset.train.X, dataset.train.y)
            path = Path(tmp) / f"{tier}.onnx"
            graph = sklearn_to_onnx(estimator, n_features=dataset.n_features)
            path.write_bytes(graph.SerializeToString())
            model = OnnxModel(path, intra_op_threads=1)
            with threadpool_limits(limits=1):  # same single thread for scikit-learn
                if hasattr(estimator, "n_jobs"):
                    estimator.set_params(n_jobs=1)
                sk1 = _median_seconds(
                    lambda e=estimator: e.predict_proba(one), min_calls=20, min_seconds=0.5
                )
                sk256 = _median_seconds(
                    lambda e=estimator: e.predict_proba(batch), min_calls=5, min_seconds=0.5
                )
            ox1 = _median_seconds(
                lambda m=model: m.predict_sync(one), min_calls=50, min_seconds=0.3
            )
            ox256 = _median_seconds(
                lambda m=model: m.predict_sync(batch), min_calls=5, min_seconds=0.3
            )
            rows.append(
                {
                    "tier": tier,
                    "sklearn_1row_us": sk1 * 1e6,
                    "onnx_1row_us": ox1 * 1e6,
                    "speedup_1row": sk1 / ox1,
                    "sklearn_256_us_per_row": sk256 / 256 * 1e6,
                    "onnx_256_us_per_row": ox256 / 256 * 1e6,
                    "speedup_256": sk256 / ox256,
                }
            )
    return rows


def _speed_table(rows: list[dict[str, Any]]) -> str:
    from cascade._table import table

    return table(
        ["tier", "sklearn 1-row µs", "onnx 1-row µs", "speedup", "sklearn µs/row @256",
         "onnx µs/row @256", "speedup"],
        [
            [
                r["tier"],
                f"{r['sklearn_1row_us']:.1f}",
                f"{r['onnx_1row_us']:.1f}",
                f"{r['speedup_1row']:.1f}×",
                f"{r['sklearn_256_us_per_row']:.2f}",
                f"{r['onnx_256_us_per_row']:.2f}",
                f"{r['speedup_256']:.1f}×",
            ]
            for r in rows
        ],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "covertype"])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "benchmark": "zoo",
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "compression": {
            "distill": COMPRESSION.distill,
            "alpha": COMPRESSION.alpha,
            "temperature": COMPRESSION.temperature,
            "quantize": list(COMPRESSION.quantize),
            "prune": COMPRESSION.prune,
        },
        "datasets": {},
    }
    for name in args.datasets:
        dataset = read_dataset(name)
        began = time.perf_counter()
        cards = build_zoo(dataset, args.out / "models" / name, compression=COMPRESSION)
        build_seconds = time.perf_counter() - began
        by_name = {c.name: c for c in cards}
        spread = {
            str(b): by_name["large"].latency.per_row_us[b] / by_name["tiny"].latency.per_row_us[b]
            for b in by_name["large"].latency.per_row_us
        }
        speed = speed_vs_sklearn(dataset)

        print(f"\n=== {name} (built in {build_seconds:.0f} s) ===")
        print(format_cards(cards))
        print()
        print(format_compression(cards))
        print("\nlarge / tiny per-row cost: " + ", ".join(
            f"batch {b}: {r:.0f}×" for b, r in spread.items()
        ))  # fmt: skip
        print("\nONNX (onnxruntime) vs scikit-learn predict_proba, one thread each")
        print(_speed_table(speed))
        report["datasets"][name] = {
            "build_seconds": build_seconds,
            "cards": [c.model_dump(mode="json") for c in cards],
            "large_over_tiny_cost": spread,
            "onnx_vs_sklearn": speed,
        }
    path = args.out / "zoo.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
