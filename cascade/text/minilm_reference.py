"""A plain numpy forward pass of all-MiniLM-L6-v2, the check the ONNX graph is held to.

Written independently of :mod:`cascade.text.minilm_onnx` (no shared code besides reading the
safetensors file): it computes in float64, keeps PyTorch's ``[out, in]`` weight layout, adds
the token-type embedding per token instead of folding it, masks padding with ``-inf`` rather
than an additive bias, and pools with an explicit masked mean. torch is not installed here,
so this stands in for sentence-transformers as the reference; it follows the published BERT
equations (post-LayerNorm encoder, exact erf GELU, mean pooling, L2 normalisation).

Example::

    reference = MiniLMReference.from_dir(fetch_minilm())
    batch = tokenizer(["set an alarm for 7"])
    reference.embed(batch.input_ids, batch.attention_mask)   # float64 (1, 384), unit rows
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import erf

from cascade.errors import InputError

__all__ = ["MiniLMReference"]

Array = npt.NDArray[np.float64]


class MiniLMReference:
    """all-MiniLM-L6-v2 sentence embeddings in float64 numpy; slow but plain.

    Example::

        MiniLMReference.from_dir(source_dir).embed(ids, mask).shape   # (n, 384)
    """

    def __init__(self, tensors: dict[str, npt.NDArray[Any]], config: dict[str, Any]) -> None:
        self._w = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])

    @classmethod
    def from_dir(cls, source_dir: str | os.PathLike[str]) -> MiniLMReference:
        """Read ``model.safetensors`` and ``config.json`` from ``source_dir``."""
        from safetensors.numpy import load_file

        directory = Path(source_dir)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return cls(load_file(str(directory / "model.safetensors")), config)

    def _norm(self, x: Array, name: str) -> Array:
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        scaled = (x - mean) / np.sqrt(var + self.eps)
        return np.asarray(scaled * self._w[name + ".weight"] + self._w[name + ".bias"])

    def _dense(self, x: Array, name: str) -> Array:
        """x @ W.T + b over the last axis; flattened to 2-D so numpy hands it to BLAS."""
        weight = self._w[name + ".weight"]
        flat = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        out = flat @ weight.T + self._w[name + ".bias"]
        return np.asarray(out.reshape(*x.shape[:-1], weight.shape[0]))

    def _encode(self, ids: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_]) -> Array:
        """Hidden states of a padded batch, [n, seq, hidden]; padding is masked as keys only."""
        n, seq = ids.shape
        w = self._w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        split = x.shape[-1] // self.heads
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."

            def heads_first(t: Array) -> Array:  # [n, seq, hidden] -> [n, heads, seq, split]
                return t.reshape(n, seq, self.heads, split).transpose(0, 2, 1, 3)

            q = heads_first(self._dense(x, p + "attention.self.query"))
            k = heads_first(self._dense(x, p + "attention.self.key"))
            v = heads_first(self._dense(x, p + "attention.self.value"))
            scores = np.einsum("nhqd,nhkd->nhqk", q, k) / np.sqrt(split)
            scores = np.where(keep[:, None, None, :], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = np.einsum("nhqk,nhkd->nqhd", weights, v).reshape(n, seq, -1)
            attended = self._dense(context, p + "attention.output.dense")
            x = self._norm(attended + x, p + "attention.output.LayerNorm")
            inner = self._dense(x, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / np.sqrt(2.0)))
            x = self._norm(self._dense(inner, p + "output.dense") + x, p + "output.LayerNorm")
        return x

    def embed(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> Array:
        """Unit-length sentence embeddings, float64 ``[n, hidden]``."""
        ids = np.asarray(input_ids)
        mask = np.asarray(attention_mask)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise InputError(
                f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} "
                "must be 2-D and of one shape"
            )
        keep = mask.astype(bool)
        if not keep.any(axis=1).all():
            raise InputError("a row of attention_mask is all zeros")
        hidden = self._encode(ids.astype(np.int64), keep)
        pooled = np.stack([hidden[i][keep[i]].mean(axis=0) for i in range(len(ids))])
        return np.asarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
