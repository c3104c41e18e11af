"""Complexity scorers: how hard a request is, in [0, 1], decided before any tier runs.

Built-ins are named in ``SCORERS``; your own scorer is named ``"package.module:Class"`` in
the policy and constructed with the policy's ``params``::

    scorer:
      name: mypackage.scorers:LengthScorer
      params: {max_length: 512}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cascade.errors import InputError, PolicyError
from cascade.policy import Scorer as ScorerSpec

__all__ = ["SCORERS", "FeatureScorer", "OnnxScorer", "Scorer", "make_scorer"]


@runtime_checkable
class Scorer(Protocol):
    """Scores rows by difficulty: ``(n, width)`` in, ``(n,)`` in [0, 1] out, higher harder.

    Example::

        class LengthScorer:
            def score(self, rows: np.ndarray) -> np.ndarray:
                return np.clip(rows[:, 0] / 512, 0, 1)
    """

    def score(self, rows: np.ndarray) -> np.ndarray: ...


class FeatureScorer:
    """Maps one input column linearly from ``low`` (score 0) to ``high`` (score 1), clipped.

    Example::

        FeatureScorer(feature=3, low=0.0, high=10.0).score(rows)
    """

    def __init__(self, *, feature: int, low: float, high: float) -> None:
        if low == high:
            raise PolicyError(f"feature scorer: low and high must differ, both are {low}")
        self.feature = feature
        self.low = low
        self.high = high

    def score(self, rows: np.ndarray) -> np.ndarray:
        if rows.ndim != 2 or rows.shape[1] <= self.feature:
            raise InputError(
                f"feature scorer: scores column {self.feature}, but rows have shape "
                f"{list(rows.shape)}"
            )
        column = rows[:, self.feature].astype(np.float64)
        return np.clip((column - self.low) / (self.high - self.low), 0.0, 1.0)


class OnnxScorer:
    """An ONNX binary classifier; the score is its probability of class 1.

    Example::

        OnnxScorer("models/digits/router.onnx").score(rows)
    """

    def __init__(self, path: str | Path) -> None:
        from cascade.backends import OnnxModel

        self.model = OnnxModel(path)
        if self.model.n_classes != 2:
            raise PolicyError(
                f"onnx scorer {path}: needs a binary classifier, got {self.model.n_classes} classes"
            )

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.clip(self.model.predict_sync(rows)[:, 1].astype(np.float64), 0.0, 1.0)


def _feature(spec: ScorerSpec, base_dir: Path) -> Scorer:
    missing = [k for k in ("feature", "low", "high") if getattr(spec, k) is None]
    if missing:
        raise PolicyError(f"scorer 'feature' needs {missing}")
    assert spec.feature is not None and spec.low is not None and spec.high is not None
    return FeatureScorer(feature=spec.feature, low=spec.low, high=spec.high)


def _onnx(spec: ScorerSpec, base_dir: Path) -> Scorer:
    if spec.model is None:
        raise PolicyError("scorer 'onnx' needs `model`: an ONNX binary classifier file")
    return OnnxScorer(base_dir / spec.model)


SCORERS: Mapping[str, Callable[[ScorerSpec, Path], Scorer]] = {
    "feature": _feature,
    "onnx": _onnx,
}
"""Built-in scorers by policy name; each builds a scorer from the policy's scorer section."""


def _out_of_tree(spec: ScorerSpec) -> Scorer:
    module_name, _, attribute = spec.name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PolicyError(f"scorer '{spec.name}': cannot import it: {exc}") from exc
    try:
        scorer = factory(**spec.params)
    except TypeError as exc:
        raise PolicyError(
            f"scorer '{spec.name}': cannot construct it with params {spec.params}: {exc}"
        ) from exc
    if not isinstance(scorer, Scorer):
        raise PolicyError(f"scorer '{spec.name}': {type(scorer).__name__} has no score(rows)")
    return scorer


def make_scorer(spec: ScorerSpec, *, base_dir: Path) -> Scorer:
    """Build the scorer a policy names; model files are relative to ``base_dir``.

    Example::

        scorer = make_scorer(policy.routing.scorer, base_dir=policy_file.parent)
    """
    builder = SCORERS.get(spec.name)
    if builder is not None:
        return builder(spec, Path(base_dir))
    if ":" in spec.name:
        return _out_of_tree(spec)
    raise PolicyError(
        f"unknown scorer '{spec.name}' (allowed: {', '.join(sorted(SCORERS))}, "
        "or 'package.module:Class')"
    )
