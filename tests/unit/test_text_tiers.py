"""The text tiers: numpy featurizers, TextModel serving, and build_text_zoo on a CLINC150 subset.

The subset (19 intents + ``oos``, 20 train / 5 calibration / 10 test queries each) keeps every
build to seconds. The MiniLM tier is built once per session and skipped only when the weights
are neither cached nor downloadable.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from cascade.backends import InputSpec, Model, OnnxModel, open_model
from cascade.backends.featurize import HashedCharNgrams, Tfidf, read_featurizer
from cascade.backends.text import TextModel
from cascade.catalog import COST_BATCH, TEXT_SIDECAR_SUFFIX, ModelCard, beside, read_cards
from cascade.errors import BuildError, InputError, ModelUnavailable
from cascade.text.build import LINEAR_C, build_text_zoo
from cascade.text.common import to_csr
from cascade.zoo import Dataset, Split, read_dataset

N_INTENTS = 19
PER_CLASS = {"train": 20, "calibration": 5, "test": 10}


def _subset(ds: Dataset) -> Dataset:
    """The first ``N_INTENTS`` intents plus ``oos``, ``PER_CLASS`` rows of each per split."""
    oos = ds.classes.index("oos")
    keep = [*[c for c in range(len(ds.classes)) if c != oos][:N_INTENTS], oos]
    classes = tuple(sorted(ds.classes[c] for c in keep))
    parts = {}
    for part, n in PER_CLASS.items():
        split: Split = getattr(ds, part)
        rows = np.concatenate([np.flatnonzero(split.y == c)[:n] for c in keep])
        y = np.asarray([classes.index(ds.classes[c]) for c in split.y[rows]], dtype=np.int64)
        parts[part] = Split(X=split.X[rows], y=y)
    return Dataset(
        name="clinc150-subset",
        kind="text",
        feature_names=ds.feature_names,
        classes=classes,
        source=ds.source,
        seed=ds.seed,
        **parts,
    )


@pytest.fixture(scope="session")
def subset() -> Dataset:
    return _subset(read_dataset("clinc150"))


@pytest.fixture(scope="session")
def linear_zoo(
    subset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[ModelCard]]:
    out = tmp_path_factory.mktemp("text-linear")
    return out, build_text_zoo(subset, out, progress=False, tiers=("tiny", "small"))


@pytest.fixture(scope="session")
def large_zoo(
    subset: Dataset, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[ModelCard]]:
    out = tmp_path_factory.mktemp("text-large")
    cards = build_text_zoo(
        subset, out, progress=False, tiers=("tiny", "large"), minilm_source=minilm_dir
    )
    return out, cards


# --- featurizers -------------------------------------------------------------------------


def test_hashed_ngrams_are_deterministic_across_processes() -> None:
    featurizer = HashedCharNgrams(n_features=1024)
    rows = featurizer.transform(["Hi  there", "hi there", ""])
    # crc32 of the UTF-8 n-gram, not hash(): the same columns in every process and release.
    assert rows.indices[rows.indptr[0] : rows.indptr[1]].tolist() == [
        92, 120, 214, 269, 445, 469, 486, 518, 618, 634, 647, 668, 684, 729, 823, 825, 871,
        888, 920, 929, 940,
    ]  # fmt: skip
    dense = rows.dense()
    np.testing.assert_array_equal(dense[0], dense[1])  # lowercased, spaces collapsed
    assert np.linalg.norm(dense[0]) == pytest.approx(1.0, abs=1e-6)
    assert not dense[2].any()  # an empty text has no n-grams, hence a zero row


def test_hashed_ngrams_json_round_trip() -> None:
    featurizer = HashedCharNgrams(n_features=4096, ngram=(1, 3), signed=False)
    again = read_featurizer(featurizer.to_json())
    assert isinstance(again, HashedCharNgrams)
    assert repr(again) == repr(featurizer)
    texts = ["book a flight to paris", "what's my credit score?"]
    np.testing.assert_array_equal(
        again.transform(texts).dense(), featurizer.transform(texts).dense()
    )
    assert (featurizer.transform(texts).dense() >= 0).all()


def test_tfidf_json_round_trip_and_determinism(subset: Dataset) -> None:
    texts = [str(t) for t in subset.train.X]
    tfidf = Tfidf().fit(texts)
    assert Tfidf().fit(texts).to_json() == tfidf.to_json()
    again = Tfidf.from_json(tfidf.to_json())
    assert again.vocabulary == tfidf.vocabulary
    test = [str(t) for t in subset.test.X]
    np.testing.assert_array_equal(again.transform(test).dense(), tfidf.transform(test).dense())


def test_tfidf_blocks_match_scikit_learn(subset: Dataset) -> None:
    """Each block is what a TfidfVectorizer with the same settings computes."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [str(t) for t in subset.train.X]
    ours = Tfidf(min_df=2).fit(texts)
    dense = ours.transform(texts).dense()
    for prefix, kwargs in (
        ("w ", {"ngram_range": (1, 2)}),
        ("c ", {"analyzer": "char_wb", "ngram_range": (2, 4)}),
    ):
        reference = TfidfVectorizer(min_df=2, sublinear_tf=True, **kwargs).fit(texts)
        terms = reference.get_feature_names_out()
        columns = [ours.vocabulary[prefix + str(term)] for term in terms]
        assert len(columns) == sum(term.startswith(prefix) for term in ours.vocabulary)
        expected = reference.transform(texts).toarray()
        np.testing.assert_allclose(dense[:, columns], expected, atol=1e-6)


