"""Scorers as ONNX graphs, their cards, and loading a built cascade back for evaluation.

Every scorer graph has the same interface, so each stage of a cascade can be handed the same
candidate matrix:

- one input ``input``: ``float32 [None, n_features]``, the *full* feature vector;
- one output ``score``: ``float32 [None, 1]``, higher = better.

Linear scorers (filter, coarse) read only their few columns, with a ``Gather`` inside the
graph, then ``MatMul`` + ``Add``. Tree ensembles are converted by skl2onnx and reduced to the
``score`` output (positive-class probability for classifiers, the prediction for
regressors). Every export is checked against scikit-learn (max |difference| <= 1e-4) and
timed with onnxruntime on one thread; the per-row cost at a batch of :data:`SCORER_COST_ROWS` rows
goes into the stage's card (``{stage}.scorer.json``).

Example::

    models = open_cascade("models/movielens")        # CascadeModels for evaluate_cascade
    cards = read_scorer_cards("models/movielens")    # {"filter": ..., "coarse": ..., "fine": ...}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from cascade.catalog import (
    SCORER_CARD_SUFFIX,
    SCORER_COST_ROWS,
    Fidelity,
    ScorerCard,
    read_scorer_cards,
    sha256_of,
)
from cascade.errors import BuildError, CascadeError
from cascade.ranking.metrics import CascadeModels, Stage
from cascade.zoo.export import FIDELITY_TOLERANCE, TARGET_OPSET, check_fidelity, library_versions
from cascade.zoo.measure import measure_latency

__all__ = [
    "INPUT_NAME",
    "MANIFEST",
    "OUTPUT_NAME",
    "LinearScorer",
    "RankingBuild",
    "export_scorer",
    "library_versions",
    "linear_onnx",
    "onnx_scores",
    "open_cascade",
    "tree_onnx",
    "write_cascade_files",
]

INPUT_NAME = "input"
OUTPUT_NAME = "score"
MANIFEST = "features.json"
StageName = Literal["filter", "coarse", "fine"]


@dataclass(frozen=True, eq=False)
class LinearScorer:
    """``score = X[:, columns] @ weights + bias``: a linear model over a few columns."""

    columns: tuple[int, ...]
    weights: npt.NDArray[np.float64]
    bias: float

    def score(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Scores ``[n]`` of the full feature rows ``X``, in float64."""
        return np.asarray(X[:, list(self.columns)], dtype=np.float64) @ self.weights + self.bias

    @classmethod
    def from_pipeline(cls, pipeline: Any, columns: Sequence[int]) -> LinearScorer:
        """Fold a fitted ``StandardScaler`` → linear model pipeline into one weight vector.

        The last step must have ``coef_`` and ``intercept_`` (``Ridge``, binary
        ``LogisticRegression``); its raw score (``decision_function`` / ``predict``) is kept.
        """
        scaler, model = pipeline[0], pipeline[-1]
        coef = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
        intercept = float(np.asarray(model.intercept_, dtype=np.float64).reshape(-1)[0])
        scale = np.asarray(scaler.scale_, dtype=np.float64)
        mean = np.asarray(scaler.mean_, dtype=np.float64)
        weights = coef / scale
        return cls(tuple(int(c) for c in columns), weights, intercept - float(weights @ mean))


@dataclass(frozen=True, eq=False)
class RankingBuild:
    """What a build wrote: the directory, feature names and cards per stage.

    ``estimators`` holds the fitted scikit-learn objects in memory (never written: the ONNX
    files are the artefacts); the linear ones take the columns listed in their card.
    """

    out_dir: Path
    feature_names: tuple[str, ...]
    cards: dict[str, ScorerCard]
    filter_threshold: float | None
    estimators: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _finish(graph: onnx.GraphProto, *, name: str, metadata: Mapping[str, Any]) -> onnx.ModelProto:
    opsets = [helper.make_opsetid(domain, version) for domain, version in TARGET_OPSET.items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="cascade")
    model.ir_version = 8  # runs on every onnxruntime we support (>= 1.18)
    model.graph.name = name
    _add_metadata(model, metadata)
    onnx.checker.check_model(model)
    return model


def _add_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def _io(n_features: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    return (
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features]),
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1]),
    )


