"""MovieLens (small) as a ranking task: per-user time split, candidates, training examples.

Protocol
--------
- **Outer split.** Each user's ratings are ordered by time (ties by movie id); the last 20%
  (at least one, never all) are held out as that user's test ratings, the rest is training.
- **Relevance.** A held-out movie is relevant when rated >= 4 stars (binary relevance, so
  NDCG's gain is 1 for relevant and 0 otherwise). Users whose held-out ratings contain no
  relevant movie have nothing to find and are skipped in evaluation.
- **Candidates.** Every catalogue movie (all 9,066 in the file) that the user has not rated
  in training, so about 9,000 per user; held-out movies are among them.
- **Features** (:mod:`cascade.ranking.features`) come from the training ratings only.
- **Training examples for the models** come from an *inner* split of the training ratings:
  each user's last 20% of training ratings become pseudo-targets and features are computed
  from the remaining 80%, so models learn "which unrated movie will this user rate >= 4
  next" exactly as they are evaluated, and no held-out rating is ever seen during fitting.
  Features at evaluation time come from all training ratings: same definitions, about 25%
  more history. For each user, all relevant pseudo-targets are positives and
  ``negatives_per_user`` movies are drawn uniformly from the remaining candidates as
  negatives. Uniform sampling keeps the ranking of the learned scores unbiased (it only
  shifts the base rate) and training small (about 343k rows, 2.3% positives). Harder
  negatives (e.g. the coarse scorer's top candidates) without importance weights taught the
  fine scorer to demote popular movies and wrecked its full-catalogue ranking.
- **Caveat.** The split is per user, not global in time: other users' training ratings may
  postdate a user's held-out ones (the usual MovieLens protocol). ``recent_popularity``
  looks only backwards from the user's own last training rating.

The data set's licence forbids bundling it: it is read from a path, by default
``../shared/data/movielens_small`` (relative to the working directory).

Example::

    queries = movielens_queries("../shared/data/movielens_small", max_users=200)
    X, relevance, movie_ids = queries[0]
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cascade.errors import DatasetError
from cascade.ranking.export import (
    LinearScorer,
    RankingBuild,
    export_scorer,
    linear_onnx,
    tree_onnx,
    write_cascade_files,
)
from cascade.ranking.features import (
    FEATURE_NAMES,
    Catalogue,
    FeatureTables,
    Ratings,
    fit_features,
)
from cascade.ranking.metrics import K, Query, top_k
from cascade.zoo.measure import progress_steps

__all__ = [
    "COARSE_FEATURES",
    "DEFAULT_MOVIELENS_PATH",
    "FILTER_FEATURE",
    "RATINGS_FILE",
    "RELEVANT_RATING",
    "TEST_FRACTION",
    "MovieLens",
    "TrainingExamples",
    "build_movielens",
    "evaluation_users",
    "movielens_queries",
    "read_movielens",
    "split_by_time",
    "training_examples",
]

DEFAULT_MOVIELENS_PATH = Path("../shared/data/movielens_small")
RATINGS_FILE = "ratings.csv.gz"
TEST_FRACTION = 0.2
RELEVANT_RATING = 4.0
NEGATIVES_PER_USER = 500
COARSE_FEATURES = ("svd_implicit_score", "recent_popularity", "log_popularity", "movie_mean_rating")
"""The coarse scorer's columns: an MF score and movie statistics, all cheap to serve."""
FILTER_FEATURE = "log_popularity"
FILTER_TOP_LOSS = 0.005
FILTER_USERS = 100
# Strong regularisation matters: the fine scorer must rank ~9,000 candidates, and its top 10
# lies in the sparse tail of the sampled training rows, where loose trees overfit.
FINE_PARAMS: dict[str, Any] = {
    "max_iter": 300,
    "learning_rate": 0.05,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 500,
    "l2_regularization": 1.0,
    "early_stopping": False,
}
IntArray = npt.NDArray[np.int64]
_COLUMNS = ("movieId", "title", "year", "genres", "userId", "rating", "timestamp")
_NO_GENRE = "(no genres listed)"
_WHERE_TO_GET = (
    "MovieLens may not be bundled (GroupLens terms: research use, no redistribution); "
    "get ml-latest-small (2016 edition, 100,004 ratings) from "
    "https://grouplens.org/datasets/movielens/ or the `movielens` data set of the R package "
    "dslabs, as one CSV with columns " + ",".join(_COLUMNS)
)


