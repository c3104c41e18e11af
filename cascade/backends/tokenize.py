"""Texts → padded int64 token arrays for the MiniLM ONNX graph, with the ``tokenizers`` library.

Each text becomes ``[CLS] wordpieces [SEP]``, truncated to ``max_length`` tokens (the
``[SEP]`` is kept) and padded with ``[PAD]`` on the right to the longest text of the batch.
``attention_mask`` is 1 on real tokens and 0 on padding. Token types are not returned: the
graph treats every token as segment 0, as sentence-transformers does for single texts.

Example::

    tokenizer = Tokenizer.from_file(source_dir / "tokenizer.json")
    batch = tokenizer(["what is my balance", "hi"])
    batch.input_ids.shape             # (2, 6)
    session.run(None, batch.feeds())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cascade.errors import BuildError, InputError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["DEFAULT_MAX_LENGTH", "TokenBatch", "Tokenizer"]

DEFAULT_MAX_LENGTH = 128
"""Tokens per text, [CLS] and [SEP] included. all-MiniLM-L6-v2's tokenizer.json ships with 128
(sentence-transformers raises it to 256; the model has 512 positions). CLINC150 queries stay
far below either; a shorter cap bounds the worst-case latency of the tier."""

_MAX_POSITIONS = 512
_PAD_TOKEN = "[PAD]"


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """Token ids and attention mask, both int64 of shape ``(n_texts, longest)``."""

    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]

    def feeds(self) -> dict[str, npt.NDArray[np.int64]]:
        """The ONNX input feed: ``{"input_ids": ..., "attention_mask": ...}``."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _read_tokenizers() -> type[tokenizers.Tokenizer]:
    try:
        from tokenizers import Tokenizer as Backend
    except ImportError as exc:
        raise ImportError('the MiniLM tier needs tokenizers: pip install "cascade[text]"') from exc
    return Backend


class Tokenizer:
    """A BERT WordPiece tokenizer read from a ``tokenizer.json`` file.

    Example::

        >>> tok = Tokenizer.from_file("all-MiniLM-L6-v2/tokenizer.json")
        >>> tok(["hello world"]).input_ids
        array([[ 101, 7592, 2088,  102]])
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH):
        if not 2 <= max_length <= _MAX_POSITIONS:
            raise BuildError(f"max_length must be in [2, {_MAX_POSITIONS}], got {max_length}")
        pad_id = backend.token_to_id(_PAD_TOKEN)
        if pad_id is None:
            raise BuildError(f"the tokenizer has no {_PAD_TOKEN} token")
        backend.enable_truncation(max_length)
        # The file pads every text to a fixed 128; longest-in-batch pads far less on short queries.
        backend.enable_padding(pad_id=pad_id, pad_token=_PAD_TOKEN, length=None)
        self._backend = backend
        self.max_length = max_length
        self.pad_id = pad_id

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, max_length: int = DEFAULT_MAX_LENGTH
    ) -> Tokenizer:
        """Read ``tokenizer.json`` (as extracted by :func:`~cascade.text.fetch_minilm`)."""
        backend_type = _read_tokenizers()
        file = Path(path)
        if not file.is_file():
            raise BuildError(f"{file}: no such tokenizer file")
        try:
            backend = backend_type.from_file(str(file))
        except Exception as exc:  # the Rust side raises a bare Exception on malformed JSON
            raise BuildError(f"{file}: cannot be read as a tokenizer: {exc}") from exc
        return cls(backend, max_length=max_length)

    def __repr__(self) -> str:
        return f"Tokenizer(max_length={self.max_length})"

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenize ``texts``; raises :class:`InputError` on an empty batch or a non-string."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of strings, got one str; wrap it in a list")
        items = list(texts)
        if not items:
            raise InputError("texts is empty; need at least one text")
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise InputError(f"texts[{index}] is {type(text).__name__}, expected str")
        encodings = self._backend.encode_batch(items)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)
