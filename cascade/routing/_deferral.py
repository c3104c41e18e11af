"""Deferral features: what a learned escalation rule reads about a row, from outputs alone.

A learned rule scores "the next tier would change this row's answer for the better" from
the cheap tier's whole probability vector (not just its top probability), the tiers already
run before it, and optionally the row's own input features. Never from a label: the same
function builds the features when ``cascade calibrate`` fits the rule and when the engine
serves it, and it takes no label argument.

Layout of one row (``k`` classes, ``m`` earlier tiers, ``w`` input columns)::

    p_1 .. p_k                    the tier's probabilities
    max_prob, margin, entropy     the three confidence measures, each in [0, 1]
    onehot_1 .. onehot_k          the predicted class
    per earlier tier: max_prob, agrees (1 when its argmax equals this tier's)
    x_1 .. x_w                    input features, only when the rule reads them

numpy only: serving processes never import scikit-learn for this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascade.errors import BackendError, PolicyError
from cascade.routing._confidence import confidence

__all__ = ["LearnedRule", "deferral_features", "deferral_width"]


def deferral_width(n_classes: int, *, earlier: int = 0, input_width: int = 0) -> int:
    """How many columns :func:`deferral_features` returns for these sizes.

    Example::

        >>> deferral_width(7)
        17
    """
    return 2 * n_classes + 3 + 2 * earlier + input_width


def deferral_features(
    probabilities: np.ndarray,
    *,
    earlier: Sequence[np.ndarray] = (),
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Features of each row for a learned deferral rule, float32 ``(n, deferral_width)``.

    ``probabilities``: the tier's output ``(n, k)``; ``earlier``: outputs of tiers run
    before it on the same rows, cheapest first; ``rows``: the input rows, when the rule
    reads them.

    Example::

        >>> deferral_features(np.array([[0.7, 0.2, 0.1]])).round(2).tolist()
        [[0.7, 0.2, 0.1, 0.7, 0.5, 0.27, 1.0, 0.0, 0.0]]
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (n, n_classes), got {list(p.shape)}")
    n, k = p.shape
    predicted = p.argmax(axis=1)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), predicted] = 1.0
    columns = [
        p,
        confidence(p, "max_prob")[:, None],
        confidence(p, "margin")[:, None],
        confidence(p, "entropy")[:, None],
        onehot,
    ]
    for other in earlier:
        q = np.asarray(other, dtype=np.float64)
        if q.shape != p.shape:
            raise ValueError(
                f"earlier tier output of shape {list(q.shape)} does not match {list(p.shape)}"
            )
        columns += [q.max(axis=1)[:, None], (q.argmax(axis=1) == predicted)[:, None]]
    if rows is not None:
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"rows must have shape ({n}, width), got {list(x.shape)}")
        columns.append(x)
    return np.hstack(columns).astype(np.float32)


class LearnedRule:
    """A chain step's learned escalation rule, as the engine runs it: deferral features of the
    step's rows in, confidence ``1 - score`` out (higher: keep this tier's answer).

    Example::

        rule = LearnedRule(policy_dir / "covertype.small.deferral.onnx", earlier=["tiny"])
        keep = rule.confidences(small_probabilities, earlier=[tiny_probabilities])
    """

    def __init__(
        self, path: str | Path, *, earlier: Sequence[str] = (), inputs: bool = False
    ) -> None:
        from cascade.backends import OnnxModel

        self.path = Path(path)
        self.model = OnnxModel(path)
        if self.model.n_classes != 2:
            raise PolicyError(
                f"deferral rule {path}: needs a binary classifier, got "
                f"{self.model.n_classes} classes"
            )
        self.earlier = list(earlier)
        self.inputs = inputs

    def confidences(
        self,
        probabilities: np.ndarray,
        *,
        earlier: Sequence[np.ndarray] = (),
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """``1 -`` the rule's score for each row, float64 in [0, 1]."""
        features = deferral_features(
            probabilities, earlier=earlier, rows=rows if self.inputs else None
        )
        want = self.model.input_spec.width
        if want is not None and features.shape[1] != want:
            raise BackendError(
                f"deferral rule {self.path.name}: reads {want} features, but this step gives "
                f"{features.shape[1]} ({probabilities.shape[1]} classes, {len(earlier)} earlier "
                f"tiers{', inputs' if self.inputs else ''}): retrain it with `cascade calibrate`"
            )
        score = self.model.predict_sync(features)[:, 1].astype(np.float64)
        return 1.0 - np.clip(score, 0.0, 1.0)
