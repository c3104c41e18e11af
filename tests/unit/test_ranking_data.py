"""Ranking data: the MovieLens loader and split (real file when present), the bundled LTR
sample, and ONNX scorers that match scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from cascade.catalog import read_scorer_cards
from cascade.errors import DatasetError
from cascade.ranking import (
    MOVIELENS_FEATURES,
    LinearScorer,
    MovieLens,
    build_ltr,
    evaluate_cascade,
    ltr_queries,
    movielens_queries,
    onnx_scores,
    open_cascade,
    read_ltr,
    read_movielens,
    split_by_time,
)
from cascade.ranking.export import linear_onnx, tree_onnx
from cascade.ranking.features import Ratings
from cascade.ranking.movielens import evaluation_users

MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens_small"


@pytest.fixture(scope="module")
def movielens() -> MovieLens:
    if not (MOVIELENS / "ratings.csv.gz").is_file():
        pytest.skip(f"MovieLens is not bundled (licence); not found at {MOVIELENS.resolve()}")
    return read_movielens(MOVIELENS)


def test_missing_movielens_names_the_path_and_where_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"nowhere/ratings\.csv\.gz: no such file") as info:
        read_movielens(missing)
    assert "grouplens.org" in str(info.value)
    assert "movieId,title,year,genres,userId,rating,timestamp" in str(info.value)


def test_movielens_with_other_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"  # GroupLens' own layout: movies are in another file
    path.write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n")
    with pytest.raises(DatasetError, match=r"missing columns \['title', 'year', 'genres'\]"):
        read_movielens(path)


def test_time_split_holds_out_each_users_last_fifth() -> None:
    # user 0: 10 ratings (2 held out); user 1: 3 ratings (1); user 2: 1 rating (kept).
    users = np.array([0] * 10 + [1] * 3 + [2])
    times = np.array([*range(10, 0, -1), 5, 7, 6, 1])  # user 0 in reverse time order
    ratings = Ratings(users, np.arange(14), np.full(14, 4.0, np.float32), times)
    train, test = split_by_time(ratings)
    assert sorted(zip(test.user.tolist(), test.timestamp.tolist(), strict=True)) == [
        (0, 9),
        (0, 10),
        (1, 7),
    ]
    assert len(train) == 11 and 2 in train.user


def test_real_movielens_split_and_candidates(movielens: MovieLens) -> None:
    ml = movielens
    assert (len(ml.ratings), ml.n_users, len(ml.catalogue)) == (100_004, 671, 9_066)
    train, test = split_by_time(ml.ratings)
    for user in range(ml.n_users):
        mine_train = train.user == user
        mine_test = test.user == user
        n = int(mine_train.sum() + mine_test.sum())
        assert mine_test.sum() == max(1, int(0.2 * n))
        assert not set(train.movie[mine_train]) & set(test.movie[mine_test])
        assert train.timestamp[mine_train].max() <= test.timestamp[mine_test].min()

    queries = movielens_queries(ml, max_users=12, seed=3)
    liked = test.take(test.rating >= 4.0)
    users = [u for u in evaluation_users(ml.n_users, max_users=12, seed=3) if u in liked.user]
    assert len(queries) == len(users) > 0  # users without a relevant held-out movie are skipped
    catalogue = set(ml.catalogue.movie_ids.tolist())
    for user, (X, relevance, ids) in zip(users, queries, strict=True):
        assert X.dtype == np.float32 and X.shape == (len(ids), len(MOVIELENS_FEATURES))
        assert np.isfinite(X).all()
        seen = set(ml.catalogue.movie_ids[train.movie[train.user == user]].tolist())
        assert set(ids.tolist()) == catalogue - seen  # every movie not rated in training
        wanted = set(ml.catalogue.movie_ids[liked.movie[liked.user == user]].tolist())
        assert set(ids[relevance > 0].tolist()) == wanted
        assert set(np.unique(relevance).tolist()) <= {0.0, 1.0}


def test_ltr_sample_loads_dense_with_its_queries() -> None:
    train, test = read_ltr("train"), read_ltr("test")
    assert train.X.shape == (3005, 300) and test.X.shape == (768, 300)
    assert train.X.dtype == np.float32
    assert (len(train.group_sizes), len(test.group_sizes)) == (201, 50)
    assert set(np.unique(test.y)) == {0, 1, 2, 3, 4}
    queries = ltr_queries("test")
    assert [len(q.ids) for q in queries] == test.group_sizes.tolist()
    with pytest.raises(DatasetError, match="must be 'train' or 'test'"):
        read_ltr("valid")  # type: ignore[arg-type]


def _io(path: Path) -> tuple[list[tuple[str, list[object]]], list[tuple[str, list[object]]]]:
    graph = onnx.load(path).graph

    def shape(value: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_value or d.dim_param or None for d in value.type.tensor_type.shape.dim]

    return [(v.name, shape(v)) for v in graph.input], [(v.name, shape(v)) for v in graph.output]


def test_ltr_build_exports_onnx_scorers_that_match_sklearn(tmp_path: Path) -> None:
    build = build_ltr(tmp_path, progress=False, seed=0)
    test = read_ltr("test")
    cards = read_scorer_cards(tmp_path)
    assert set(cards) == {"coarse", "fine"} and (tmp_path / "features.json").is_file()

    for stage in ("coarse", "fine"):
        inputs, outputs = _io(tmp_path / f"{stage}.onnx")
        assert [name for name, _ in inputs] == ["input"] and inputs[0][1][1] == 300
        assert [name for name, _ in outputs] == ["score"] and outputs[0][1][1] == 1
        assert cards[stage].cost_us > 0
    columns = [build.feature_names.index(f) for f in cards["coarse"].used_features]
    assert len(columns) == 5
    coarse = build.estimators["coarse"].predict(test.X[:, columns])
    fine = build.estimators["fine"].predict(test.X)
    np.testing.assert_allclose(onnx_scores(tmp_path / "coarse.onnx", test.X), coarse, atol=1e-4)
    np.testing.assert_allclose(onnx_scores(tmp_path / "fine.onnx", test.X), fine, atol=1e-4)
    assert cards["coarse"].cost_us < cards["fine"].cost_us

    results = evaluate_cascade(ltr_queries("test"), open_cascade(tmp_path), [30])
    by_name = {r.name: r for r in results}
    assert by_name["cascade N=30"].ndcg_at_10 == by_name["fine-only"].ndcg_at_10  # N >= 24


def test_linear_and_classifier_graphs_score_the_full_row() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    linear = LinearScorer((4, 1), np.array([2.0, -0.5]), 0.25)
    np.testing.assert_allclose(
        onnx_scores(linear_onnx(linear, n_features=6), X),
        2.0 * X[:, 4] - 0.5 * X[:, 1] + 0.25,
        atol=1e-5,
    )
    y = (X[:, 0] + X[:, 2] > 0).astype(int)
    classifier = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    graph = tree_onnx(classifier, n_features=6)
    assert [o.name for o in graph.graph.output] == ["score"]
    np.testing.assert_allclose(onnx_scores(graph, X), classifier.predict_proba(X)[:, 1], atol=1e-5)
