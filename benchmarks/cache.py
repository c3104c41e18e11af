"""Answer caches on a Zipf replay of CLINC150: hit rate, speed-up and false hits.

    python benchmarks/cache.py [--requests 20000] [--zipf 1.1] [--miss-cost-ms MS]

The replay draws ``--requests`` queries from CLINC150's test split (5,500 queries, 150
intents plus out-of-scope, counted as one more intent): an intent by a Zipf law over a
random ranking of the intents, then one of its queries by a Zipf law over a random ranking
of them, so popular intents recur and so do their different phrasings (the paraphrases).

"The answer" to a query comes from a stand-in classifier trained here (TF-IDF over
character 2-4-grams + logistic regression on the train split), so the benchmark does not
depend on the tier models; its measured single-query latency is the cost of a miss
(``--miss-cost-ms`` replaces it by, say, a measured cascade latency). Each request is served
one at a time: look up, and on a miss pay the miss cost and store the answer. A request's
latency is the measured time of its cache calls plus the miss cost on a miss.

Configurations: no cache, the exact cache, the similarity cache (hashed character n-grams,
``--dim`` buckets) at each threshold, and exact in front of similarity at each threshold.
A similarity hit is false when the cached label differs from the stand-in's own answer for
the query (every hit is audited: ``audit_rate=1``; auditing is not timed). Alone, the
similarity cache's hits are mostly exact repeats (cosine 1, never false), which dilutes its
false-hit rate; behind the exact cache it only sees paraphrases. The default threshold is
the lowest one whose false-hit rate is <= 1 % in both set-ups. Also times a lookup against 1k
and 10k entries. BLAS runs on one thread throughout. Writes ``benchmarks/results/cache.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from threadpoolctl import threadpool_limits

from cascade._table import table
from cascade.cache import CachedAnswer, ExactCache, SimilarityCache, hashed_char_embedding
from cascade.zoo import Dataset, read_dataset

ROOT = Path(__file__).resolve().parents[1]
# 0.70 and 0.75 below the asked-for sweep show where the false hits pass 1 %
THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
MAX_FALSE_HIT_RATE = 0.01
VERSION = "v1"
STAND_IN = (
    "stand-in classifier: TfidfVectorizer(char_wb, 2-4, sublinear_tf, min_df=2) + "
    "LogisticRegression(C=20) on the CLINC150 train split (not the zoo's tiers)"
)


def zipf_replay(dataset: Dataset, *, requests: int, s: float, seed: int) -> np.ndarray:
    """Indices into the test split: a Zipf intent, then a Zipf query within it."""
    rng = np.random.default_rng(seed)
    y = dataset.test.y
    intents = rng.permutation(np.unique(y))
    members = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in intents}

    def zipf(n: int) -> np.ndarray:
        weights = np.arange(1, n + 1, dtype=np.float64) ** -s
        probabilities: np.ndarray = weights / weights.sum()
        return probabilities

    intent_draws = rng.choice(len(intents), size=requests, p=zipf(len(intents)))
    out = np.empty(requests, dtype=np.int64)
    for position, rank in enumerate(intent_draws):
        queries = members[int(intents[rank])]
        out[position] = queries[rng.choice(len(queries), p=zipf(len(queries)))]
    return out


def train_stand_in(dataset: Dataset) -> Pipeline:
    model = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        LogisticRegression(C=20.0, max_iter=300),
    )
    model.fit(list(dataset.train.X), dataset.train.y)
    return model


def per_query_ms(model: Pipeline, texts: list[str]) -> float:
    model.predict_proba(texts[:1])
    times = []
    for text in texts:
        start = time.perf_counter()
        model.predict_proba([text])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def replay(
    replay_idx: np.ndarray,
    texts: list[str],
    answers: list[CachedAnswer],
    truth: np.ndarray,
    miss_cost_ms: float,
    *,
    exact: ExactCache | None,
    similar: SimilarityCache | None,
) -> dict[str, Any]:
    """Serve the replay one request at a time; count hits, false hits, latency, accuracy."""
    cache_s = 0.0
    exact_hits = similar_hits = paraphrase_hits = false_hits = paraphrase_false = 0
    correct = 0
    clock = time.perf_counter
    for index in replay_idx.tolist():
        text = [texts[index]]
        own = answers[index]
        start = clock()
        answer: CachedAnswer | None = None
        if exact is not None:
            answer = exact.get_many(VERSION, text).values[0]
            exact_hits += answer is not None
        lookup = None
        if answer is None and similar is not None:
            lookup = similar.get_many(VERSION, text)
            answer = lookup.values[0]
        if answer is None:
            # the miss: the cascade would run here (its cost is added below, not slept)
            if exact is not None:
                exact.put_many(VERSION, text, [own])
            if similar is not None and lookup is not None:
                similar.put_many(VERSION, text, [own], embeddings=lookup.embeddings)
        cache_s += clock() - start
        if lookup is not None and lookup.hits[0]:
            similar_hits += 1
            agreed = answer is not None and answer.label == own.label
            audit_id = lookup.audit_ids[0]
            if similar is not None and audit_id is not None:
                similar.report(audit_id, agreed)
            false_hits += not agreed
            if answer is not None and answer.meta["query"] != index:
                paraphrase_hits += 1
                paraphrase_false += not agreed
        given = answer if answer is not None else own
        correct += given.label == truth[index]
    n = len(replay_idx)
    hits = exact_hits + similar_hits
    misses = n - hits
    if similar is not None:
        audited = similar.stats()
        assert audited["false_hits"] == false_hits and audited["audited"] == similar_hits
    return {
        "hit_rate": hits / n,
        "exact_hits": exact_hits,
        "similar_hits": similar_hits,
        "paraphrase_hits": paraphrase_hits,
        "false_hits": false_hits,
        "false_hit_rate": false_hits / similar_hits if similar_hits else None,
        "paraphrase_false_hit_rate": paraphrase_false / paraphrase_hits
        if paraphrase_hits
        else None,
        "cache_ms_per_request": cache_s / n * 1e3,
        "mean_latency_ms": (cache_s * 1e3 + misses * miss_cost_ms) / n,
        "accuracy": correct / n,
    }


def lookup_cost(texts: list[str], queries: list[str], *, dim: int) -> list[dict[str, Any]]:
    """Time one-row lookups (and a batch of 32) against caches holding 1k and 10k entries."""
    return [_lookup_cost(texts[:size], queries, dim=dim) for size in (1_000, 10_000)]


def _lookup_cost(stored: list[str], queries: list[str], *, dim: int) -> dict[str, Any]:
    answer = CachedAnswer(np.full(151, 1 / 151, dtype=np.float32), "stand-in")
    embed = _embedder(dim)
    size = len(stored)
    exact = ExactCache(size, 1 << 40, math.inf)
    exact.put_many(VERSION, stored, [answer] * size)
    similar = SimilarityCache(embed, 0.9, size, math.inf)
    similar.put_many(VERSION, stored, [answer] * size)
    embedded = embed(queries)
    every = list(range(len(queries)))
    return {
        "entries": size,
        "exact_get_us": _time_each(lambda i: exact.get_many(VERSION, queries[i : i + 1]), every),
        "similar_get_us": _time_each(
            lambda i: similar.get_many(VERSION, queries[i : i + 1]), every
        ),
        "similar_get_no_embed_us": _time_each(
            lambda i: similar.get_many(VERSION, None, embeddings=embedded[i : i + 1]), every
        ),
        "similar_batch32_per_row_us": _time_each(
            lambda i: similar.get_many(VERSION, queries[i : i + 32]), every[:-31:32]
        )
        / 32,
        "embed_us": _time_each(lambda i: embed(queries[i : i + 1]), every),
    }


def _time_each(call: Callable[[Any], object], items: list[Any]) -> float:
    call(items[0])
    times = []
    for item in items:
        start = time.perf_counter()
        call(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _embedder(dim: int) -> Callable[[Any], np.ndarray]:
    def embed(texts: Any) -> np.ndarray:
        return hashed_char_embedding(texts, dim=dim)

    return embed


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=1024, help="hashed embedding buckets")
    parser.add_argument("--max-entries", type=int, default=10_000)
    parser.add_argument(
        "--miss-cost-ms", type=float, default=None, help="cost of a miss (default: measured)"
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    began = time.perf_counter()

    with threadpool_limits(1):
        dataset = read_dataset("clinc150")
        texts = [str(text) for text in dataset.test.X]
        model = train_stand_in(dataset)
        probabilities = model.predict_proba(texts).astype(np.float32)
        answers = [
            CachedAnswer(row, "stand-in", meta={"query": i}) for i, row in enumerate(probabilities)
        ]
        measured_ms = per_query_ms(model, texts[:500])
        miss_cost_ms = measured_ms if args.miss_cost_ms is None else args.miss_cost_ms
        replay_idx = zipf_replay(dataset, requests=args.requests, s=args.zipf, seed=args.seed)
        truth = dataset.test.y
        print(f"{STAND_IN}: test accuracy {(probabilities.argmax(1) == truth).mean():.3f}")
        print(
            f"miss cost {miss_cost_ms:.3f} ms/query "
            f"({'measured stand-in' if args.miss_cost_ms is None else '--miss-cost-ms'}); "
            f"replay: {args.requests} requests, Zipf s={args.zipf}, "
            f"{len(np.unique(replay_idx))} distinct queries of {len(texts)}"
        )

        def exact_cache() -> ExactCache:
            return ExactCache(args.max_entries, 256 << 20, math.inf)

        def similar_cache(threshold: float) -> SimilarityCache:
            return SimilarityCache(
                _embedder(args.dim), threshold, args.max_entries, math.inf, audit_rate=1.0
            )

        configs: list[tuple[str, float | None]] = [("none", None), ("exact", None)]
        configs += [("similar", t) for t in args.thresholds]
        configs += [("exact+similar", t) for t in args.thresholds]
        results = []
        for name, threshold in configs:
            exact = exact_cache() if "exact" in name else None
            similar = similar_cache(threshold) if threshold is not None else None
            row = replay(
                replay_idx, texts, answers, truth, miss_cost_ms, exact=exact, similar=similar
            )
            results.append({"cache": name, "threshold": threshold, **row})
        base = results[0]["mean_latency_ms"]
        for row in results:
            row["speed_up"] = base / row["mean_latency_ms"]
        costs = lookup_cost(
            [str(t) for t in dict.fromkeys(dataset.train.X.tolist())], texts[:512], dim=args.dim
        )

    print()
    print(
        table(
            [
                "cache",
                "threshold",
                "hit rate",
                "exact/sim hits",
                "paraphrase hits",
                "cache ms",
                "mean ms",
                "speed-up",
                "false hits",
                "paraphrase false",
                "accuracy",
            ],
            [
                [
                    row["cache"],
                    _fmt(row["threshold"], ".2f"),
                    f"{row['hit_rate']:.3f}",
                    f"{row['exact_hits']}/{row['similar_hits']}",
                    str(row["paraphrase_hits"]),
                    f"{row['cache_ms_per_request']:.3f}",
                    f"{row['mean_latency_ms']:.3f}",
                    f"{row['speed_up']:.2f}x",
                    _fmt(row["false_hit_rate"], ".2%"),
                    _fmt(row["paraphrase_false_hit_rate"], ".2%"),
                    f"{row['accuracy']:.3f}",
                ]
                for row in results
            ],
        )
    )

    def lowest_ok(name: str) -> float | None:
        ok = [
            row["threshold"]
            for row in results
            if row["cache"] == name
            and row["false_hit_rate"] is not None
            and row["false_hit_rate"] <= MAX_FALSE_HIT_RATE
        ]
        return min(ok) if ok else None

    alone = lowest_ok("similar")
    behind_exact = lowest_ok("exact+similar")
    default = None if alone is None or behind_exact is None else max(alone, behind_exact)
    print(
        f"\ndefault threshold: {default} = the lowest with false-hit rate <= "
        f"{MAX_FALSE_HIT_RATE:.0%} both alone ({alone}) and behind the exact cache, where "
        f"only paraphrases reach it ({behind_exact})"
    )
    print()
    print(
        table(
            ["entries", "exact get µs", "similar get µs", "  w/o embed", "  batch 32, /row"],
            [
                [
                    str(c["entries"]),
                    f"{c['exact_get_us']:.1f}",
                    f"{c['similar_get_us']:.1f}",
                    f"{c['similar_get_no_embed_us']:.1f}",
                    f"{c['similar_batch32_per_row_us']:.1f}",
                ]
                for c in costs
            ],
        )
    )
    elapsed = time.perf_counter() - began
    print(f"\n{elapsed:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "cache.json"
    out.write_text(
        json.dumps(
            {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpu": platform.processor()},
                "answers": STAND_IN,
                "stand_in_test_accuracy": float((probabilities.argmax(1) == truth).mean()),
                "miss_cost_ms": miss_cost_ms,
                "miss_cost_source": "measured stand-in median single-query predict_proba"
                if args.miss_cost_ms is None
                else "--miss-cost-ms",
                "replay": {
                    "requests": args.requests,
                    "zipf_s": args.zipf,
                    "seed": args.seed,
                    "distinct_queries": len(np.unique(replay_idx)),
                },
                "embedding": f"hashed_char_embedding(dim={args.dim}, ngram=(2, 4))",
                "max_entries": args.max_entries,
                "max_false_hit_rate": MAX_FALSE_HIT_RATE,
                "default_threshold": default,
                "lowest_ok_threshold_alone": alone,
                "lowest_ok_threshold_behind_exact": behind_exact,
                "results": results,
                "lookup_cost_us": costs,
                "seconds": round(elapsed, 1),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
