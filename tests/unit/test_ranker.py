"""The ranking cascade at run time and its policy section, with fake scorers. No Ray."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.backends import FakeModel
from cascade.errors import InputError, PolicyError
from cascade.policy import Policy, parse_policy
from cascade.routing._ranker import Ranker
from cascade.serving._ranking import build_rank_response, parse_rank_request

WIDTH = 3


def _policy(stages: list[dict[str, Any]]) -> Policy:
    return Policy.model_validate(
        {
            "name": "rank",
            "tiers": {t: {"model": f"{t}.onnx", "cost": c}
                      for t, c in (("filter", 0.001), ("coarse", 0.01), ("fine", 1.0))},
            "stages": stages,
        }
    )  # fmt: skip


FULL = [
    {"name": "filter", "tier": "filter", "min_score": 0.0},
    {"name": "coarse", "tier": "coarse", "keep": 4, "max_keep": 8},
    {"name": "fine", "tier": "fine", "keep": 2, "max_keep": 4},
]


def _column(j: int, name: str) -> FakeModel:
    """A scorer whose score is feature ``j``: column 0 filters, 1 ranks coarsely, 2 finely."""
    return FakeModel(lambda rows: rows[:, j : j + 1], width=WIDTH, name=name)


def _ranker(stages: list[dict[str, Any]] = FULL) -> tuple[Ranker, dict[str, FakeModel]]:
    models = {"filter": _column(0, "filter"), "coarse": _column(1, "coarse"),
              "fine": _column(2, "fine")}  # fmt: skip
    policy = _policy(stages)
    costs = {name: tier.cost or 1.0 for name, tier in policy.tiers.items()}
    return Ranker(policy, models, costs=costs), models


def test_stages_filter_then_keep_n_then_order_the_best_k() -> None:
    rows = np.array(
        [[1, 5, 0.1], [-1, 9, 9.0], [1, 4, 0.7], [1, 3, 0.9], [1, 1, 5.0], [1, 2, 0.2]],
        np.float32,
    )
    ranker, models = _ranker()
    ranking = asyncio.run(ranker.rank(rows))
    # filter drops row 1; coarse keeps its best 4 of the rest: rows 0, 2, 3, 5 (not 4);
    # fine orders those by column 2: 3 (0.9), 2 (0.7)
    assert ranking.indices.tolist() == [3, 2]
    assert ranking.scores.tolist() == pytest.approx([0.9, 0.7])
    assert [models[t].calls for t in ("filter", "coarse", "fine")] == [[6], [5], [4]]
    trace = [(t.stage, t.candidates_in, t.candidates_out) for t in ranking.stages]
    assert trace == [("filter", 6, 5), ("coarse", 5, 4), ("fine", 4, 2)]
    assert ranking.relative_cost == pytest.approx((6 * 0.001 + 5 * 0.01 + 4 * 1.0) / 6)


def test_the_filter_never_leaves_fewer_than_k() -> None:
    rows = np.array([[-1, 1, 1], [-2, 2, 2], [-3, 3, 3]], np.float32)
    ranking = asyncio.run(_ranker()[0].rank(rows))
    assert ranking.indices.tolist() == [1, 0]  # the filter's best two survive, fine orders


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 30),
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_output_is_a_sorted_subset_of_length_min_k_count(count: int, k: int, seed: int) -> None:
    rows = np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)
    ranking = asyncio.run(_ranker()[0].rank(rows, k=k))
    indices = ranking.indices.tolist()
    assert len(indices) == min(k, count) == len(set(indices))
    assert all(0 <= i < count for i in indices)
    assert ranking.scores.tolist() == sorted(ranking.scores.tolist(), reverse=True)
    assert ranking.scores.tolist() == pytest.approx(rows[indices, 2].tolist())


def test_requests_choose_k_and_n_within_the_policy_limits() -> None:
    ranker, _ = _ranker()
    assert ranker.resolve(None, None) == (2, 4)
    assert ranker.resolve(4, 8) == (4, 8)
    assert ranker.resolve(3, None) == (3, 4)
    with pytest.raises(InputError, match=r"k=5 is outside this policy's limits \[1, 4\]"):
        ranker.resolve(5, None)
    with pytest.raises(InputError, match=r"n=9 is outside"):
        ranker.resolve(None, 9)
    with pytest.raises(InputError, match=r"n=2 must be >= k=3"):
        ranker.resolve(3, 2)


def test_concurrent_queries_share_stage_calls() -> None:
    slow = {name: FakeModel(lambda rows: rows[:, 2:3], width=WIDTH, name=name, latency_s=0.01)
            for name in ("filter", "coarse", "fine")}  # fmt: skip
    policy = _policy(FULL)
    ranker = Ranker(policy, slow, costs={"filter": 0.001, "coarse": 0.01, "fine": 1.0})
    rows = np.random.default_rng(0).standard_normal((10, WIDTH)).astype(np.float32)

    async def many() -> list[Any]:
        return await asyncio.gather(*(ranker.rank(rows) for _ in range(5)))

    rankings = asyncio.run(many())
    assert all(r.indices.tolist() == rankings[0].indices.tolist() for r in rankings)
    # queries reaching a stage together go as one call: 5 x 10 rows, 5 x the filter's
    # survivors, 5 x N
    survivors = max(int((rows[:, 2] >= 0).sum()), 2)
    assert [slow[t].calls for t in ("filter", "coarse", "fine")] == [[50], [5 * survivors], [20]]


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        (
            [FULL[1], FULL[2] | {"keep": 5, "max_keep": 5}],
            r"coarse keep N \(4\) must be >= fine keep k \(5\)",
        ),
        ([FULL[2], FULL[1]], "need fine, optionally after filter and coarse"),
        ([FULL[0], FULL[1]], "need fine"),
        ([{"name": "filter", "tier": "filter", "keep": 3}], "the filter stage needs min_score"),
        ([{"name": "fine", "tier": "fine"}], "the fine stage needs keep"),
        ([{"name": "fine", "tier": "fine", "keep": 4, "max_keep": 2}], r"max_keep \(2\) must be"),
        ([{"name": "fine", "tier": "nope", "keep": 4}], "unknown tier 'nope'"),
    ],
)
def test_invalid_stages_are_refused_with_the_values(stages: list[Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _policy(stages)


def test_a_policy_needs_routing_or_stages_not_both(tmp_path: Any) -> None:
    text = "name: x\ntiers:\n  fine: {model: fine.onnx, cost: 1}\n"
    with pytest.raises(PolicyError, match="give either routing"):
        parse_policy(text, source="x.yaml", base_dir=tmp_path)
    both = text + (
        "routing: {kind: confidence, chain: [{tier: fine}]}\n"
        "stages: [{name: fine, tier: fine, keep: 3}]\n"
    )
    with pytest.raises(PolicyError, match="not both"):
        parse_policy(both, source="x.yaml", base_dir=tmp_path)
    ranking = parse_policy(
        text + "stages: [{name: fine, tier: fine, keep: 3}]\n", source="x.yaml", base_dir=tmp_path
    ).policy
    with pytest.raises(PolicyError, match="ranks candidates"):
        _ = ranking.chain_routing


def _body(rows: np.ndarray, **extra: Any) -> bytes:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.tolist()}  # fmt: skip
    inputs = [tensor, *extra.pop("inputs", [])]
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_rank_requests_parse_ids_and_parameters() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = {"name": "ids", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}
    request = parse_rank_request(
        _body(rows, inputs=[ids], parameters={"k": 1, "n": 2, "trace": False}),
        input_name="input",
        width=3,
    )
    assert request.ids == ["a", "b"] and (request.k, request.n, request.trace) == (1, 2, False)
    body = build_rank_response(
        model_name="rank", model_version="v", request=request, indices=np.array([1]),
        scores=np.array([0.5], np.float32), relative_cost=0.25, stages=[],
    )  # fmt: skip
    assert body["outputs"][2] == {"name": "ids", "shape": [1], "datatype": "BYTES", "data": ["b"]}
    assert body["parameters"] == {"relative_cost": 0.25}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_body(np.zeros((0, 3), np.float32)), "0 rows; send at least one row"),
        (b'{"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", '
         b'"data": [[1, 2, 3], [4, 5]]}]}', "ragged"),
        (b'{"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", '
         b'"data": [1, NaN, 3]}]}', "NaN"),
        (_body(np.zeros((2, 3), np.float32), parameters={"k": 0}), "parameters.k must be"),
        (_body(np.zeros((2, 3), np.float32),
               inputs=[{"name": "ids", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]),
         "one per candidate"),
        (_body(np.zeros((2, 3), np.float32), inputs=[{"name": "extra"}]), "optionally 'ids'"),
    ],
)  # fmt: skip
def test_bad_rank_requests_say_what_is_wrong(body: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_rank_request(body, input_name="input", width=3)


def test_equal_scores_go_to_the_earlier_candidate_like_the_offline_cascade() -> None:
    from cascade.ranking import top_k
    from cascade.routing._ranker import _top

    scores = np.array([1, 2, 2, 2, 0, 2], np.float32)
    for m in range(1, 7):
        assert _top(scores, m).tolist() == top_k(scores, m).tolist()
