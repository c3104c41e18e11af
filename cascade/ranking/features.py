"""Features of (user, candidate movie) pairs, computed from one set of training ratings.

:func:`fit_features` turns ratings into per-movie, per-user and per-(user, movie) tables;
:meth:`FeatureTables.rows` then gathers the feature matrix of one user's candidates. Every
number comes from the ratings passed in (the training part of a split), plus the catalogue's
metadata (year, genres), which is known before any rating. The columns, in order, are
:data:`FEATURE_NAMES`:

========================  ==================================================================
``log_popularity``        log(1 + number of training ratings of the movie)
``recent_popularity``     log(1 + its ratings in the year before the user's last training
                          rating): what was being watched when the user was last active
``movie_mean_rating``     the movie's mean rating, shrunk towards the global mean
``movie_year``            release year (the median year where unknown)
``movie_age``             years between release and the user's last training rating
``movie_n_genres``        number of genres listed
``user_activity``         log(1 + number of the user's training ratings)
``user_mean_rating``      the user's mean rating
``user_year_gap``         release year minus the mean release year of the user's movies
``genre_share``           share of the user's ratings in the movie's genres (mean over genres)
``genre_rating``          the user's shrunk mean rating in those genres minus the user's mean
``svd_score``             PureSVD score: the user's rating row projected on the top singular
                          item vectors of the rating matrix (scikit-learn ``TruncatedSVD``)
``svd_implicit_score``    the same on the watched / not-watched matrix
``item_knn_score``        mean cosine similarity (co-watching) of the movie to the user's
                          movies (item-based nearest neighbours over all neighbours)
========================  ==================================================================

Example::

    tables = fit_features(train, catalogue, seed=0)
    X = tables.rows(user=3, movies=np.array([0, 17, 42]))   # float32 [3, 14]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse

__all__ = ["FEATURE_NAMES", "Catalogue", "FeatureTables", "Ratings", "fit_features"]

FEATURE_NAMES: tuple[str, ...] = (
    "log_popularity",
    "recent_popularity",
    "movie_mean_rating",
    "movie_year",
    "movie_age",
    "movie_n_genres",
    "user_activity",
    "user_mean_rating",
    "user_year_gap",
    "genre_share",
    "genre_rating",
    "svd_score",
    "svd_implicit_score",
    "item_knn_score",
)

_SECONDS_PER_YEAR = 365.25 * 86_400
_RECENT_WINDOW_S = int(_SECONDS_PER_YEAR)
# Shrinkage (pseudo-counts) towards the global / the user's mean: a movie rated once at 5
# stars should not outrank one rated 4.3 by a hundred users.
_MOVIE_PRIOR = 5.0
_GENRE_PRIOR = 3.0
_SVD_RANK = 48

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Every movie that can be recommended: ids, release years and genres.

    ``years`` has the median year in place of unknown ones; ``genres`` is a boolean
    ``[n_movies, n_genres]`` matrix whose columns follow ``genre_names``.
    """

    movie_ids: IntArray
    titles: tuple[str, ...]
    years: FloatArray
    genres: npt.NDArray[np.bool_]
    genre_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.movie_ids)


@dataclass(frozen=True, eq=False)
class Ratings:
    """Ratings as parallel arrays; ``user`` and ``movie`` are row indices (not ids)."""

    user: IntArray
    movie: IntArray
    rating: FloatArray
    timestamp: IntArray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: npt.NDArray[np.bool_]) -> Ratings:
        """The ratings where ``mask`` is true."""
        return Ratings(self.user[mask], self.movie[mask], self.rating[mask], self.timestamp[mask])


@dataclass(frozen=True, eq=False)
class FeatureTables:
    """Everything needed to build feature rows, fitted on one set of training ratings."""

    n_users: int
    n_movies: int
    rated: sparse.csr_matrix  # [users, movies] bool: rated in these training ratings
    movie: FloatArray  # [movies, 4]: log popularity, shrunk mean rating, year, n_genres
    user: FloatArray  # [users, 4]: activity, mean rating, cutoff year, mean movie year
    pair: FloatArray  # [6, users, movies]: recent, genre share/rating, svd, svd implicit, knn

    def rated_movies(self, user: int) -> IntArray:
        """Indices of the movies ``user`` rated in the training ratings."""
        start, stop = self.rated.indptr[user], self.rated.indptr[user + 1]
        return np.asarray(self.rated.indices[start:stop], dtype=np.int64)

    def candidates(self, user: int) -> IntArray:
        """Every movie ``user`` has not rated in the training ratings, in index order."""
        unrated = np.ones(self.n_movies, dtype=bool)
        unrated[self.rated_movies(user)] = False
        return np.flatnonzero(unrated).astype(np.int64)

    def rows(self, user: int, movies: IntArray) -> FloatArray:
        """Feature matrix ``float32 [len(movies), len(FEATURE_NAMES)]`` of ``user`` × ``movies``."""
        movies = np.asarray(movies, dtype=np.int64)
        popularity, mean, year, n_genres = (self.movie[movies, i] for i in range(4))
        activity, user_mean, cutoff_year, user_year = self.user[user]
        recent, share, genre_rating, svd, svd_implicit, knn = (
            self.pair[i, user, movies] for i in range(6)
        )
        n = len(movies)
        columns = [
            popularity,
            recent,
            mean,
            year,
            cutoff_year - year,
            n_genres,
            np.full(n, activity),
            np.full(n, user_mean),
            year - user_year,
            share,
            genre_rating,
            svd,
            svd_implicit,
            knn,
        ]
        return np.ascontiguousarray(np.stack(columns, axis=1), dtype=np.float32)


