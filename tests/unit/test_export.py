"""skl2onnx export and the fidelity check."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from cascade import FidelityError
from cascade.zoo import read_dataset
from cascade.zoo.export import check_fidelity, onnx_probabilities, sklearn_to_onnx


def test_hist_gradient_boosting_converts_under_this_protobuf() -> None:
    from skl2onnx.common._container import ModelComponentContainer

    original = ModelComponentContainer.add_node
    ds = read_dataset("digits")
    model = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(ds.train.X, ds.train.y)
    graph = sklearn_to_onnx(model, n_features=64, metadata={"tier": "small", "classes": ["0"]})
    assert ModelComponentContainer.add_node is original  # the workaround is scoped
    assert [o.name for o in graph.graph.output] == ["label", "probabilities"]
    assert {p.key: p.value for p in graph.metadata_props} == {"tier": "small", "classes": '["0"]'}
    diff = check_fidelity(
        onnx_probabilities(graph, ds.test.X), model.predict_proba(ds.test.X), what="hgb"
    )
    assert diff <= 1e-4


def test_fidelity_check_pins_its_messages() -> None:
    reference = np.full((4, 3), 1 / 3)
    assert check_fidelity(reference + 5e-5, reference, what="x") == pytest.approx(5e-5)
    off = reference.copy()
    off[2, 1] += 0.01
    with pytest.raises(
        FidelityError,
        match=r"x: ONNX disagrees with the reference by 0\.01 "
        r"\(row 2; allowed <= 0\.0001\); the export is not faithful",
    ):
        check_fidelity(off, reference, what="x")
    with pytest.raises(
        FidelityError,
        match=r"x: ONNX probabilities have shape \[4, 2\], "
        r"the reference has \[4, 3\]",
    ):
        check_fidelity(reference[:, :2], reference, what="x")
    nan = reference.copy()
    nan[1, 1] = np.nan
    with pytest.raises(FidelityError, match=r"by nan \(row 1;"):
        check_fidelity(nan, reference, what="x")
