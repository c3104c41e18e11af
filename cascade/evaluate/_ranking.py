"""Evaluation and calibration of ranking policies (stages filter -> coarse -> fine).

``evaluate_ranking`` replays a dataset's queries through the policy's stage models and
reports NDCG@10, recall@10 against the fine ranker's own top 10 and cost relative to
fine-ranking every candidate, beside coarse-only and fine-only. ``calibrate_ranking``
picks the cheapest N (and filter cut) whose NDCG@10 reaches a target share of fine-only's,
on queries other than the test split, and writes them into the policy.

Datasets: ``ltr`` (bundled; calibrates on its train split, which the scorers learnt from:
optimistic, and said so) and ``movielens`` (by path; calibrates on the inner validation
split the fine scorer's targets came from).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.errors import PolicyError
from cascade.policy import PolicyFile
from cascade.ranking.metrics import CascadeModels, CascadeResult, Query, Stage, evaluate_cascade

__all__ = [
    "RANKING_DATASETS",
    "RankingCalibration",
    "calibrate_ranking",
    "evaluate_ranking",
    "ranking_models",
    "ranking_queries",
]

RANKING_DATASETS = ("ltr", "movielens")
N_GRID = (10, 20, 50, 100, 200, 300, 400, 600, 800, 1200, 1600)
FILTER_DROP = (0.0, 0.5, 0.75, 0.9)  # filter cuts tried: share of candidates dropped
BOOTSTRAP = 2000


def _dataset(loaded: PolicyFile) -> str:
    dataset = loaded.policy.dataset
    if dataset not in RANKING_DATASETS:
        raise PolicyError(
            f"{loaded.path or loaded.policy.name}: a ranking policy is evaluated on a ranking "
            f"dataset ({', '.join(RANKING_DATASETS)}); dataset is {dataset!r}"
        )
    return dataset


def ranking_queries(
    loaded: PolicyFile,
    *,
    split: str = "test",
    data: Path | None = None,
    max_users: int | None = None,
) -> tuple[list[Query], str]:
    """The queries of the policy's dataset and a label saying which."""
    dataset = _dataset(loaded)
    if dataset == "ltr":
        from cascade.ranking.ltr import ltr_queries

        ltr_split: Literal["train", "test"] = "test" if split == "test" else "train"
        return ltr_queries(ltr_split), f"ltr {ltr_split} split"
    from cascade.ranking.movielens import DEFAULT_MOVIELENS_PATH, movielens_queries

    path = data or Path(DEFAULT_MOVIELENS_PATH)
    ml_split: Literal["test", "validation"] = "test" if split == "test" else "validation"
    queries = movielens_queries(path, split=ml_split, max_users=max_users)
    return queries, f"movielens {ml_split} split ({path})"


def ranking_models(loaded: PolicyFile, *, min_score: float | None = None) -> CascadeModels:
    """The policy's stage models as scorers, with per-row costs relative to fine's."""
    from cascade.backends import OnnxModel
    from cascade.catalog import resolve_tiers

    policy = loaded.policy
    tiers = resolve_tiers(loaded)

    def stage(name: str) -> Stage | None:
        spec = policy.stage(name)
        if spec is None:
            return None
        model = OnnxModel(tiers[spec.tier].path)
        return Stage(score=lambda rows: model.predict_sync(rows)[:, 0],
                     cost_us=tiers[spec.tier].cost)  # fmt: skip

    fine = stage("fine")
    assert fine is not None
    coarse = stage("coarse") or fine  # no coarse stage: fine over every candidate
    filter_spec = policy.stage("filter")
    threshold = min_score if min_score is not None else (
        filter_spec.min_score if filter_spec is not None and filter_spec.min_score is not None
        else float("-inf")
    )  # fmt: skip
    return CascadeModels(
        coarse=coarse, fine=fine, filter=stage("filter"), filter_threshold=threshold
    )


def _policy_n(loaded: PolicyFile) -> int:
    coarse = loaded.policy.stage("coarse")
    fine = loaded.policy.stage("fine")
    assert fine is not None and fine.keep is not None
    return coarse.keep if coarse is not None and coarse.keep is not None else fine.keep


def evaluate_ranking(
    loaded: PolicyFile, queries: list[Query], *, n_values: tuple[int, ...] = ()
) -> list[CascadeResult]:
    """Rows: coarse-only, fine-only, the policy (``policy N=…``), then ``cascade N=…``."""
    n = _policy_n(loaded)
    results = evaluate_cascade(queries, ranking_models(loaded), [n, *n_values])
    named = [*results[:2], replace(results[2], name=f"policy N={n}"), *results[3:]]
    return named


