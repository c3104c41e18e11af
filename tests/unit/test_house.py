"""The house's rules, read from the code: the wall between the request path and the
workshop, no import circles, no private name taken from another module."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.catalog import ModelCard

ROOT = Path(__file__).resolve().parents[2]

REQUEST_PATH = (
    "cascade/errors.py",
    "cascade/_table.py",
    "cascade/policy",
    "cascade/catalog",
    "cascade/backends",
    "cascade/routing",
    "cascade/load",
    "cascade/cache",
    "cascade/audit",
    "cascade/serving",
    "cascade/edge",
    "deployments",
)
"""What answers requests: policies, the catalog of tiers, backends, routing, load handling,
caches, the serving core and the two hosts (edge; Ray in ``deployments/``). The package's
face (``cascade/__init__.py``) names workshop exports too, imported on first use only:
``test_exported_members`` checks that importing it stays light."""

WORKSHOP = (
    "cascade.zoo",
    "cascade.text",
    "cascade.ranking",
    "cascade.evaluate",
    "cascade.cluster",
    "cascade.bench",
    "cascade.cli",
)
TRAINING_STACK = ("sklearn", "scipy", "pandas", "skl2onnx", "onnx", "tqdm", "matplotlib")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files(*places: str) -> Iterator[Path]:
    for place in places:
        path = ROOT / place
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import in the file, lazy ones included."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _crosses(target: str, forbidden: tuple[str, ...]) -> bool:
    return any(target == f or target.startswith(f + ".") for f in forbidden)


def test_the_request_path_imports_nothing_from_the_workshop() -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in _files(*REQUEST_PATH)
        for target, _, line in _imports(path)
        if _crosses(target, WORKSHOP + TRAINING_STACK)
    ]
    assert crossings == []


def test_no_private_name_is_imported_from_another_module() -> None:
    taken = [
        f"{path.relative_to(ROOT)}:{line} takes {name} from {target}"
        for path in _files("cascade", "deployments")
        for target, names, line in _imports(path)
        if target.startswith(("cascade", "deployments"))
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert taken == []


def _file_graph() -> dict[str, set[str]]:
    """Module -> the modules whose code it uses. A name taken from a package's face
    (``__init__``) is followed to the module the face takes it from."""
    modules = {_module_name(p): p for p in _files("cascade", "deployments")}
    faces: dict[str, dict[str, str]] = {}  # package -> name -> module it comes from
    for module, path in modules.items():
        if path.name == "__init__.py":
            faces[module] = {
                name: target
                for target, names, _ in _imports(path)
                if target in modules
                for name in names
            }
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        if path.name == "__init__.py":
            continue
        for target, names, _ in _imports(path):
            for name in names or [""]:
                found = f"{target}.{name}" if f"{target}.{name}" in modules else target
                if found in faces:
                    found = faces[found].get(name, found)
                if found in modules and found != module and found not in faces:
                    graph[module].add(found)
    return graph


def test_no_import_circles() -> None:
    graph = _file_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for nxt in graph[module]:
            if nxt not in index:
                connect(nxt)
                low[module] = min(low[module], low[nxt])
            elif nxt in stack:
                low[module] = min(low[module], index[nxt])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    assert circles == []


@pytest.mark.parametrize("runtime", ["edge"])
def test_a_serving_process_imports_no_training_stack(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, runtime: str
) -> None:
    """Serve a policy and answer a request in a fresh process, then read ``sys.modules``."""
    models, _ = digits_zoo
    policy = tmp_path / "digits.yaml"
    policy.write_text(
        f"name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n  large: {{model: {models / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny, threshold: 0.9}\n"
        "    - {tier: large}\n"
    )
    code = f"""
import asyncio, json, sys
from cascade.edge import EdgeSettings, build_edge_app

app = build_edge_app(EdgeSettings(policies=[{str(policy)!r}]))
body = json.dumps({{"inputs": [{{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                "data": [0.0] * 64}}]}}).encode()

async def read():
    return body

reply = asyncio.run(app.service.handle("POST", "/v2/models/digits/infer", {{}}, read))
assert reply.status == 200, reply.body
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {TRAINING_STACK!r})))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
