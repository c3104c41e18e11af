"""Regenerate ``grpc_service_pb2.py`` (and its ``.pyi``) and ``grpc_service_pb2_grpc.py``
from the .proto here.

    pip install --target /tmp/grpc-tools --no-deps "grpcio-tools==1.74.0"
    PYTHONPATH=/tmp/grpc-tools python cascade/serving/_oip/generate.py

grpcio-tools 1.74 writes protobuf 6.31 gencode: it loads on every protobuf runtime from 6.31
on (7.x included), the range tritonclient (protobuf < 7) and Ray (7.x here) both fall in.
The messages go into a descriptor pool of their own, not protobuf's default one: Triton's
``tritonclient.grpc`` registers the same ``inference.*`` names in the default pool, and a
process (a test, a benchmark) may import both.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PROTO = HERE.relative_to(ROOT) / "grpc_service.proto"
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = "_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile("
_HEADER = (
    "# ruff: noqa\n# mypy: ignore-errors\n# regenerate: python cascade/serving/_oip/generate.py\n"
)


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}",
             f"--pyi_out={out}", f"--grpc_python_out={out}", str(PROTO)],
            check=True,
        )  # fmt: skip
        generated = Path(out) / PROTO.parent
        messages = (generated / "grpc_service_pb2.py").read_text()
        assert messages.count(_DEFAULT_POOL) == 1, "protoc's output changed: update this script"
        messages = messages.replace(_DEFAULT_POOL, _OWN_POOL)
        (HERE / "grpc_service_pb2.py").write_text(_HEADER + messages)
        types = (generated / "grpc_service_pb2.pyi").read_text()
        (HERE / "grpc_service_pb2.pyi").write_text(types)
        stubs = (generated / "grpc_service_pb2_grpc.py").read_text()
        (HERE / "grpc_service_pb2_grpc.py").write_text(_HEADER + stubs)
    shutil.rmtree(HERE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
