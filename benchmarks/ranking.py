"""Ranking cascade on MovieLens: NDCG@10 and cost against fine-ranking every candidate.

    python benchmarks/ranking.py [--data ../shared/data/movielens_small] [--timed-users 100]

Per user, the last 20 % of ratings are held out (relevant: rated >= 4) and every movie the
user has not rated in training is a candidate (~9,000). Rows: coarse-only, fine-only, the
shipped policy (policies/movielens.yaml: filter cut and N from `cascade calibrate` on the
validation split), and the frontier over N (same filter cut). "rel cost" counts model
compute from the scorers' measured per-row costs; the second table times the served
`Ranker` in this process (onnxruntime, 1 thread) on a sample of users, policy vs fine-only,
so the cost ratio is also seen on the clock. Writes ``benchmarks/results/ranking.json`` and
``benchmarks/results/ranking_frontier.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cascade._table import table
from cascade.backends import OnnxModel
from cascade.catalog import resolve_tiers
from cascade.evaluate import ensure_models
from cascade.evaluate._ranking import evaluate_ranking, ranking_queries
from cascade.policy import read_policy
from cascade.ranking import format_results, ndcg_of_ranking
from cascade.routing import Ranker

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "movielens.yaml"
FRONTIER = (20, 50, 100, 200, 300, 400, 600, 800, 1200, 1600)


def _timed(loaded, queries, *, fine_only: bool) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Milliseconds per query of the in-process Ranker, and its NDCG@10 per query."""
    policy = loaded.policy
    if fine_only:  # one stage: fine over every candidate
        fine = policy.stage("fine")
        policy = policy.model_copy(update={"stages": [fine]})
    tiers = resolve_tiers(loaded)
    models = {s.tier: OnnxModel(tiers[s.tier].path) for s in policy.stages}
    ranker = Ranker(policy, models, costs={n: t.cost for n, t in tiers.items()})
    times, ndcgs = [], []

    async def run() -> None:
        for query in queries:
            began = time.perf_counter()
            ranking = await ranker.rank(query.features, k=10)
            times.append((time.perf_counter() - began) * 1000)
            ndcgs.append(ndcg_of_ranking(ranking.indices, query.relevance, k=10))

    asyncio.run(run())
    return times, ndcgs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="MovieLens small directory")
    parser.add_argument("--timed-users", type=int, default=100, help="users timed in process")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    loaded = read_policy(POLICY)
    ensure_models(loaded, progress=True)
    began = time.perf_counter()
    queries, label = ranking_queries(loaded, split="test", data=args.data)
    print(f"{len(queries)} test queries ({label}) in {time.perf_counter() - began:.0f} s",
          file=sys.stderr)  # fmt: skip
    results = evaluate_ranking(loaded, queries, n_values=FRONTIER)
    candidates = statistics.median(len(q.features) for q in queries)
    print(f"MovieLens test split: {results[0].n_queries} users with a relevant held-out movie, "
          f"{candidates:.0f} candidates each (median)")  # fmt: skip
    print(format_results(results))

    sample = queries[: args.timed_users]
    timing = {}
    for name, fine_only in (("fine-only", True), ("policy", False)):
        _timed(loaded, sample[:5], fine_only=fine_only)  # warm-up
        times, ndcgs = _timed(loaded, sample, fine_only=fine_only)
        timing[name] = {"p50_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
                        "ndcg_at_10": float(np.nanmean(ndcgs))}  # fmt: skip
    ratio = timing["policy"]["mean_ms"] / timing["fine-only"]["mean_ms"]
    print()
    print(table(
        ["in-process Ranker", "ms/query p50", "ms/query mean", "NDCG@10"],
        [[n, f"{t['p50_ms']:.2f}", f"{t['mean_ms']:.2f}", f"{t['ndcg_at_10']:.4f}"]
         for n, t in timing.items()],
    ))  # fmt: skip
    policy_row = results[2]
    print()
    print(f"policy: relative NDCG@10 {policy_row.relative_ndcg:.4f} (target >= 0.99) at relative "
          f"cost {policy_row.relative_cost:.4f} (target <= 0.20); "
          f"time per query {ratio:.3f} of fine-only on {len(sample)} users")  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in results]
    out = args.out / "ranking.json"
    out.write_text(json.dumps({"queries": len(queries), "rows": rows, "timing": timing,
                               "time_ratio": ratio, "policy": str(POLICY.relative_to(ROOT))},
                              indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    frontier = [r for r in results if r.name.startswith("cascade")]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r.relative_cost for r in frontier], [r.relative_ndcg for r in frontier], "o-",
            label="cascade over N")  # fmt: skip
    for r in frontier:
        ax.annotate(f"N={r.n}", (r.relative_cost, r.relative_ndcg), fontsize=7)
    ax.plot([policy_row.relative_cost], [policy_row.relative_ndcg], "r*", ms=12, label="policy")
    ax.plot([results[0].relative_cost], [results[0].relative_ndcg], "s", label="coarse-only")
    ax.axhline(0.99, ls="--", c="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("cost relative to fine-ranking every candidate")
    ax.set_ylabel("NDCG@10 relative to fine-only")
    ax.set_title("MovieLens ranking cascade (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "ranking_frontier.png", dpi=120)


if __name__ == "__main__":
    main()
