"""CPU the answer log adds to a served request: the same policy without a log, logging
full inputs, and logging their hashes.

    python benchmarks/answer_log_cpu.py [--rounds 5] [--requests 300]

One process runs ``InferenceService.handle`` (the code both runtimes put behind their
server) on pre-encoded digits requests, one at a time, for three copies of the shipped
digits policy (all tiers inline) that differ only in their ``log`` section. The process's
CPU time (``time.process_time``: every thread, the log's writer included) is read around
each batch of requests, and each batch waits, off the clock's CPU, until the writer has
written its rows, so a batch is charged all the work its rows caused. Configurations
alternate within each round; the table gives the median CPU µs per request over rounds and
the cost over the unlogged policy. Writes ``benchmarks/results/answer_log_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOGS = {"none": None, "full": "full", "hash": "hash"}
SIZES = (1, 64)


def _service(work: Path) -> Any:
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy
    from cascade.serving import InferenceService, PolicyText

    source = ROOT / "policies" / "digits.yaml"
    ensure_models(read_policy(source), progress=False)
    base = source.read_text().replace("placement: deployment", "placement: inline")
    base = base.replace("models/", f"{source.parent}/models/")
    texts = []
    for name, inputs in LOGS.items():
        text = base.replace("name: digits", f"name: digits-{name}")
        text = "allow_outside_paths: true\n" + text
        if inputs is not None:
            text += f"log: {{path: {work / 'logs'}, inputs: {inputs}}}\n"
        path = work / f"digits-{name}.yaml"
        path.write_text(text)
        texts.append(PolicyText(str(path), text))
    service = InferenceService(max_rows=4096, coalesce_ms=2.0)
    service.apply_policies(texts, remote=lambda name: {})
    assert not service.reload_errors, service.reload_errors
    return service


def _body(rows: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    return json.dumps({"id": "bench", "inputs": [tensor]}).encode()


async def _batch(service: Any, model: str, raw: bytes, requests: int) -> float:
    async def read() -> bytes:
        return raw

    log = service.models[model].answer_log
    before = 0 if log is None else log.written + log.dropped + log.failed
    rows = len(json.loads(raw)["inputs"][0]["data"]) // 64
    began = time.process_time()
    for _ in range(requests):
        reply = await service.handle("POST", f"/v2/models/{model}/infer", {}, read)
        assert reply.status == 200, reply.body[:300]
    if log is not None:  # the writer's work on these rows belongs to this batch
        while log.written + log.dropped + log.failed < before + requests * rows:
            await asyncio.sleep(0.001)
    return (time.process_time() - began) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="per config and round")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    from cascade._table import table
    from cascade.zoo import read_dataset

    X = np.asarray(read_dataset("digits").test.X, dtype=np.float32)
    bodies = {size: _body(X[:size]) for size in SIZES}
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as work:
        service = _service(Path(work))

        async def run() -> None:
            for raw in bodies.values():  # warm-up
                for name in LOGS:
                    await _batch(service, f"digits-{name}", raw, 20)
            for _ in range(args.rounds):
                result = {}
                for size, raw in bodies.items():
                    for name in LOGS:
                        key = f"{size} row{'s' if size > 1 else ''}, log {name}"
                        result[key] = await _batch(service, f"digits-{name}", raw, args.requests)
                rounds.append(result)

        asyncio.run(run())
        dropped = {name: served.answer_log.dropped for name, served in service.models.items()
                   if served.answer_log is not None}  # fmt: skip
        service.close_logs()
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    body = []
    for key, value in medians.items():
        size = key.split(",")[0]
        plain = medians[f"{size}, log none"]
        body.append([key, f"{value:.0f}", f"{value - plain:+.0f}", f"{value / plain:.3f}"])
    print(table(["request", "µs CPU", "vs no log", "ratio"], body))
    print(f"rows dropped (queue full): {dropped}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "answer_log_cpu.json"
    document = {"rounds": rounds, "median_cpu_us_per_request": medians, "dropped": dropped,
                "requests_per_round": args.requests}  # fmt: skip
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
