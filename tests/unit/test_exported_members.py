"""The public surface: what `cascade` exports, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import cascade


def test_exported_members() -> None:
    exported = {name for name in dir(cascade) if not name.startswith("_")} | {"__version__"}
    assert set(cascade.__all__) == exported
    for name in cascade.__all__:
        assert getattr(cascade, name) is not None
    assert cascade.HttpModel is cascade.backends.HttpModel  # split inference's remote tier


def test_importing_cascade_loads_no_ray_and_no_training_stack() -> None:
    code = (
        "import sys, cascade; "
        "print(sorted(m for m in ('ray', 'sklearn', 'pandas', 'skl2onnx', 'onnxruntime') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
