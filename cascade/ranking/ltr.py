"""LightGBM's small learning-to-rank sample: loader, test queries and a coarse → fine cascade.

The data (MIT, bundled in ``cascade/zoo/data/ltr``; see its ``SOURCE.md``) has 300 anonymised
features in [0, 1], graded relevance 0..4 and two splits: train (201 queries, 3,005
documents) and test (50 queries, 768 documents, 6..24 per query). Its queries are far too
short for a filter to pay, so this cascade has two stages:

- coarse: ``Ridge`` on the :data:`N_COARSE_FEATURES` columns whose absolute correlation with
  the grade is highest on the training split;
- fine: ``HistGradientBoostingRegressor`` on all 300 columns (pointwise regression of the
  grade).

Example::

    build = build_ltr("models/ltr")
    queries = ltr_queries("test")
"""

from __future__ import annotations

import gzip
import itertools
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
from cascade.ranking.metrics import Query
from cascade.zoo.measure import progress_steps

__all__ = [
    "FEATURE_NAMES",
    "LTR_DIR",
    "N_COARSE_FEATURES",
    "N_FEATURES",
    "LtrSplit",
    "build_ltr",
    "coarse_columns",
    "ltr_queries",
    "read_ltr",
]

LTR_DIR = Path(__file__).parents[1] / "zoo" / "data" / "ltr"
N_FEATURES = 300
N_COARSE_FEATURES = 5
FEATURE_NAMES = tuple(f"f{i}" for i in range(N_FEATURES))
FINE_PARAMS: dict[str, Any] = {"max_iter": 100, "learning_rate": 0.1, "early_stopping": False}
SplitName = Literal["train", "test"]


@dataclass(frozen=True, eq=False)
class LtrSplit:
    """Dense features ``float32 [n, 300]``, grades ``int64 [n]`` and query sizes ``[q]``."""

    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    group_sizes: npt.NDArray[np.int64]

    @property
    def bounds(self) -> npt.NDArray[np.int64]:
        """Row offsets of the queries: query ``i`` is rows ``bounds[i]:bounds[i + 1]``."""
        return np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)


def read_ltr(
    split: SplitName = "train", *, directory: str | os.PathLike[str] = LTR_DIR
) -> LtrSplit:
    """Read one split of the bundled sample as dense float32.

    Example::

        test = read_ltr("test")
        test.X.shape, len(test.group_sizes)        # ((768, 300), 50)
    """
    from sklearn.datasets import load_svmlight_file

    if split not in ("train", "test"):
        raise DatasetError(f"LTR split must be 'train' or 'test', got {split!r}")
    base = Path(directory)
    data, queries = base / f"rank.{split}.gz", base / f"rank.{split}.query"
    for path in (data, queries):
        if not path.is_file():
            raise DatasetError(f"{path}: no such file (the LTR sample ships in cascade/zoo/data)")
    with gzip.open(data, "rb") as handle:
        sparse_X, y = load_svmlight_file(handle, n_features=N_FEATURES)
    sizes = np.loadtxt(queries, dtype=np.int64, ndmin=1)
    if sizes.sum() != sparse_X.shape[0]:
        raise DatasetError(
            f"{queries}: query sizes sum to {sizes.sum()}, but {data} has {sparse_X.shape[0]} rows"
        )
    return LtrSplit(
        X=np.asarray(sparse_X.toarray(), dtype=np.float32),
        y=y.astype(np.int64),
        group_sizes=sizes,
    )


def ltr_queries(split: SplitName = "test") -> list[Query]:
    """One :class:`Query` per query of ``split``; ids are row numbers within the split.

    Relevance is the grade (0..4), so NDCG's gains are ``2**grade - 1``. Queries whose
    grades are all 0 are kept here; :func:`evaluate_cascade` skips them.
    """
    data = read_ltr(split)
    bounds = data.bounds
    return [
        Query(
            features=data.X[start:stop],
            relevance=data.y[start:stop].astype(np.float32),
            ids=np.arange(start, stop, dtype=np.int64),
        )
        for start, stop in itertools.pairwise(bounds)
    ]


def coarse_columns(X: npt.NDArray[np.float32], y: npt.NDArray[np.int64], n: int) -> list[int]:
    """The ``n`` columns with the highest absolute Pearson correlation with ``y`` (constant
    columns count as uncorrelated), in column order."""
    centred = X.astype(np.float64) - X.mean(axis=0)
    target = y.astype(np.float64) - float(y.mean())
    norms = np.linalg.norm(centred, axis=0) * np.linalg.norm(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(norms > 0, (centred.T @ target) / norms, 0.0)
    best = np.argsort(-np.abs(correlation), kind="stable")[:n]
    return sorted(int(c) for c in best)


def build_ltr(
    out_dir: str | os.PathLike[str],
    *,
    progress: bool = True,
    seed: int = 0,
    n_coarse_features: int = N_COARSE_FEATURES,
) -> RankingBuild:
    """Train and export the LTR cascade: ``coarse.onnx`` and ``fine.onnx`` (no filter).

    Both take ``input`` ``float32 [None, 300]`` and return ``score`` ``float32 [None, 1]``;
    both are checked against scikit-learn on the test split and timed on it.

    Example::

        build = build_ltr("models/ltr")
        build.cards["coarse"].used_features        # e.g. ['f7', 'f19', ...]
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with progress_steps(4, progress) as step:
        step("load LTR sample")
        train, test = read_ltr("train"), read_ltr("test")

        step("fit coarse (ridge) and fine (gradient boosting)")
        columns = coarse_columns(train.X, train.y, n_coarse_features)
        began = time.perf_counter()
        coarse = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(train.X[:, columns], train.y)
        coarse_seconds = time.perf_counter() - began
        began = time.perf_counter()
        fine = HistGradientBoostingRegressor(**FINE_PARAMS, random_state=seed)
        fine.fit(train.X, train.y)
        fine_seconds = time.perf_counter() - began

        step("export and check ONNX")
        common: dict[str, Any] = {
            "out_dir": out,
            "check_rows": test.X,
            "feature_names": FEATURE_NAMES,
            "dataset": "ltr_lightgbm_sample",
            "dataset_source": str(LTR_DIR),
            "seed": seed,
        }
        training = {"rows": len(train.y), "queries": len(train.group_sizes), "label": "grade"}
        used = [FEATURE_NAMES[c] for c in columns]
        cards = [
            export_scorer(
                linear_onnx(LinearScorer.from_pipeline(coarse, columns), n_features=N_FEATURES),
                stage="coarse",
                reference=coarse.predict(test.X[:, columns]),
                used_features=used,
                family="Ridge",
                build={
                    "params": {"alpha": 1.0},
                    "selection": f"top {n_coarse_features} |Pearson r| with the grade (train)",
                    "training": training,
                    "fit_seconds": coarse_seconds,
                },
                **common,
            ),
            export_scorer(
                tree_onnx(fine, n_features=N_FEATURES),
                stage="fine",
                reference=fine.predict(test.X),
                used_features=list(FEATURE_NAMES),
                family="HistGradientBoostingRegressor",
                build={"params": FINE_PARAMS, "training": training, "fit_seconds": fine_seconds},
                **common,
            ),
        ]
        step("write cards")
        written = write_cascade_files(out, cards, dataset="ltr_lightgbm_sample")
    return RankingBuild(
        out_dir=out,
        feature_names=FEATURE_NAMES,
        cards=written,
        filter_threshold=None,
        estimators={"coarse": coarse, "fine": fine},
    )
