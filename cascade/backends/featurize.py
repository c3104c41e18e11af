"""Sparse text features for the cheap text tiers, in numpy and the standard library only.

Two featurizers, both deterministic across processes and machines (no ``hash()``, whose
seed changes per process) and both free of scikit-learn, so serving imports neither it nor
scipy:

- :class:`HashedCharNgrams` (tiny tier): character n-grams of each word, padded with one
  space each side (scikit-learn's ``char_wb``), hashed with CRC-32 into ``n_features``
  buckets, optionally signed, L2-normalised. Nothing to fit.
- :class:`Tfidf` (small tier): word n-grams plus ``char_wb`` n-grams with a vocabulary and
  smoothed idf fitted on training texts; each block is L2-normalised on its own, as a
  scikit-learn ``FeatureUnion`` of two ``TfidfVectorizer`` would.

Both return :class:`SparseRows` (CSR arrays). The ONNX graph of a linear tier takes them as
two padded tensors, ``feature_ids`` int64 and ``feature_values`` float32 ``[batch, k]``, and
gathers only the weight rows it needs, so its cost does not grow with the vocabulary.

Example::

    featurizer = HashedCharNgrams(n_features=2**14)
    rows = featurizer.transform(["what's my balance", "play jazz"])
    ids, values = rows.padded()                 # the two graph inputs
    same = read_featurizer(featurizer.to_json())
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cascade.errors import BuildError

__all__ = [
    "FORMAT_VERSION",
    "Featurizer",
    "HashedCharNgrams",
    "SparseRows",
    "Tfidf",
    "read_featurizer",
]

FORMAT_VERSION = 1
"""Version of the JSON written by ``to_json``; ``read_featurizer`` refuses other versions."""

_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, eq=False)
class SparseRows:
    """Feature rows in CSR form: row ``i`` holds ``values[indptr[i]:indptr[i+1]]`` at columns
    ``indices[indptr[i]:indptr[i+1]]`` (sorted, no duplicates) of ``width`` columns."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    width: int

    def __len__(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def padded(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, values)``, both ``[n_rows, k]`` with ``k`` the longest row (at least 1).

        Padding is column 0 with value 0, which adds nothing to a dot product.
        """
        lengths = np.diff(self.indptr)
        k = max(int(lengths.max(initial=0)), 1)
        n = len(self)
        ids = np.zeros((n, k), dtype=np.int64)
        values = np.zeros((n, k), dtype=np.float32)
        rows = np.repeat(np.arange(n), lengths)
        slots = np.arange(self.indices.shape[0]) - np.repeat(self.indptr[:-1], lengths)
        ids[rows, slots] = self.indices
        values[rows, slots] = self.values
        return ids, values

    def dense(self) -> npt.NDArray[np.float32]:
        """The rows as a dense float32 ``[n_rows, width]`` matrix (for tests and small data)."""
        out = np.zeros((len(self), self.width), dtype=np.float32)
        rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return out


def _normalise(text: str, lowercase: bool) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def _char_wb(words: Iterable[str], low: int, high: int) -> Iterable[str]:
    """Character n-grams of each word padded with one space each side; a padded word shorter
    than ``n`` is yielded whole, once (scikit-learn's ``char_wb``)."""
    for word in words:
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:
                yield padded
                break
            for start in range(size - n + 1):
                yield padded[start : start + n]


def _word_ngrams(tokens: Sequence[str], low: int, high: int) -> Iterable[str]:
    for n in range(low, high + 1):
        for start in range(len(tokens) - n + 1):
            yield " ".join(tokens[start : start + n])


def _rows(
    per_row: Iterable[dict[int, float]], width: int, *, block_starts: Sequence[int] = (0,)
) -> SparseRows:
    """CSR arrays from ``{column: value}`` dicts, each L2-normalised per block of columns."""
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    bounds = [*block_starts, width]
    for row in per_row:
        columns = sorted(row)
        weights = [row[c] for c in columns]
        for low, high in itertools.pairwise(bounds):
            block = range(bisect.bisect_left(columns, low), bisect.bisect_left(columns, high))
            norm = math.sqrt(sum(weights[i] * weights[i] for i in block))
            if norm > 0:
                for i in block:
                    weights[i] /= norm
        indices.extend(columns)
        values.extend(weights)
        indptr.append(len(indices))
    return SparseRows(
        indptr=np.asarray(indptr, dtype=np.int64),
        indices=np.asarray(indices, dtype=np.int64),
        values=np.asarray(values, dtype=np.float32),
        width=width,
    )


def _check_range(name: str, value: Sequence[int], minimum: int) -> tuple[int, int]:
    low, high = (int(v) for v in value)
    if not minimum <= low <= high:
        raise BuildError(f"{name} must be (low, high) with {minimum} <= low <= high, got {value}")
    return low, high


class HashedCharNgrams:
    """Hashed ``char_wb`` n-grams: stateless, so nothing to fit and nothing to ship but params.

    Bucket ``crc32(gram) % n_features``; with ``signed`` the gram counts -1 when bit 31 of the
    hash is set, so collisions cancel on average instead of piling up. Counts (or
    ``1 + log(count)`` with ``sublinear_tf``) are L2-normalised per text.

    Example::

        >>> rows = HashedCharNgrams(n_features=1024).transform(["hi there"])
        >>> rows.width, len(rows)
        (1024, 1)
    """

    kind: Literal["hashed"] = "hashed"

    def __init__(
        self,
        *,
        n_features: int = 2**14,
        ngram: tuple[int, int] = (2, 4),
        lowercase: bool = True,
        signed: bool = True,
        sublinear_tf: bool = True,
    ) -> None:
        if not 2 <= n_features <= 2**24:
            raise BuildError(f"n_features must be in [2, 2**24], got {n_features}")
        self.n_features = int(n_features)
        self.ngram = _check_range("ngram", ngram, 1)
        self.lowercase = bool(lowercase)
        self.signed = bool(signed)
        self.sublinear_tf = bool(sublinear_tf)

    def __repr__(self) -> str:
        return (
            f"HashedCharNgrams(n_features={self.n_features}, ngram={self.ngram}, "
            f"lowercase={self.lowercase}, signed={self.signed}, sublinear_tf={self.sublinear_tf})"
        )

    @property
    def width(self) -> int:
        """Number of feature columns."""
        return self.n_features

    def _row(self, text: str) -> dict[int, float]:
        counts: dict[int, float] = {}
        low, high = self.ngram
        for gram, count in Counter(
            _char_wb(_normalise(text, self.lowercase).split(), low, high)
        ).items():
            code = zlib.crc32(gram.encode("utf-8"))
            column = code % self.n_features
            weight = 1.0 + math.log(count) if self.sublinear_tf else float(count)
            if self.signed and code & 0x80000000:
                weight = -weight
            counts[column] = counts.get(column, 0.0) + weight
        return {c: w for c, w in counts.items() if w != 0.0}

    def transform(self, texts: Iterable[str]) -> SparseRows:
        """Feature rows of ``texts`` (strings; validation is the caller's job)."""
        return _rows((self._row(t) for t in texts), self.n_features)

    def to_json(self) -> str:
        """Parameters as JSON; :func:`read_featurizer` reads it back."""
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "n_features": self.n_features,
                "ngram": list(self.ngram),
                "lowercase": self.lowercase,
                "signed": self.signed,
                "sublinear_tf": self.sublinear_tf,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> HashedCharNgrams:
        """The featurizer :meth:`to_json` described."""
        data = _parse(text, cls.kind)
        return cls(
            n_features=data["n_features"],
            ngram=tuple(data["ngram"]),
            lowercase=data["lowercase"],
            signed=data["signed"],
            sublinear_tf=data["sublinear_tf"],
        )


class Tfidf:
    """Word and ``char_wb`` n-gram TF-IDF with a fitted vocabulary, in two L2-normalised blocks.

    Terms seen in at least ``min_df`` training texts are kept, the ``max_features`` most
    frequent (by document frequency, ties by term) when there are more; word terms take the
    first columns, character terms the rest. ``idf = ln((1 + n) / (1 + df)) + 1``
    (scikit-learn's ``smooth_idf``); tf is ``1 + ln(count)`` with ``sublinear_tf``.

    Example::

        >>> tfidf = Tfidf(min_df=1).fit(["play some jazz", "play the news"])
        >>> tfidf.transform(["play jazz"]).width == tfidf.width
        True
    """

    kind: Literal["tfidf"] = "tfidf"

    def __init__(
        self,
        *,
        word_ngram: tuple[int, int] = (1, 2),
        char_ngram: tuple[int, int] = (2, 4),
        min_df: int = 2,
        max_features: int = 20_000,
        lowercase: bool = True,
        sublinear_tf: bool = True,
    ) -> None:
        self.word_ngram = _check_range("word_ngram", word_ngram, 1)
        self.char_ngram = _check_range("char_ngram", char_ngram, 1)
        if min_df < 1:
            raise BuildError(f"min_df must be >= 1, got {min_df}")
        if max_features < 1:
            raise BuildError(f"max_features must be >= 1, got {max_features}")
        self.min_df = int(min_df)
        self.max_features = int(max_features)
        self.lowercase = bool(lowercase)
        self.sublinear_tf = bool(sublinear_tf)
        self.vocabulary: dict[str, int] = {}
        self.idf: npt.NDArray[np.float64] = np.zeros(0)
        self.n_word_terms = 0

    def __repr__(self) -> str:
        fitted = f"{self.width} terms" if self.vocabulary else "not fitted"
        return (
            f"Tfidf(word_ngram={self.word_ngram}, char_ngram={self.char_ngram}, "
            f"min_df={self.min_df}, max_features={self.max_features}; {fitted})"
        )

    @property
    def width(self) -> int:
        """Number of feature columns (the vocabulary size); 0 before :meth:`fit`."""
        return len(self.vocabulary)

    def _terms(self, text: str) -> tuple[Counter[str], Counter[str]]:
        normal = _normalise(text, self.lowercase)
        tokens = _WORD.findall(normal)
        words = Counter(_word_ngrams(tokens, *self.word_ngram))
        chars = Counter(_char_wb(normal.split(), *self.char_ngram))
        return words, chars

    def fit(self, texts: Sequence[str]) -> Tfidf:
        """Learn the vocabulary and idf from ``texts``; returns ``self``."""
        word_df: Counter[str] = Counter()
        char_df: Counter[str] = Counter()
        for text in texts:
            words, chars = self._terms(text)
            word_df.update(words.keys())
            char_df.update(chars.keys())
        candidates = [(f"w {t}", df) for t, df in word_df.items() if df >= self.min_df]
        candidates += [(f"c {t}", df) for t, df in char_df.items() if df >= self.min_df]
        if not candidates:
            raise BuildError(
                f"no term occurs in min_df={self.min_df} of the {len(texts)} training texts"
            )
        kept = sorted(candidates, key=lambda item: (-item[1], item[0]))[: self.max_features]
        words_first = sorted(kept, key=lambda item: (not item[0].startswith("w "), item[0]))
        self.vocabulary = {term: column for column, (term, _) in enumerate(words_first)}
        self.n_word_terms = sum(1 for term, _ in words_first if term.startswith("w "))
        df = np.asarray([d for _, d in words_first], dtype=np.float64)
        self.idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
        return self

    def _row(self, text: str) -> dict[int, float]:
        words, chars = self._terms(text)
        row: dict[int, float] = {}
        vocabulary, idf = self.vocabulary, self.idf
        for prefix, counts in (("w ", words), ("c ", chars)):
            for term, count in counts.items():
                column = vocabulary.get(prefix + term)
                if column is not None:
                    tf = 1.0 + math.log(count) if self.sublinear_tf else float(count)
                    row[column] = tf * float(idf[column])
        return row

    def transform(self, texts: Iterable[str]) -> SparseRows:
        """Feature rows of ``texts``; raises :class:`BuildError` before :meth:`fit`."""
        if not self.vocabulary:
            raise BuildError("Tfidf is not fitted: call fit(texts) or load a fitted one")
        return _rows((self._row(t) for t in texts), self.width, block_starts=(0, self.n_word_terms))

    def to_json(self) -> str:
        """Parameters, vocabulary (terms in column order) and idf as JSON."""
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "word_ngram": list(self.word_ngram),
                "char_ngram": list(self.char_ngram),
                "min_df": self.min_df,
                "max_features": self.max_features,
                "lowercase": self.lowercase,
                "sublinear_tf": self.sublinear_tf,
                "n_word_terms": self.n_word_terms,
                "terms": terms,
                "idf": [float(v) for v in self.idf],
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Tfidf:
        """The fitted featurizer :meth:`to_json` described."""
        data = _parse(text, cls.kind)
        tfidf = cls(
            word_ngram=tuple(data["word_ngram"]),
            char_ngram=tuple(data["char_ngram"]),
            min_df=data["min_df"],
            max_features=data["max_features"],
            lowercase=data["lowercase"],
            sublinear_tf=data["sublinear_tf"],
        )
        terms, idf = data["terms"], data["idf"]
        if len(terms) != len(idf) or not 0 <= data["n_word_terms"] <= len(terms):
            raise BuildError(
                f"tfidf JSON is inconsistent: {len(terms)} terms, {len(idf)} idf values, "
                f"n_word_terms {data['n_word_terms']}"
            )
        tfidf.vocabulary = {term: column for column, term in enumerate(terms)}
        tfidf.idf = np.asarray(idf, dtype=np.float64)
        tfidf.n_word_terms = int(data["n_word_terms"])
        return tfidf


Featurizer = HashedCharNgrams | Tfidf
_KINDS: dict[str, type[HashedCharNgrams] | type[Tfidf]] = {
    "hashed": HashedCharNgrams,
    "tfidf": Tfidf,
}


def _parse(text: str | bytes, kind: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"featurizer JSON cannot be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise BuildError(f"featurizer JSON must be an object, got {type(data).__name__}")
    if data.get("format_version") != FORMAT_VERSION:
        raise BuildError(
            f"featurizer JSON has format_version {data.get('format_version')!r}; "
            f"this cascade reads {FORMAT_VERSION}"
        )
    if kind is not None and data.get("kind") != kind:
        raise BuildError(f"featurizer JSON has kind {data.get('kind')!r}, expected {kind!r}")
    return data


def read_featurizer(text: str | bytes) -> Featurizer:
    """The featurizer a ``to_json`` string describes, whichever kind it is.

    Example::

        featurizer = read_featurizer(Path("tiny.text.json").read_text())
    """
    kind = _parse(text, None).get("kind")
    factory = _KINDS.get(str(kind))
    if factory is None:
        raise BuildError(f"unknown featurizer kind {kind!r} (known: {', '.join(sorted(_KINDS))})")
    return factory.from_json(text)