@dataclass(frozen=True)
class RankingCalibration:
    """What ``calibrate_ranking`` tried and chose."""

    target: float
    confidence: float
    rows: list[tuple[float | None, CascadeResult]]  # (filter min_score, result) per point
    lower_bounds: list[float]  # per row: bootstrap lower bound of relative NDCG@10
    chosen: tuple[float | None, CascadeResult] | None
    label: str


def calibrate_ranking(
    loaded: PolicyFile,
    queries: list[Query],
    *,
    target_relative_ndcg: float,
    label: str,
    confidence: float = 0.95,
    write: bool = True,
) -> RankingCalibration:
    """The cheapest (filter cut, N) whose NDCG@10 is >= ``target`` x fine-only's, with margin.

    The margin: a point qualifies when the ``confidence`` lower bound of its relative
    NDCG@10, bootstrapped over the calibration queries (paired with fine-only), clears the
    target; a point that merely reaches the target on average tends to miss it on new
    queries. Filter cuts tried drop 0 / 50 / 75 / 90 % of the calibration candidates (when
    the policy has a filter stage); N runs over a grid up to the largest candidate list.
    """
    policy = loaded.policy
    has_filter = policy.stage("filter") is not None
    largest = max(len(q.features) for q in queries)
    grid = (*tuple(n for n in N_GRID if n < largest), largest)
    fine = policy.stage("fine")
    assert fine is not None and fine.keep is not None
    grid = tuple(n for n in grid if n >= fine.keep) or (max(fine.keep, largest),)
    cuts: list[float | None] = [None]
    if has_filter:
        filter_models = ranking_models(loaded)
        assert filter_models.filter is not None
        scores = np.concatenate([filter_models.filter.score(q.features) for q in queries])
        cuts = [float(np.quantile(scores, drop)) if drop > 0 else float(scores.min())
                for drop in FILTER_DROP]  # fmt: skip
    rows: list[tuple[float | None, CascadeResult]] = []
    for cut in cuts:
        models = ranking_models(loaded, min_score=cut)
        for result in evaluate_cascade(queries, models, list(grid))[2:]:
            rows.append((cut, result))
    rng = np.random.default_rng(0)
    n_queries = rows[0][1].n_queries
    resamples = rng.integers(0, n_queries, size=(BOOTSTRAP, n_queries))
    bounds = [_lower_bound(r, resamples, confidence) for _, r in rows]
    meeting = [
        (row, bound)
        for row, bound in zip(rows, bounds, strict=True)
        if bound >= target_relative_ndcg
    ]
    best = min(meeting, key=lambda m: (m[0][1].relative_cost, m[0][1].n or 0), default=None)
    chosen = best[0] if best is not None else None
    if best is not None and write:
        _write(loaded, best[0], best[1], target_relative_ndcg, confidence, label)
    return RankingCalibration(target_relative_ndcg, confidence, rows, bounds, chosen, label)


def _lower_bound(result: CascadeResult, resamples: np.ndarray, confidence: float) -> float:
    """Bootstrap lower bound (over queries, paired) of NDCG@10 relative to fine-only's."""
    assert result.ndcg_per_query is not None and result.reference_ndcg is not None
    ours = result.ndcg_per_query[resamples].mean(axis=1)
    reference = result.reference_ndcg[resamples].mean(axis=1)
    ratios = ours / np.where(reference > 0, reference, np.nan)
    return float(np.nanquantile(ratios, 1 - confidence))


def _write(
    loaded: PolicyFile,
    chosen: tuple[float | None, CascadeResult],
    bound: float,
    target: float,
    confidence: float,
    label: str,
) -> None:
    from cascade.evaluate._policy_edit import edit_policy_file

    assert loaded.path is not None
    cut, result = chosen
    policy = loaded.policy

    def edit(document: Any) -> None:
        for stage in document["stages"]:
            if stage["name"] == "coarse" and result.n is not None:
                stage["keep"] = int(result.n)
                if stage.get("max_keep") is not None and stage["max_keep"] < result.n:
                    stage["max_keep"] = int(result.n)
            if stage["name"] == "filter" and cut is not None:
                stage["min_score"] = round(float(cut), 6)
        document["provenance"] = {
            "dataset": str(policy.dataset),
            "split": label,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "target": {"relative_ndcg_at_10": target},
            "achieved": {
                "relative_ndcg_at_10": round(result.relative_ndcg, 5),
                "relative_cost": round(result.relative_cost, 5),
                "recall_at_10": round(result.recall_at_10, 5),
                "relative_ndcg_lower_bound": round(bound, 5),
            },
            "confidence": confidence,
        }

    if policy.stage("coarse") is None:
        raise PolicyError(f"{loaded.path}: no coarse stage, so there is no N to choose")

    def validate(text: str) -> object:
        from cascade.policy import parse_policy

        return parse_policy(text, source=str(loaded.path), base_dir=loaded.base_dir)

    edit_policy_file(loaded.path, edit, validate=validate)
