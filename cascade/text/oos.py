"""An out-of-scope filter as a text tier: a cheap first step that answers ``oos`` itself.

A binary logistic regression (in scope vs ``oos``, balanced class weights) over the tiny
tier's hashed character n-grams, exported so that it speaks the cascade's language: its
graph emits the full class vector, ``P(oos)`` in the ``oos`` column and ``(1 - P(oos))``
spread evenly over the others. With ``b' = b + log(C - 1)`` the softmax over ``C`` classes
of logits ``[0, ..., w.x + b', ..., 0]`` is exactly that. As the first step of a confidence
chain it stops the rows it is sure are out of scope (its confidence is about ``P(oos)``)
and passes every other row on, so no engine change is needed and ``cascade calibrate``
fits its threshold like any other step's.
"""

from __future__ import annotations

import math

import numpy as np

from cascade.backends.featurize import HashedCharNgrams
from cascade.backends.text import TextModel
from cascade.catalog import Fidelity
from cascade.errors import BuildError
from cascade.text.common import (
    TextBuild,
    linear_text_onnx,
    predict_all,
    save_model,
    text_card,
    texts_of,
    to_csr,
    write_sidecar,
)
from cascade.zoo.export import FIDELITY_TOLERANCE, check_fidelity

__all__ = ["OOS_LABEL", "build_oos_filter"]

OOS_LABEL = "oos"
_C = 10.0


def build_oos_filter(ctx: TextBuild) -> None:
    """Build ``oos.onnx`` (+ sidecar and card) into ``ctx.out`` for a dataset with ``oos``."""
    from sklearn.linear_model import LogisticRegression

    ds = ctx.dataset
    if OOS_LABEL not in ds.classes:
        raise BuildError(f"dataset '{ds.name}' has no '{OOS_LABEL}' class to filter")
    oos = ds.classes.index(OOS_LABEL)
    featurizer = HashedCharNgrams(n_features=2**14)
    ctx.step("oos filter: featurizing")
    X = to_csr(featurizer.transform(texts_of(ds.train.X)))
    y = (np.asarray(ds.train.y) == oos).astype(np.int64)
    ctx.step("oos filter: training logistic regression (in scope vs oos)")
    estimator = LogisticRegression(C=_C, class_weight="balanced", max_iter=2000,
                                   random_state=ctx.seed).fit(X, y)  # fmt: skip
    n_classes = ds.n_classes
    W = np.zeros((featurizer.width, n_classes), dtype=np.float32)
    W[:, oos] = estimator.coef_[0]
    b = np.zeros(n_classes, dtype=np.float32)
    b[oos] = float(estimator.intercept_[0]) + math.log(n_classes - 1)
    ctx.step("oos filter: exporting to ONNX")
    path = ctx.out / "oos.onnx"
    metadata = {"tier": "oos", "dataset": ds.name, "classes": list(ds.classes),
                "kind": featurizer.kind}  # fmt: skip
    save_model(linear_text_onnx(W, b, metadata=metadata), path)
    write_sidecar(path, featurizer.to_json())
    model = TextModel(path)
    test_texts = texts_of(ds.test.X)
    probabilities = predict_all(model, test_texts)
    reference = estimator.predict_proba(to_csr(featurizer.transform(test_texts)))[:, 1]
    worst = check_fidelity(probabilities[:, oos], reference, what=f"{ds.name}/oos")
    test_oos = np.asarray(ds.test.y) == oos
    caught = probabilities[:, oos] >= 0.5
    text_card(
        ctx,
        model,
        tier="oos",
        build={
            "family": "hashed char n-grams + binary logistic regression (in scope vs oos)",
            "params": {"C": _C, "class_weight": "balanced", "width": featurizer.width},
            "filter_at_0.5": {
                "oos_recall": float(caught[test_oos].mean()),
                "in_scope_caught": float(caught[~test_oos].mean()),
            },
        },
        fidelity=Fidelity(
            reference="cascade featurizer + scikit-learn LogisticRegression.predict_proba (oos)",
            max_abs_diff=worst,
            tolerance=FIDELITY_TOLERANCE,
        ),
        test_probabilities=probabilities,
    )
