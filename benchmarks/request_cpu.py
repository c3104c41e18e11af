"""CPU a served request costs on the request path itself, this checkout beside another.

    python benchmarks/request_cpu.py [--against DIR] [--rounds 5] [--requests 300]

The request path without a network or a web server in the way: one process runs
``cascade.serving.InferenceService.handle`` (the code both runtimes put behind their server:
parse, validate, admission, coalescer, engine, inline ONNX tiers, response encoding) on
pre-encoded request bodies, one at a time, and reads the process's CPU time
(``time.process_time``) around each batch of requests. Configurations: the shipped digits
policy with 1-row and 64-row JSON requests, and the covertype policy with 64-row requests in
the binary tensor extension, all tiers inline (a deployment tier would be a Ray hop).

With ``--against DIR`` (another checkout of this repository, e.g. ``git worktree add
/tmp/before HEAD~1``), the same measurement runs on that code too, in its own process
(``PYTHONPATH=DIR``), rounds alternating between the two, so slow spells of this shared
machine fall on both; the table gives CPU µs per request, the median over rounds, and the
ratio this/other. Only APIs both checkouts share are used (``InferenceService``,
``PolicyText``). Writes ``benchmarks/results/request_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "digits 1 row JSON": ("digits", 1, False),
    "digits 64 rows JSON": ("digits", 64, False),
    "covertype 64 rows binary": ("covertype", 64, True),
}

# Runs in a child process on one checkout: prints {config: cpu µs per request} per round.
CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
import numpy as np
from cascade.serving import InferenceService, PolicyText

configs = json.loads(sys.argv[1])
requests = int(sys.argv[2])
service = InferenceService(max_rows=4096, coalesce_ms=2.0)
service.apply_policies(
    [PolicyText(p, Path(p).read_text()) for p in sorted({c["policy"] for c in configs.values()})],
    remote=lambda name: {},
)
assert not service.reload_errors, service.reload_errors

def body(config):
    rows = np.load(config["rows"])
    if config["binary"]:
        raw = rows.astype("<f4").tobytes()
        tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                  "parameters": {"binary_data_size": len(raw)}}
        header = json.dumps({"inputs": [tensor]}).encode()
        return header + raw, {"inference-header-content-length": str(len(header))}
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {}

bodies = {name: body(c) for name, c in configs.items()}

async def one(name):
    raw, headers = bodies[name]
    async def read():
        return raw
    reply = await service.handle("POST", f"/v2/models/{configs[name]['model']}/infer",
                                 headers, read)
    assert reply.status == 200, reply.body[:300]

async def measure():
    for name in bodies:  # warm-up
        for _ in range(20):
            await one(name)
    out = {}
    for name in bodies:
        began = time.process_time()
        for _ in range(requests):
            await one(name)
        out[name] = (time.process_time() - began) / requests * 1e6
    return out

for line in sys.stdin:  # one line per round: measure, print, wait for the next
    print(json.dumps(asyncio.run(measure())), flush=True)
"""


def _configs(work: Path) -> dict[str, dict[str, Any]]:
    """Each configuration's policy (a copy with every tier inline), model name and rows."""
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy
    from cascade.zoo import read_dataset

    out: dict[str, dict[str, Any]] = {}
    for name, (dataset, rows, binary) in CONFIGS.items():
        source = ROOT / "policies" / f"{dataset}.yaml"
        loaded = read_policy(source)
        ensure_models(loaded, progress=False)
        policy = work / f"{dataset}.yaml"
        text = source.read_text().replace("placement: deployment", "placement: inline")
        text = text.replace("models/", f"{source.parent}/models/")
        policy.write_text("allow_outside_paths: true\n" + text)
        X = read_dataset(dataset).test.X[:rows]
        path = work / f"{dataset}-{rows}.npy"
        import numpy as np

        np.save(path, np.asarray(X, dtype=np.float32))
        out[name] = {"policy": str(policy), "model": loaded.policy.name, "rows": str(path),
                     "binary": binary}  # fmt: skip
    return out


def _child(checkout: Path, configs: dict[str, Any], requests: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(configs), str(requests)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout,
    )  # fmt: skip


def _round(child: subprocess.Popen[str]) -> dict[str, float]:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"the measuring process ended (exit {child.wait()})")
    result: dict[str, float] = json.loads(line)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="per config and round")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    from cascade._table import table

    with tempfile.TemporaryDirectory() as work:
        configs = _configs(Path(work))
        checkouts = {"this": ROOT, **({"other": args.against.resolve()} if args.against else {})}
        children = {name: _child(path, configs, args.requests) for name, path in checkouts.items()}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in children}
        try:
            for _ in range(args.rounds):
                for name, child in children.items():  # alternating, round by round
                    rounds[name].append(_round(child))
        finally:
            for child in children.values():
                child.kill()
    medians = {
        name: {c: statistics.median(r[c] for r in runs) for c in configs}
        for name, runs in rounds.items()
    }
    header = ["request", *[f"{n} µs CPU" for n in medians]]
    if "other" in medians:
        header.append("this / other")
    body = []
    for config in configs:
        row = [config, *[f"{medians[n][config]:.0f}" for n in medians]]
        if "other" in medians:
            row.append(f"{medians['this'][config] / medians['other'][config]:.3f}")
        body.append(row)
    print(table(header, body))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "request_cpu.json"
    document = {
        "checkouts": {n: str(p) for n, p in checkouts.items()},
        "rounds": rounds,
        "median_cpu_us_per_request": medians,
        "requests_per_round": args.requests,
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