def test_featurizer_json_errors() -> None:
    with pytest.raises(BuildError, match="unknown featurizer kind 'bow'"):
        read_featurizer(json.dumps({"format_version": 1, "kind": "bow"}))
    with pytest.raises(BuildError, match="format_version 2"):
        read_featurizer(json.dumps({"format_version": 2, "kind": "hashed"}))
    with pytest.raises(BuildError, match="Tfidf is not fitted"):
        Tfidf().transform(["hello"])


# --- linear tiers ------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["tiny", "small"])
def test_text_model_matches_the_sklearn_pipeline(
    linear_zoo: tuple[Path, list[ModelCard]], subset: Dataset, tier: str
) -> None:
    from sklearn.linear_model import LogisticRegression

    out, _ = linear_zoo
    model = TextModel(out / f"{tier}.onnx")
    featurizer = read_featurizer(beside(model.path, TEXT_SIDECAR_SUFFIX).read_text())
    train = to_csr(featurizer.transform([str(t) for t in subset.train.X]))
    estimator = LogisticRegression(C=LINEAR_C[tier], max_iter=1000).fit(train, subset.train.y)
    test = [str(t) for t in subset.test.X]
    expected = estimator.predict_proba(to_csr(featurizer.transform(test)))
    got = model.predict_sync(np.asarray(test, dtype=object))
    assert got.dtype == np.float32 and got.shape == (len(test), subset.n_classes)
    assert np.abs(got - expected).max() < 1e-4
    assert model.kind == ("hashed" if tier == "tiny" else "tfidf")
    assert model.input_spec == InputSpec(name="text", width=None, dtype="string")
    assert model.n_classes == subset.n_classes
    assert asyncio.run(model.predict(test[:3])).shape == (3, subset.n_classes)


def test_linear_cards(linear_zoo: tuple[Path, list[ModelCard]], subset: Dataset) -> None:
    out, cards = linear_zoo
    assert [c.name for c in cards] == ["tiny", "small"]
    assert [c.name for c in read_cards(out)] == ["tiny", "small"]
    for card in cards:
        assert card.input_name == "text"
        assert card.classes == list(subset.classes)
        assert card.accuracy["test"] > 0.5  # 20 classes: chance is 0.05
        assert card.fidelity is not None and card.fidelity.max_abs_diff <= 1e-4
        assert {1, 32, COST_BATCH} <= set(card.latency.per_row_us)
        assert card.relative_cost is None  # no large tier to compare with
        assert {"accuracy", "in_scope_accuracy", "oos_recall"} == set(card.build["test_metrics"])
        assert (out / f"{card.name}.text.json").is_file()


