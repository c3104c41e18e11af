"""How much memory and disk a policy needs: per tier, and the edge process as a whole.

Per tier: the model file's size and its session's memory (the RSS a loaded, warmed-up
session adds to this process). The whole process: a fresh Python process builds the edge
app exactly as ``cascade serve --runtime edge`` does, answers one request per policy, and
reports its RSS (and peak) — the number an edge box's memory budget is about.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Footprint", "TierFootprint", "format_footprint", "measure_footprint", "rss_mb"]

_MB = 2**20


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """``(current, peak)`` resident memory of a process in MB (``/proc``; elsewhere the
    peak of this process stands for both)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # macOS says bytes, Linux kB
        return peak * scale / _MB, peak * scale / _MB
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024 / _MB
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass(frozen=True)
class TierFootprint:
    """One tier: its model (file or URL), file size and session memory (local tiers)."""

    policy: str
    tier: str
    model: str
    remote: bool
    file_mb: float | None
    session_mb: float | None


@dataclass(frozen=True)
class Footprint:
    """Every tier's footprint, and the edge process serving all the policies.

    ``base_mb``: this process before any session (Python, numpy, onnxruntime);
    ``process_mb`` / ``peak_mb``: a fresh edge process after one request per policy.
    """

    tiers: list[TierFootprint]
    base_mb: float
    process_mb: float
    peak_mb: float
    disk_mb: float
    budget_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_mb is None else self.process_mb <= self.budget_mb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_budget": self.within_budget}


def _probe(spec: Any, rows: int = 1) -> Any:
    import numpy as np

    if spec.dtype == "string":
        return np.array(["footprint probe"] * rows, dtype=object)
    return np.zeros((rows, spec.width or 1), np.float32)


def _tiers(paths: list[str]) -> tuple[list[TierFootprint], float]:
    import onnxruntime  # noqa: F401  (its libraries belong to the base, not to the first tier)

    from cascade.backends import open_model
    from cascade.policy import read_policy

    gc.collect()
    base, _ = rss_mb()
    out: list[TierFootprint] = []
    held = []  # keep every session alive: each delta is that session's own memory
    for path in paths:
        loaded = read_policy(path)
        for name, tier in loaded.policy.tiers.items():
            if tier.is_remote:
                out.append(TierFootprint(loaded.policy.name, name, tier.model, True, None, None))
                continue
            file = loaded.model_path(name)
            before, _ = rss_mb()
            model = open_model(file, providers=tier.providers)
            model.predict_sync(_probe(model.input_spec))  # type: ignore[attr-defined]
            held.append(model)
            after, _ = rss_mb()
            out.append(
                TierFootprint(
                    policy=loaded.policy.name,
                    tier=name,
                    model=str(file),
                    remote=False,
                    file_mb=file.stat().st_size / _MB,
                    session_mb=max(0.0, after - before),
                )
            )
    return out, base


def measure_process(paths: list[str]) -> dict[str, float]:
    """Run in a fresh process: the edge app as served, one request per policy, its RSS."""
    import asyncio

    import uvicorn  # noqa: F401  (the edge server's own memory counts)

    from cascade.catalog import resolve_tiers
    from cascade.edge._runner import EdgeSettings, build_edge_app
    from cascade.policy import read_policy
    from cascade.serving import ServedModel

    app = build_edge_app(EdgeSettings(policies=paths))
    caps = {}  # the dearest local tier of each policy: the probe never leaves the process
    for path in paths:
        loaded = read_policy(path)
        costs = {n: t.cost for n, t in resolve_tiers(loaded, remote=True).items()
                 if not loaded.policy.tiers[n].is_remote}  # fmt: skip
        caps[loaded.policy.name] = max(costs, key=costs.__getitem__)

    async def one_each() -> None:
        for name, served in app.service.models.items():
            rows = _probe(served.spec, rows=1 if isinstance(served, ServedModel) else 8)
            if isinstance(served, ServedModel):
                await served.infer(rows, deadline_ms=None, max_tier=caps[name])
            else:
                await served.ranker.rank(rows)
            await served.aclose()

    asyncio.run(one_each())
    current, peak = rss_mb()
    return {"process_mb": current, "peak_mb": peak}


def measure_footprint(paths: list[str], *, budget_mb: float | None = None) -> Footprint:
    """Measure ``paths`` (policy files): per tier here, the whole edge process in a child.

    Remote tiers are not called: a footprint must not depend on the network, so the probe
    requests are capped at the dearest local tier.

    Example::

        footprint = measure_footprint(["policies/covertype-edge.yaml"], budget_mb=400)
        print(format_footprint(footprint))
    """
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy

    for path in paths:
        ensure_models(read_policy(path), progress=False)
    tiers, base = _tiers(paths)
    code = "import json, sys; from cascade.bench._footprint import measure_process; " \
           "print(json.dumps(measure_process(sys.argv[1:])))"  # fmt: skip
    child = subprocess.run(
        [sys.executable, "-c", code, *[str(Path(p).resolve()) for p in paths]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        raise RuntimeError(f"measuring the edge process failed:\n{child.stderr[-2000:]}")
    whole = json.loads(child.stdout.strip().splitlines()[-1])
    disk = sum(t.file_mb or 0.0 for t in tiers)
    notes = [] if not any(t.remote for t in tiers) else [
        "remote tiers hold no memory here: only pooled connections (their calls are not made)"
    ]  # fmt: skip
    return Footprint(tiers=tiers, base_mb=base, process_mb=whole["process_mb"],
                     peak_mb=whole["peak_mb"], disk_mb=disk, budget_mb=budget_mb,
                     notes=notes)  # fmt: skip


def format_footprint(footprint: Footprint) -> str:
    """The footprint as a table and a summary line."""
    from cascade._table import table

    rows = []
    for t in footprint.tiers:
        model = t.model if t.remote else Path(t.model).name
        rows.append([
            t.policy, t.tier, model,
            "remote" if t.file_mb is None else f"{t.file_mb:.3f}",
            "-" if t.session_mb is None else f"{t.session_mb:.1f}",
        ])  # fmt: skip
    lines = [table(["policy", "tier", "model", "file MB", "session MB"], rows), ""]
    lines.append(f"disk: {footprint.disk_mb:.2f} MB of model files")
    lines.append(f"this process before any session: {footprint.base_mb:.1f} MB RSS")
    verdict = ""
    if footprint.budget_mb is not None:
        ok = "ok" if footprint.within_budget else "OVER"
        verdict = f"; budget {footprint.budget_mb:g} MB: {ok}"
    lines.append(
        f"edge process (one request per policy): {footprint.process_mb:.1f} MB RSS, "
        f"peak {footprint.peak_mb:.1f} MB{verdict}"
    )
    lines += [f"note: {note}" for note in footprint.notes]
    return "\n".join(lines)