def linear_onnx(
    scorer: LinearScorer, *, n_features: int, metadata: Mapping[str, Any] | None = None
) -> onnx.ModelProto:
    """``Gather`` the scorer's columns of ``input``, then ``MatMul`` + ``Add`` → ``score``.

    Example::

        graph = linear_onnx(LinearScorer((0, 3), np.array([0.5, 2.0]), 0.1), n_features=14)
    """
    if any(not 0 <= c < n_features for c in scorer.columns):
        raise BuildError(f"columns {list(scorer.columns)} out of range for {n_features} features")
    columns = numpy_helper.from_array(np.asarray(scorer.columns, dtype=np.int64), "columns")
    weights = numpy_helper.from_array(scorer.weights.astype(np.float32).reshape(-1, 1), "weights")
    bias = numpy_helper.from_array(np.asarray([scorer.bias], dtype=np.float32), "bias")
    nodes = [
        helper.make_node("Gather", [INPUT_NAME, "columns"], ["picked"], axis=1),
        helper.make_node("MatMul", ["picked", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], [OUTPUT_NAME]),
    ]
    graph_input, graph_output = _io(n_features)
    graph = helper.make_graph(
        nodes,
        "cascade_linear_scorer",
        [graph_input],
        [graph_output],
        initializer=[columns, weights, bias],
    )
    return _finish(graph, name="cascade_linear_scorer", metadata=metadata or {})