@dataclass(frozen=True, eq=False)
class MovieLens:
    """All ratings of the file, with users and movies mapped to row indices.

    ``user_ids[i]`` is the ``userId`` of user index ``i``; ``catalogue.movie_ids[j]`` the
    ``movieId`` of movie index ``j``.
    """

    ratings: Ratings
    catalogue: Catalogue
    user_ids: npt.NDArray[np.int64]
    source: str

    @property
    def n_users(self) -> int:
        """Number of distinct users."""
        return len(self.user_ids)


@dataclass(frozen=True, eq=False)
class TrainingExamples:
    """Labelled (user, movie) rows for fitting scorers: features, 0/1 labels, user index."""

    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]


def _ratings_path(data: str | os.PathLike[str]) -> Path:
    path = Path(data)
    return path / RATINGS_FILE if path.is_dir() or not path.suffix else path


def read_movielens(data: str | os.PathLike[str] = DEFAULT_MOVIELENS_PATH) -> MovieLens:
    """Read MovieLens from ``data``: a directory holding ``ratings.csv.gz``, or the CSV itself.

    Raises ``DatasetError`` naming the path (and where to get the data) when it is absent,
    or naming the missing columns when the file has another layout.

    Example::

        ml = read_movielens("../shared/data/movielens_small")
        len(ml.ratings), ml.n_users, len(ml.catalogue)    # (100004, 671, 9066)
    """
    import pandas as pd

    path = _ratings_path(data)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file. {_WHERE_TO_GET}")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # pandas raises many unrelated types for unreadable files
        raise DatasetError(f"{path}: cannot read as CSV: {exc}") from exc
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing columns {missing}; expected {list(_COLUMNS)}. {_WHERE_TO_GET}"
        )

    movies = frame.drop_duplicates("movieId").sort_values("movieId")
    movie_ids = movies["movieId"].to_numpy(np.int64)
    years = movies["year"].to_numpy(np.float64)
    known = np.isfinite(years)
    years = np.where(known, years, np.median(years[known]) if known.any() else 2000.0)
    genre_lists = [str(g).split("|") for g in movies["genres"].fillna(_NO_GENRE)]
    genre_names = tuple(sorted({g for gs in genre_lists for g in gs} - {_NO_GENRE}))
    column = {name: i for i, name in enumerate(genre_names)}
    genres = np.zeros((len(movies), len(genre_names)), dtype=bool)
    for row, names in enumerate(genre_lists):
        genres[row, [column[g] for g in names if g in column]] = True
    catalogue = Catalogue(
        movie_ids=movie_ids,
        titles=tuple(movies["title"].fillna("").astype(str)),
        years=years.astype(np.float32),
        genres=genres,
        genre_names=genre_names,
    )

    user_ids, user_index = np.unique(frame["userId"].to_numpy(np.int64), return_inverse=True)
    ratings = Ratings(
        user=user_index.astype(np.int64),
        movie=np.searchsorted(movie_ids, frame["movieId"].to_numpy(np.int64)).astype(np.int64),
        rating=frame["rating"].to_numpy(np.float32),
        timestamp=frame["timestamp"].to_numpy(np.int64),
    )
    return MovieLens(ratings=ratings, catalogue=catalogue, user_ids=user_ids, source=str(path))


def split_by_time(ratings: Ratings, *, fraction: float = TEST_FRACTION) -> tuple[Ratings, Ratings]:
    """Split each user's ratings in time: the last ``fraction`` (at least 1) are held out.

    A user with a single rating keeps it in training. Ties in time are broken by movie.

    Example::

        train, test = split_by_time(ml.ratings)
    """
    order = np.lexsort((ratings.movie, ratings.timestamp, ratings.user))
    users = ratings.user[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(users)) - starts[users]
    held_out = np.minimum(np.maximum(np.floor(fraction * counts), 1), counts - 1)
    is_test = np.zeros(len(ratings), dtype=bool)
    is_test[order] = position >= (counts - held_out)[users]
    return ratings.take(~is_test), ratings.take(is_test)


def _targets_by_user(test: Ratings, n_users: int) -> list[npt.NDArray[np.int64]]:
    """Per user, the movie indices held out with a relevant rating."""
    relevant = test.take(test.rating >= RELEVANT_RATING)
    order = np.argsort(relevant.user, kind="stable")
    bounds = np.searchsorted(relevant.user[order], np.arange(n_users + 1))
    movies = relevant.movie[order]
    return [movies[bounds[u] : bounds[u + 1]] for u in range(n_users)]


def evaluation_users(n_users: int, *, max_users: int | None, seed: int) -> npt.NDArray[np.int64]:
    """User indices to evaluate: all, or a seeded sample of ``max_users`` in index order."""
    if max_users is None or max_users >= n_users:
        return np.arange(n_users, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n_users, size=max_users, replace=False)
    return np.sort(chosen).astype(np.int64)


