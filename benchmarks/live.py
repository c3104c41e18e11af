"""The live audit on live traffic: what it estimates, when it sees a shift, what it costs.

    python benchmarks/live.py [--unshifted 20000] [--shifted 10000] [--sample-rate 0.6]

The shipped covertype policy (calibrated on the covertype mix; its drift reference in its
provenance) is served twice by `cascade serve --runtime edge`, both servers pinned to core
0, the client to core 1: server A with the live audit on (`audit: {sample_rate, ...,
max_rows_per_s}`), server B without. Single-row JSON requests at concurrency 1, A and B in
alternating blocks of ``--block`` requests over the same rows, in ABBA order, so that both
see the same machine and the audit's work after A's block lands as often in A's next block
as in B's; besides the p50/p99 of all requests, the median over blocks of A's p50 / B's.

Traffic: ``--unshifted`` rows drawn (with replacement, seeded) from the covertype test split,
then ``--shifted`` rows from one natural sub-population of it: Wilderness_Area4 (Cache la
Poudre, 6 % of the split), where the small tier is sure of only 55 % of the rows instead of
72 %: the relative cost moves from ~0.30 to ~0.47 and the small tier's confidence
distribution moves (PSI ~0.26 against the calibration split's).

Reported:
- the audit's live relative-accuracy estimate (and its lower bound) at the end of each phase,
  read from A's /config, beside the true agreement with the top tier on the very rows of
  the audit's window (A's answers against the large model's, computed offline);
- drift: the first poll (every ``--poll`` A-requests) after the shift that shows the drift
  alarm, in requests after the shift; alarms raised over the unshifted phase (false alarms);
- the audit's cost: audited rows per second against the top tier's capacity (rows/s of the
  large model in batches of 64, measured here on core 1 before the run), and p50/p99 of A
  against B.

Writes ``benchmarks/results/live.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import Server

from cascade._table import table
from cascade.backends import OnnxModel
from cascade.edge.testing import free_port
from cascade.evaluate import ensure_models
from cascade.policy import read_policy
from cascade.zoo import read_dataset

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "covertype.yaml"
OUT = ROOT / "benchmarks" / "results" / "live.json"
SHIFT_COLUMN = 13  # Wilderness_Area4
TOP_SHARE = 0.05


def _policy(directory: Path, name: str, audit: dict[str, Any] | None) -> Path:
    loaded = read_policy(POLICY)
    document = loaded.policy.model_dump(mode="json", exclude_none=True)
    document |= {"name": name, "allow_outside_paths": True}
    for tier in document["tiers"]:
        document["tiers"][tier]["model"] = str(loaded.model_path(tier))
        document["tiers"][tier]["placement"] = "inline"  # the edge runs every tier inline
    if audit is not None:
        document["audit"] = audit
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(document))
    return path


def _capacity(model: OnnxModel, X: np.ndarray, batch: int = 64, seconds: float = 2.0) -> float:
    """Rows per second the top tier answers in batches of ``batch`` on this core."""
    rows = X[:batch]
    model.predict_sync(rows)
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.predict_sync(rows)
        n += batch
    return n / (time.perf_counter() - began)


def _body(row: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                                   "data": row.tolist()}]}).encode()  # fmt: skip


def _audit(client: httpx.Client, url: str, name: str) -> dict[str, Any]:
    audit: dict[str, Any] = client.get(f"{url}/v2/models/{name}/config").json()["audit"]
    return audit


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unshifted", type=int, default=20_000)
    parser.add_argument("--shifted", type=int, default=10_000)
    parser.add_argument("--sample-rate", type=float, default=0.6)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--poll", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    os.sched_setaffinity(0, {1})
    loaded = read_policy(POLICY)
    ensure_models(loaded, progress=False)
    split = read_dataset("covertype").test
    X = split.X.astype(np.float32)
    large = OnnxModel(loaded.model_path("large"))
    capacity = _capacity(large, X)
    max_rows_per_s = TOP_SHARE * capacity
    rng = np.random.default_rng(args.seed)
    shifted_pool = np.flatnonzero(X[:, SHIFT_COLUMN] > 0.5)
    order = np.r_[
        rng.integers(0, len(X), size=args.unshifted),
        rng.choice(shifted_pool, size=args.shifted),
    ]
    truth_labels = large.predict_sync(X).argmax(axis=1)
    audit = {
        "sample_rate": args.sample_rate,
        "max_rows_per_s": round(max_rows_per_s, 1),
        "window_rows": args.shifted,
        "window_audited": 2000,
    }
    print(f"top tier capacity {capacity:.0f} rows/s (batches of 64, one core): the audit may "
          f"use {max_rows_per_s:.0f} rows/s; policy audit section {audit}", flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        audited_path = _policy(Path(tmp), "audited", audit)
        plain_path = _policy(Path(tmp), "plain", None)
        servers = {
            "audited": Server("edge", [audited_path], port=free_port(), core=0),
            "plain": Server("edge", [plain_path], port=free_port(), core=0),
        }
        try:
            result = _replay(args, servers, X, order, truth_labels)
        finally:
            for server in servers.values():
                server.stop()
        alarm_lines = [line.strip() for line in servers["audited"].lines if "audit alarm" in line]
    result |= {
        "policy": str(POLICY.relative_to(ROOT)),
        "shift": "covertype test rows of Wilderness_Area4 (Cache la Poudre)",
        "top_capacity_rows_per_s": capacity,
        "audit_section": audit,
        "alarm_log_lines": alarm_lines,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def _replay(
    args: argparse.Namespace,
    servers: dict[str, Server],
    X: np.ndarray,
    order: np.ndarray,
    truth_labels: np.ndarray,
) -> dict[str, Any]:
    a, b = servers["audited"].url, servers["plain"].url
    latencies: dict[str, dict[str, list[float]]] = {
        "audited": {"unshifted": [], "shifted": []},
        "plain": {"unshifted": [], "shifted": []},
    }
    block_p50: dict[str, list[float]] = {"audited": [], "plain": []}
    served_labels = np.full(len(order), -1)
    polls: list[dict[str, Any]] = []
    phases: dict[str, Any] = {}
    with httpx.Client(timeout=30) as client:
        for url in (a, b):  # warm both
            for i in range(200):
                client.post(f"{url}/v2/models/{'audited' if url == a else 'plain'}/infer",
                            content=_body(X[order[i]]))  # fmt: skip
        # the warm-up's rows are older than the windows read at the ends of the phases
        began = time.perf_counter()
        audited_before = _audit(client, a, "audited")["total"]["audited"]
        for k, start in enumerate(range(0, len(order), args.block)):
            block = range(start, min(start + args.block, len(order)))
            pair = (("audited", a), ("plain", b))
            # ABBA: either server's background work (the audit's batches after its block)
            # lands as often in its own next block as in the other's
            for name, url in pair if k % 2 == 0 else pair[::-1]:
                block_ms: list[float] = []
                for i in block:
                    phase = "unshifted" if i < args.unshifted else "shifted"
                    t = time.perf_counter()
                    reply = client.post(f"{url}/v2/models/{name}/infer", content=_body(X[order[i]]))
                    latencies[name][phase].append((time.perf_counter() - t) * 1000)
                    block_ms.append(latencies[name][phase][-1])
                    assert reply.status_code == 200, reply.text
                    if name == "audited":
                        outputs = reply.json()["outputs"]
                        probabilities = next(o for o in outputs if o["name"] == "probabilities")
                        served_labels[i] = int(np.argmax(probabilities["data"]))
                        if (i + 1) % args.poll == 0:
                            snap = _audit(client, a, "audited")
                            polls.append({"request": i + 1, "phase": phase,
                                          "drift": snap["drift"]["score"],
                                          "alarms": sorted(snap["alarms"]),
                                          "audited": snap["total"]["audited"]})  # fmt: skip
                    if name == "audited" and i + 1 == args.unshifted:
                        phases["unshifted"] = _phase_readout(
                            _audit(client, a, "audited"), served_labels, truth_labels[order],
                            end=i + 1, window=args.shifted,
                        )  # fmt: skip
                block_p50[name].append(float(np.percentile(block_ms, 50)))
        elapsed = time.perf_counter() - began
        final = _audit(client, a, "audited")
    phases["shifted"] = _phase_readout(final, served_labels, truth_labels[order],
                                       end=len(order), window=args.shifted)  # fmt: skip
    after_shift = [p for p in polls if p["phase"] == "shifted" and "drift" in p["alarms"]]
    false_alarms = [p for p in polls if p["phase"] == "unshifted" and p["alarms"]]
    audited_rows = final["total"]["audited"] - audited_before
    return {
        "phases": phases,
        "drift_flagged_after_requests": (
            after_shift[0]["request"] - args.unshifted if after_shift else None
        ),
        "unshifted_polls_with_an_alarm": len(false_alarms),
        "unshifted_polls": sum(p["phase"] == "unshifted" for p in polls),
        "unshifted_alarms_seen": sorted({k for p in false_alarms for k in p["alarms"]}),
        "max_unshifted_drift": max(
            (p["drift"] for p in polls if p["phase"] == "unshifted" and p["drift"] is not None),
            default=None,
        ),
        "audited_rows": audited_rows,
        "audited_rows_per_s": audited_rows / elapsed,
        "audit_outcomes": final["outcomes"],
        "block_p50_ratio_median": float(
            np.median(np.array(block_p50["audited"]) / np.array(block_p50["plain"]))
        ),
        "latency": {
            name: {phase: _percentiles(ms) for phase, ms in by.items()}
            | {"all": _percentiles(by["unshifted"] + by["shifted"])}
            for name, by in latencies.items()
        },
        "polls": polls,
    }


def _phase_readout(
    snap: dict[str, Any], served: np.ndarray, truth: np.ndarray, *, end: int, window: int
) -> dict[str, Any]:
    """The audit's window at the end of a phase beside the truth on the rows it holds (the
    last ``window`` rows A answered)."""
    rows = slice(max(0, end - snap["window"]["rows"]), end)
    true_agreement = float(np.mean(served[rows] == truth[rows]))
    w = snap["window"]
    return {
        "window_rows": w["rows"],
        "window_audited": w["audited"],
        "estimate": w["relative_accuracy"]["estimate"],
        "lower": w["relative_accuracy"]["lower"],
        "true_agreement": true_agreement,
        "error_points": None
        if w["relative_accuracy"]["estimate"] is None
        else 100 * (w["relative_accuracy"]["estimate"] - true_agreement),
        "relative_cost": w["relative_cost"],
        "calibrated_relative_cost": snap["calibrated_relative_cost"],
        "escalation": w["escalation"],
        "drift": snap["drift"]["score"],
        "alarms": sorted(snap["alarms"]),
    }


def _print(result: dict[str, Any]) -> None:
    rows = []
    for phase, r in result["phases"].items():
        rows.append([phase, str(r["window_rows"]), str(r["window_audited"]),
                     f"{r['estimate']:.4f}", f"{r['lower']:.4f}", f"{r['true_agreement']:.4f}",
                     f"{r['error_points']:+.2f}", f"{r['relative_cost']:.3f}",
                     "-" if r["drift"] is None else f"{r['drift']:.3f}",
                     ",".join(r["alarms"]) or "none"])  # fmt: skip
    print(table(["phase", "rows", "audited", "estimate", "lower", "truth", "error (pts)",
                 "rel cost", "drift", "alarms"], rows))  # fmt: skip
    lat = result["latency"]
    print(table(["server", "p50 ms", "p99 ms"],
                [[n, f"{v['all']['p50_ms']:.3f}", f"{v['all']['p99_ms']:.3f}"]
                 for n, v in lat.items()]))  # fmt: skip
    print(f"audited/plain p50, median over blocks of {result['args']['block']} requests: "
          f"{result['block_p50_ratio_median']:.3f}")  # fmt: skip
    share = result["audited_rows_per_s"] / result["top_capacity_rows_per_s"]
    print(
        f"audit: {result['audited_rows']} rows at {result['audited_rows_per_s']:.1f} rows/s = "
        f"{100 * share:.2f} % of the top tier's capacity; outcomes {result['audit_outcomes']}"
    )
    print(
        f"drift flagged {result['drift_flagged_after_requests']} requests after the shift; "
        f"unshifted polls with an alarm: {result['unshifted_polls_with_an_alarm']} of "
        f"{result['unshifted_polls']} (max drift {result['max_unshifted_drift']})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