def tree_onnx(
    estimator: Any, *, n_features: int, metadata: Mapping[str, Any] | None = None
) -> onnx.ModelProto:
    """Convert a fitted tree ensemble with skl2onnx and keep one ``score`` output.

    Classifiers (binary) score the positive-class probability, regressors their prediction.

    Example::

        graph = tree_onnx(HistGradientBoostingRegressor().fit(X, y), n_features=X.shape[1])
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from cascade.zoo.export import bool_attributes_as_ints

    is_classifier = hasattr(estimator, "predict_proba")
    options = {id(estimator): {"zipmap": False}} if is_classifier else None
    try:
        with bool_attributes_as_ints():
            converted = convert_sklearn(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                options=options,
                target_opset=TARGET_OPSET,
            )
    except Exception as exc:
        raise BuildError(f"skl2onnx could not convert {type(estimator).__name__}: {exc}") from exc
    outputs = [o.name for o in converted.graph.output]
    source = "probabilities" if is_classifier else outputs[0]
    if source not in outputs:
        raise BuildError(f"converted {type(estimator).__name__} has no {source!r} output")
    graph = converted.graph
    if is_classifier:
        for tensor, values in (("one", [1]), ("two", [2])):
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"score_{tensor}")
            )
        graph.node.append(
            helper.make_node(
                "Slice",
                [source, "score_one", "score_two", "score_one"],  # [:, 1:2] along axis 1
                [OUTPUT_NAME],
            )
        )
    else:
        graph.node.append(helper.make_node("Identity", [source], [OUTPUT_NAME]))
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1]))
    # Keep only what feeds ``score``: the label branch and ZipMap-free leftovers go.
    reduced = onnx.utils.Extractor(converted).extract_model([INPUT_NAME], [OUTPUT_NAME])
    reduced.graph.output[0].CopyFrom(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, 1])
    )
    name = f"cascade_{type(estimator).__name__}"
    model = helper.make_model(
        reduced.graph, opset_imports=list(converted.opset_import), producer_name="cascade"
    )
    model.ir_version = converted.ir_version
    model.graph.name = name
    _add_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def _session(graph: onnx.ModelProto | str | os.PathLike[str], *, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    payload = graph.SerializeToString() if isinstance(graph, onnx.ModelProto) else str(Path(graph))
    return ort.InferenceSession(payload, sess_options=options, providers=["CPUExecutionProvider"])


class _OnnxScorer:
    """Callable rows → scores ``[n]`` over one onnxruntime session (no input validation)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __call__(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.predict_sync(rows)[:, 0]

    def predict_sync(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        batch = np.ascontiguousarray(rows, dtype=np.float32)
        (scores,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(scores, dtype=np.float32)


def onnx_scores(
    graph: onnx.ModelProto | str | os.PathLike[str], X: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Run a scorer graph (or ONNX file) on ``X``; return its scores as ``float32 [n]``.

    Example::

        scores = onnx_scores("models/ltr/fine.onnx", X)
    """
    return _OnnxScorer(_session(graph))(X)


def export_scorer(
    graph: onnx.ModelProto,
    out_dir: Path,
    *,
    stage: StageName,
    reference: npt.NDArray[np.floating],
    check_rows: npt.NDArray[np.float32],
    used_features: Sequence[str],
    feature_names: Sequence[str],
    family: str,
    threshold: float | None = None,
    reference_name: str | None = None,
    dataset: str,
    dataset_source: str,
    seed: int,
    build: Mapping[str, Any],
) -> ScorerCard:
    """Write ``{stage}.onnx``, check it against ``reference`` scores, time it; return its card.

    The file's metadata records stage, dataset, feature names and the filter threshold.

    ``reference`` are scikit-learn's scores of ``check_rows`` (``reference_name`` says what
    they are when not a ``family`` estimator's); the card is not yet written
    (relative costs need every stage first).
    """
    path = out_dir / f"{stage}.onnx"
    graph = onnx.ModelProto.FromString(graph.SerializeToString())  # leave the caller's alone
    _add_metadata(
        graph,
        {
            "cascade.stage": stage,
            "cascade.dataset": dataset,
            "cascade.feature_names": list(feature_names),
            "cascade.used_features": list(used_features),
            **({"cascade.threshold": threshold} if threshold is not None else {}),
        },
    )
    path.write_bytes(graph.SerializeToString())
    scorer = _OnnxScorer(_session(path))
    worst = check_fidelity(
        scorer.predict_sync(check_rows),
        np.asarray(reference, dtype=np.float64).reshape(-1, 1),
        what=f"{path}",
    )
    rows = np.resize(check_rows, (SCORER_COST_ROWS, check_rows.shape[1])).astype(np.float32)
    latency = measure_latency(scorer, rows, threads=1, batch_sizes=(1, SCORER_COST_ROWS))
    return ScorerCard(
        name=stage,
        stage=stage,
        file=path.name,
        dataset=dataset,
        dataset_source=dataset_source,
        seed=seed,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        n_features=len(feature_names),
        feature_names=list(feature_names),
        used_features=list(used_features),
        threshold=threshold,
        family=family,
        size_bytes=path.stat().st_size,
        sha256=sha256_of(path),
        latency=latency,
        cost_us=latency.per_row_us[SCORER_COST_ROWS],
        fidelity=Fidelity(
            reference=reference_name or f"scikit-learn {family} scores",
            max_abs_diff=worst,
            tolerance=FIDELITY_TOLERANCE,
        ),
        build=dict(build),
    )


def write_cascade_files(
    out_dir: Path,
    cards: Sequence[ScorerCard],
    *,
    dataset: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, ScorerCard]:
    """Add relative costs (vs the fine stage) and the library versions, write every card and
    the ``features.json``."""
    versions = library_versions()
    by_stage = {
        card.stage: card.model_copy(update={"build": {**card.build, "versions": versions}})
        for card in cards
    }
    if "fine" not in by_stage:
        raise BuildError(f"{out_dir}: a cascade needs a fine stage, got {sorted(by_stage)}")
    fine_cost = by_stage["fine"].cost_us
    final: dict[str, ScorerCard] = {}
    for stage, card in by_stage.items():
        card = card.model_copy(update={"relative_cost": card.cost_us / fine_cost})
        (out_dir / f"{stage}{SCORER_CARD_SUFFIX}").write_text(card.model_dump_json(indent=2) + "\n")
        final[stage] = card
    fine = by_stage["fine"]
    manifest = {
        "dataset": dataset,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "n_features": fine.n_features,
        "feature_names": fine.feature_names,
        "stages": {
            stage: {
                "file": card.file,
                "used_features": card.used_features,
                "cost_us": card.cost_us,
                "threshold": card.threshold,
            }
            for stage, card in final.items()
        },
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final


def open_cascade(directory: str | os.PathLike[str], *, threads: int = 1) -> CascadeModels:
    """Load a built cascade's ONNX scorers with their measured costs, for evaluation.

    Example::

        results = evaluate_cascade(queries, open_cascade("models/movielens"), [100, 200])
    """
    directory = Path(directory)
    cards = read_scorer_cards(directory)
    missing = [s for s in ("coarse", "fine") if s not in cards]
    if missing:
        raise CascadeError(f"{directory}: no scorer card for stage(s) {missing}")

    def stage(name: str) -> Stage:
        card = cards[name]
        return Stage(_OnnxScorer(_session(directory / card.file, threads=threads)), card.cost_us)

    filter_card = cards.get("filter")
    return CascadeModels(
        coarse=stage("coarse"),
        fine=stage("fine"),
        filter=stage("filter") if filter_card is not None else None,
        filter_threshold=(
            filter_card.threshold
            if filter_card is not None and filter_card.threshold is not None
            else float("-inf")
        ),
    )