def movielens_queries(
    data: str | os.PathLike[str] | MovieLens = DEFAULT_MOVIELENS_PATH,
    *,
    split: Literal["test", "validation"] = "test",
    max_users: int | None = None,
    seed: int = 0,
) -> list[Query]:
    """Queries, one per evaluated user: all candidates, binary relevance, movie ids.

    ``split="test"``: the last 20 % of each user's ratings are the targets, features come
    from the rest. ``split="validation"``: the inner split the fine scorer learnt from (the
    last 20 % of the training ratings are the targets): for choosing N without the test set.

    Users are all users (or a seeded sample of ``max_users``), minus those whose held-out
    ratings hold no relevant movie. Features use the outer training ratings only.

    Example::

        for X, relevance, movie_ids in movielens_queries(max_users=100):
            ...
    """
    ml = data if isinstance(data, MovieLens) else read_movielens(data)
    if split == "validation":
        tables, targets = _inner_split(ml, seed=seed)
    else:
        train, test = split_by_time(ml.ratings)
        tables = fit_features(train, ml.catalogue, n_users=ml.n_users, seed=seed)
        targets = _targets_by_user(test, ml.n_users)
    queries = []
    for user in evaluation_users(ml.n_users, max_users=max_users, seed=seed):
        if len(targets[user]) == 0:
            continue
        candidates = tables.candidates(int(user))
        relevance = np.isin(candidates, targets[user]).astype(np.float32)
        queries.append(
            Query(
                features=tables.rows(int(user), candidates),
                relevance=relevance,
                ids=ml.catalogue.movie_ids[candidates],
            )
        )
    return queries


def _inner_split(ml: MovieLens, *, seed: int) -> tuple[FeatureTables, list[IntArray]]:
    """Features of the inner split's training part, and each user's relevant pseudo-targets."""
    outer_train, _ = split_by_time(ml.ratings)
    inner_train, inner_target = split_by_time(outer_train)
    tables = fit_features(inner_train, ml.catalogue, n_users=ml.n_users, seed=seed)
    return tables, _targets_by_user(inner_target, ml.n_users)


def _examples(
    tables: FeatureTables, targets: list[IntArray], *, negatives_per_user: int, seed: int
) -> TrainingExamples:
    rng = np.random.default_rng(seed)
    blocks, labels, users = [], [], []
    for user in range(tables.n_users):
        positives = targets[user]
        pool = np.setdiff1d(tables.candidates(user), positives, assume_unique=True)
        negatives = rng.choice(pool, size=min(negatives_per_user, len(pool)), replace=False)
        movies = np.concatenate([positives, np.sort(negatives)])
        blocks.append(tables.rows(user, movies))
        labels.append(np.r_[np.ones(len(positives)), np.zeros(len(negatives))].astype(np.int64))
        users.append(np.full(len(movies), user, dtype=np.int64))
    return TrainingExamples(
        X=np.concatenate(blocks), y=np.concatenate(labels), user=np.concatenate(users)
    )


def training_examples(
    ml: MovieLens, *, negatives_per_user: int = NEGATIVES_PER_USER, seed: int = 0
) -> TrainingExamples:
    """Labelled rows from the inner split of the outer training ratings (see module notes).

    Example::

        examples = training_examples(read_movielens(), seed=0)
        examples.X.shape        # (343477, 14), 7,977 positives
    """
    tables, targets = _inner_split(ml, seed=seed)
    return _examples(tables, targets, negatives_per_user=negatives_per_user, seed=seed)


def _filter_cut(fine: Any, tables: FeatureTables, *, seed: int) -> int:
    """Largest rating count ``c`` such that a "popularity >= c" filter drops at most
    ``FILTER_TOP_LOSS`` of the fine scorer's top-10 items, on inner-split candidates of
    ``FILTER_USERS`` users (never on test data)."""
    column = FEATURE_NAMES.index(FILTER_FEATURE)
    users = evaluation_users(tables.n_users, max_users=FILTER_USERS, seed=seed)
    blocks = [tables.rows(int(user), tables.candidates(int(user))) for user in users]
    scores = fine.predict_proba(np.concatenate(blocks))[:, 1]  # one call: far faster per row
    bounds = np.cumsum([0, *(len(block) for block in blocks)])
    counts = [
        np.rint(np.expm1(block[top_k(scores[bounds[i] : bounds[i + 1]], K), column]))
        for i, block in enumerate(blocks)
    ]
    top_counts = np.concatenate(counts)
    cut = 0
    for candidate in range(1, 101):
        if np.mean(top_counts < candidate) > FILTER_TOP_LOSS:
            break
        cut = candidate
    return cut