def test_text_model_rejects_bad_input(linear_zoo: tuple[Path, list[ModelCard]]) -> None:
    model = TextModel(linear_zoo[0] / "tiny.onnx")
    with pytest.raises(InputError, match=r"input 'text': row 1 is int, not a text"):
        model.predict_sync(["fine", 3])
    with pytest.raises(InputError, match=r"row 0 has 10001 characters; the limit is 10000"):
        model.predict_sync(["x" * 10_001])
    with pytest.raises(InputError, match=r"expected a batch of texts, got str"):
        model.predict_sync("one text, not wrapped in a list")
    with pytest.raises(InputError, match=r"expected a 1-D batch of texts, got shape \[2, 2\]"):
        model.predict_sync(np.array([["a", "b"], ["c", "d"]], dtype=object))
    with pytest.raises(InputError, match=r"empty batch"):
        model.predict_sync([])
    # Empty strings are texts: the tier answers with its class prior rather than refusing.
    assert model.predict_sync([""]).sum() == pytest.approx(1.0, abs=1e-5)


def test_open_model_dispatches_on_the_sidecar(
    linear_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    text = open_model(linear_zoo[0] / "small.onnx")
    assert isinstance(text, TextModel) and isinstance(text, Model)

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["input"], ["probabilities"], axis=-1)],
        "softmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
    )
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    numeric = open_model(plain)
    assert isinstance(numeric, OnnxModel)


def test_text_model_refuses_broken_sidecars(
    linear_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    model_file = tmp_path / "tiny.onnx"
    model_file.write_bytes((linear_zoo[0] / "tiny.onnx").read_bytes())
    with pytest.raises(ModelUnavailable, match=r"tiny.text.json: no text sidecar"):
        TextModel(model_file)
    beside(model_file, TEXT_SIDECAR_SUFFIX).write_text('{"format_version": 1, "kind": "bag"}')
    with pytest.raises(ModelUnavailable, match=r"kind 'bag' is not one of"):
        TextModel(model_file)
    beside(model_file, TEXT_SIDECAR_SUFFIX).write_text('{"format_version": 1, "kind": "minilm"}')
    with pytest.raises(ModelUnavailable, match=r"cannot read the minilm sidecar"):
        TextModel(model_file)


def test_serving_imports_neither_sklearn_nor_scipy(
    linear_zoo: tuple[Path, list[ModelCard]],
) -> None:
    code = (
        "import sys\n"
        "from cascade.backends.text import TextModel\n"
        f"for tier in ('tiny', 'small'):\n"
        f"    TextModel({str(linear_zoo[0])!r} + f'/{{tier}}.onnx').predict_sync(['hi there'])\n"
        "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_build_refuses_non_text_and_unknown_tiers(subset: Dataset, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="dataset 'digits' is tabular; build_text_zoo needs text"):
        build_text_zoo(read_dataset("digits"), tmp_path, progress=False)
    with pytest.raises(BuildError, match=r"unknown text tiers \['huge'\]"):
        build_text_zoo(subset, tmp_path, progress=False, tiers=("tiny", "huge"))


# --- large tier --------------------------------------------------------------------------


def test_large_tier_is_one_graph_with_probabilities(
    large_zoo: tuple[Path, list[ModelCard]], subset: Dataset
) -> None:
    out, cards = large_zoo
    model = open_model(out / "large.onnx")
    assert isinstance(model, TextModel) and model.kind == "minilm"
    assert json.loads(beside(model.path, TEXT_SIDECAR_SUFFIX).read_text()) == {
        "format_version": 1,
        "kind": "minilm",
        "tokenizer": "tokenizer.json",
        "max_length": 128,
    }
    texts = [str(t) for t in subset.test.X[::7]]
    probabilities = model.predict_sync(texts)
    assert probabilities.shape == (len(texts), subset.n_classes)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    # One run per text: a text's probabilities do not depend on its batch-mates.
    alone = np.concatenate([model.predict_sync([t]) for t in texts])
    np.testing.assert_array_equal(probabilities, alone)

    large = {c.name: c for c in cards}["large"]
    assert large.accuracy["test"] > 0.7
    assert large.fidelity is not None and large.fidelity.max_abs_diff <= 1e-4
    assert large.build["params"]["embedding_graph"] == "int8"
    assert large.compression is not None and large.compression["checked_rows"] > 0
    assert large.relative_cost == 1.0
    assert {c.name: c for c in cards}["tiny"].relative_cost < 0.5  # type: ignore[operator]