def fit_features(
    train: Ratings, catalogue: Catalogue, *, n_users: int, seed: int = 0
) -> FeatureTables:
    """Compute the feature tables of ``train`` (ratings only from the training side of a split).

    Example::

        tables = fit_features(train, catalogue, n_users=671, seed=0)
    """
    n_movies = len(catalogue)
    shape = (n_users, n_movies)
    ratings = sparse.csr_matrix(
        (train.rating.astype(np.float64), (train.user, train.movie)), shape=shape
    )
    watched = sparse.csr_matrix(
        (np.ones(len(train)), (train.user, train.movie)), shape=shape, dtype=np.float64
    )

    movie_count = np.bincount(train.movie, minlength=n_movies).astype(np.float64)
    movie_sum = np.bincount(train.movie, weights=train.rating, minlength=n_movies)
    global_mean = float(train.rating.mean()) if len(train) else 3.5
    movie_mean = (movie_sum + _MOVIE_PRIOR * global_mean) / (movie_count + _MOVIE_PRIOR)
    n_genres = catalogue.genres.sum(axis=1).astype(np.float64)
    movie = np.stack(
        [np.log1p(movie_count), movie_mean, catalogue.years.astype(np.float64), n_genres], axis=1
    )

    user_count = np.bincount(train.user, minlength=n_users).astype(np.float64)
    safe_count = np.maximum(user_count, 1.0)
    user_mean = np.bincount(train.user, weights=train.rating, minlength=n_users) / safe_count
    user_mean[user_count == 0] = global_mean
    cutoff = np.full(n_users, train.timestamp.min() if len(train) else 0, dtype=np.int64)
    np.maximum.at(cutoff, train.user, train.timestamp)
    cutoff_year = 1970.0 + cutoff / _SECONDS_PER_YEAR
    user_year = (
        np.bincount(train.user, weights=catalogue.years[train.movie], minlength=n_users)
        / safe_count
    )
    user_year[user_count == 0] = float(np.median(catalogue.years))
    user = np.stack([np.log1p(user_count), user_mean, cutoff_year, user_year], axis=1)

    # Genres: the user's share of ratings and shrunk mean rating per genre, averaged over the
    # candidate's genres (a movie listing no genre gets 0 for both).
    genres = sparse.csr_matrix(catalogue.genres.astype(np.float64))
    genre_count = np.asarray((watched @ genres).todense())
    genre_sum = np.asarray((ratings @ genres).todense())
    genre_mean = (genre_sum + _GENRE_PRIOR * user_mean[:, None]) / (genre_count + _GENRE_PRIOR)
    per_genre = genres.multiply(1.0 / np.maximum(n_genres, 1.0)[:, None]).tocsr()
    share = (per_genre @ (genre_count / safe_count[:, None]).T).T
    genre_rating = (per_genre @ (genre_mean - user_mean[:, None]).T).T

    recent = _recent_counts(train, cutoff, n_movies)
    svd = _pure_svd(ratings, seed=seed)
    svd_implicit = _pure_svd(watched, seed=seed)
    knn = _item_knn(watched, movie_count) / safe_count[:, None]

    pair = np.stack([np.log1p(recent), share, genre_rating, svd, svd_implicit, knn], axis=0).astype(
        np.float32
    )
    return FeatureTables(
        n_users=n_users,
        n_movies=n_movies,
        rated=watched.astype(bool).tocsr(),
        movie=movie.astype(np.float32),
        user=user.astype(np.float32),
        pair=pair,
    )


def _recent_counts(train: Ratings, cutoff: IntArray, n_movies: int) -> npt.NDArray[np.float64]:
    """``[users, movies]``: ratings of each movie in the year up to each user's cutoff."""
    # One sorted key per rating, movie-major, so a (movie, time window) is one slice.
    key = train.movie.astype(np.int64) << 32 | train.timestamp.astype(np.int64)
    key.sort()
    movies = np.arange(n_movies, dtype=np.int64)[None, :] << 32
    until = movies | cutoff[:, None]
    since = movies | np.maximum(cutoff - _RECENT_WINDOW_S, 0)[:, None]
    counts = np.searchsorted(key, until, side="right") - np.searchsorted(key, since, side="right")
    return counts.astype(np.float64)


def _pure_svd(matrix: sparse.csr_matrix, *, seed: int) -> npt.NDArray[np.float64]:
    """PureSVD (Cremonesi et al., 2010): scores ``R V^T V`` with ``V`` the top item factors."""
    from sklearn.decomposition import TruncatedSVD

    rank = min(_SVD_RANK, min(matrix.shape) - 1)
    svd = TruncatedSVD(n_components=rank, random_state=seed).fit(matrix)
    factors = svd.components_
    return np.asarray((matrix @ factors.T) @ factors)


def _item_knn(
    watched: sparse.csr_matrix, movie_count: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``[users, movies]``: summed cosine similarity of each movie to the user's movies.

    With ``A = W D^-1/2`` (``W`` watched, ``D`` movie counts) the item-item cosine matrix is
    ``A^T A``, so the sum over the user's movies is ``(A W^T) A``: a users × users product
    instead of a movies × movies one.
    """
    scaled = watched.multiply(1.0 / np.sqrt(np.maximum(movie_count, 1.0))[None, :]).tocsr()
    users_by_users = np.asarray((scaled @ watched.T).todense())
    return np.asarray(scaled.T @ users_by_users.T).T