def build_movielens(
    data: str | os.PathLike[str] | MovieLens,
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    seed: int = 0,
) -> RankingBuild:
    """Train and export the MovieLens cascade: ``filter.onnx``, ``coarse.onnx``, ``fine.onnx``.

    - filter: ``log_popularity`` itself; keep a candidate when it scores ``>= threshold``,
      the largest popularity cut that keeps 99.5% of the fine scorer's top 10 on the inner
      split (recorded in ``filter.scorer.json`` and ``features.json``);
    - coarse: logistic regression on :data:`COARSE_FEATURES` (raw score = logit);
    - fine: ``HistGradientBoostingClassifier`` on all features (score = P(relevant)).

    All three take the full ``float32 [None, 14]`` feature rows as ``input`` and return
    ``score`` ``float32 [None, 1]``. Training uses the inner split only (module notes).

    Example::

        build = build_movielens("../shared/data/movielens_small", "models/movielens")
        build.cards["fine"].cost_us
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with progress_steps(6, progress) as step:
        step("load MovieLens")
        ml = data if isinstance(data, MovieLens) else read_movielens(data)
        step("features of the inner split")
        tables, targets = _inner_split(ml, seed=seed)
        examples = _examples(tables, targets, negatives_per_user=NEGATIVES_PER_USER, seed=seed)
        X, y = examples.X, examples.y

        step("fit fine (gradient boosting)")
        began = time.perf_counter()
        fine = HistGradientBoostingClassifier(**FINE_PARAMS, random_state=seed).fit(X, y)
        fine_seconds = time.perf_counter() - began

        step("fit coarse (logistic regression) and filter cut")
        columns = [FEATURE_NAMES.index(name) for name in COARSE_FEATURES]
        began = time.perf_counter()
        coarse = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        coarse.fit(X[:, columns], y)
        coarse_seconds = time.perf_counter() - began
        cut = _filter_cut(fine, tables, seed=seed)
        threshold = float(np.log1p(cut - 0.5)) if cut > 0 else float("-inf")
        del tables

        step("export and check ONNX")
        check = X[np.random.default_rng(seed).choice(len(X), size=min(4000, len(X)), replace=False)]
        common: dict[str, Any] = {
            "out_dir": out,
            "check_rows": check,
            "feature_names": FEATURE_NAMES,
            "dataset": "movielens_small",
            "dataset_source": ml.source,
            "seed": seed,
        }
        training = {
            "rows": len(X),
            "positives": int(y.sum()),
            "negatives_per_user": NEGATIVES_PER_USER,
            "protocol": "inner time split of the outer training ratings (module notes)",
        }
        filter_column = FEATURE_NAMES.index(FILTER_FEATURE)
        cards = [
            export_scorer(
                linear_onnx(
                    LinearScorer((filter_column,), np.ones(1), 0.0), n_features=len(FEATURE_NAMES)
                ),
                stage="filter",
                reference=check[:, filter_column],
                used_features=[FILTER_FEATURE],
                family="rule",
                reference_name=f"the {FILTER_FEATURE} column",
                threshold=threshold if np.isfinite(threshold) else None,
                build={
                    "rule": f"keep when {FILTER_FEATURE} >= log1p({cut} - 0.5)",
                    "min_ratings": cut,
                },
                **common,
            ),
            export_scorer(
                linear_onnx(
                    LinearScorer.from_pipeline(coarse, columns), n_features=len(FEATURE_NAMES)
                ),
                stage="coarse",
                reference=coarse.decision_function(check[:, columns]),
                used_features=list(COARSE_FEATURES),
                family="LogisticRegression",
                build={"training": training, "fit_seconds": coarse_seconds},
                **common,
            ),
            export_scorer(
                tree_onnx(fine, n_features=len(FEATURE_NAMES)),
                stage="fine",
                reference=fine.predict_proba(check)[:, 1],
                used_features=list(FEATURE_NAMES),
                family="HistGradientBoostingClassifier",
                build={"params": FINE_PARAMS, "training": training, "fit_seconds": fine_seconds},
                **common,
            ),
        ]
        step("write cards")
        written = write_cascade_files(out, cards, dataset="movielens_small")
    return RankingBuild(
        out_dir=out,
        feature_names=FEATURE_NAMES,
        cards=written,
        filter_threshold=threshold if np.isfinite(threshold) else None,
        estimators={"coarse": coarse, "fine": fine},
    )
