"""`calibrate --from-log` on shifted live traffic: does the recalibrated policy meet the
target on held-back shifted rows, and at what cost beside the policy that served?

    python benchmarks/from_log_shift.py [--dataset clinc150] [--rows-per-request 10]
    python benchmarks/from_log_shift.py --dataset covertype --wilderness 1
    python benchmarks/from_log_shift.py --dataset covertype --prior 5=0.1
    python benchmarks/from_log_shift.py --dataset clinc150 --prior oos=0.5

The shipped policy (calibrated on its calibration split: CLINC150 3 % out of scope) serves
the test split (18 % out of scope: the shift the README measures), or with covertype the
test rows of one wilderness area (``--wilderness K``, one-hot column 10 + K), or a label
(prior) shift of the test split (``--prior NAME=SHARE,...``: see :func:`prior_sample`; after
``--wilderness`` when both are given), in-process through ``InferenceService`` with a
``log`` section, requests with ids; true labels go to the feedback route for every request.
The log is then fed to ``calibrate_from_log`` twice, written nowhere: with the feedback (true
labels), and with the feedback lines removed (every row labelled by the top tier's answer).
Each time the seeded half held back scores the serving and the recalibrated policy against
the **true** labels: relative accuracy (against always-<top> on the same rows) and relative
cost.
Writes ``benchmarks/results/from_log_shift-<dataset>[-wilderness<K>][-prior-<NAME>=<SHARE>...]
.json``.

Only test rows are served: the shipped policy was calibrated on the calibration split and its
tiers were trained on the train split, so neither may stand in for unseen traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_prior(text: str) -> dict[str, float]:
    """``NAME=SHARE,...`` (class names as the dataset spells them) as ``{name: share}``.

    >>> parse_prior("5=0.1, 1=0.8")
    {'5': 0.1, '1': 0.8}
    """
    shares: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or name in shares:
            raise ValueError(f"--prior: expected NAME=SHARE,... with distinct names, got {text!r}")
        share = float(value)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"--prior: share of {name!r} must lie in [0, 1], got {share:g}")
        shares[name] = share
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ValueError(f"--prior: shares sum to {sum(shares.values()):g}, more than 1")
    return shares


def prior_sample(
    y: np.ndarray, classes: Sequence[str], shares: Mapping[str, float], seed: int
) -> np.ndarray:
    """Row indices of ``y`` (class indices into ``classes``) drawn without replacement, so that
    each named class makes up its ``share`` of the rows and the other classes present share
    the rest in their proportions in ``y``; as many rows as the scarcest class allows (all of
    its rows are drawn). Counts are rounded by largest remainder, so they sum to that many
    rows; the indices come back in a seeded random order.

    >>> y = np.array([0] * 10 + [1] * 90)
    >>> np.bincount(y[prior_sample(y, ["a", "b"], {"a": 0.5}, seed=0)]).tolist()
    [10, 10]
    """
    unknown = sorted(set(shares) - set(classes))
    if unknown:
        raise ValueError(f"--prior: no class {unknown} (classes: {', '.join(classes)})")
    available = np.bincount(y, minlength=len(classes)).astype(float)
    target = np.zeros(len(classes))
    named = np.zeros(len(classes), dtype=bool)
    for name, share in shares.items():
        target[classes.index(name)] = share
        named[classes.index(name)] = True
    if np.any(named & (target > 0) & (available == 0)):
        raise ValueError("--prior: a class given a share has no rows to draw")
    others = ~named & (available > 0)
    rest = 1.0 - target.sum()
    if rest > 1e-9 and not others.any():
        raise ValueError("--prior: every class present is named, so the shares must sum to 1")
    if others.any():
        target[others] = max(rest, 0.0) * available[others] / available[others].sum()
    drawn = target > 0
    n = int(np.floor(np.min(available[drawn] / target[drawn]) + 1e-9))
    exact = target * n
    counts = np.minimum(np.floor(exact + 1e-9), available).astype(int)
    short = n - int(counts.sum())
    room = np.flatnonzero(counts < available)
    by_remainder = room[np.argsort(-(exact[room] - counts[room]), kind="stable")]
    counts[by_remainder[:short]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in enumerate(counts)
              if k > 0]  # fmt: skip
    return np.asarray(rng.permutation(np.concatenate(picked)), dtype=np.intp)


def _serve_and_log(policy: Path, X: np.ndarray, y: np.ndarray, size: int, text: bool) -> None:
    from cascade.serving import InferenceService, PolicyText, ServedModel

    service = InferenceService(max_rows=4096)
    service.apply_policies([PolicyText(str(policy), policy.read_text())], remote=lambda n: {})
    assert not service.reload_errors, service.reload_errors
    (name,) = service.models
    served = service.models[name]
    assert isinstance(served, ServedModel)
    classes = served.classes

    async def post(path: str, document: dict[str, Any]) -> None:
        raw = json.dumps(document).encode()

        async def read() -> bytes:
            return raw

        reply = await service.handle("POST", path, {}, read)
        assert reply.status == 200, reply.body[:300]

    async def run() -> None:
        for k, start in enumerate(range(0, len(X), size)):
            rows = X[start : start + size]
            data = [str(t) for t in rows] if text else np.asarray(rows).ravel().tolist()
            shape = [len(rows)] if text else list(np.asarray(rows).shape)
            tensor = {"name": "text" if text else "input", "shape": shape,
                      "datatype": "BYTES" if text else "FP32", "data": data}  # fmt: skip
            await post(f"/v2/models/{name}/infer", {"id": f"q{k}", "inputs": [tensor]})
            labels = [classes[int(v)] if classes else int(v) for v in y[start : start + size]]
            await post(f"/v2/models/{name}/feedback", {"id": f"q{k}", "labels": labels})
            if k % 50 == 0:
                await asyncio.sleep(0.06)  # let the writer keep up (its queue is bounded)
        for served in service.models.values():
            await served.aclose()

    asyncio.run(run())


def _truth(result: Any, evaluator: Any, policy: Any, y_true: np.ndarray) -> dict[str, float]:
    """Relative accuracy (true labels, against always-<top>) and relative cost of ``policy``
    on the held-back rows."""
    held = result.split.held_back
    return _score(evaluator, policy, result.top, result.rows.X[held], y_true[held])


def _score(evaluator: Any, policy: Any, top_tier: str, X: Any, y: np.ndarray) -> dict[str, float]:
    from cascade.policy import ChainStep, ConfidenceRouting

    top = ConfidenceRouting(kind="confidence", chain=[ChainStep(tier=top_tier)])
    reference = evaluator.replay(policy.model_copy(update={"routing": top}), X)
    replayed = evaluator.replay(policy, X)
    row = evaluator.summarise(
        "x", policy, replayed, y,
        reference_accuracy=float((reference.labels == y).mean()),
        reference_cost=evaluator.costs[top_tier],
    )  # fmt: skip
    return {"relative_accuracy": row.relative_accuracy, "relative_cost": row.relative_cost,
            "accuracy": row.accuracy}  # fmt: skip


def _draws(
    evaluator: Any, loaded: Any, target: Any, pool: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str], prior: Mapping[str, float], split: Any, count: int,
) -> dict[str, Any]:  # fmt: skip
    """The served experiment repeated offline on ``count`` seeded draws of the same mix (seeds
    0 .. count-1; true labels; the same calibration / held-back split of the draw as the
    served log): how often the serving policy misses the target on the held-back rows, how
    often recalibration is certified and meets it. Replaying a draw gives the served answers
    (the engine is the one the server runs), so no draw needs serving."""
    from cascade.evaluate import calibrate_policy

    X_pool, y_pool = pool
    goal = target.relative_accuracy
    runs: list[dict[str, Any]] = []
    for seed in range(count):
        picked = prior_sample(y_pool, classes, prior, seed)
        cal, held = picked[split.calibration], picked[split.held_back]
        result = calibrate_policy(loaded, X_pool[cal], y_pool[cal], target=target, write=False,
                                  evaluator=evaluator, data_label=f"draw {seed}")  # fmt: skip
        serving = _score(evaluator, loaded.policy, evaluator.reference, X_pool[held], y_pool[held])
        after = (
            _score(evaluator, result.policy, evaluator.reference, X_pool[held], y_pool[held])
            if result.met
            else None
        )
        runs.append({"seed": seed, "serving": serving, "recalibrated": after})
    recal = [r["recalibrated"] for r in runs if r["recalibrated"] is not None]

    def mean(rows: list[dict[str, float]], key: str) -> float | None:
        return float(np.mean([r[key] for r in rows])) if rows else None

    return {
        "draws": count,
        "serving_missed": sum(r["serving"]["relative_accuracy"] < goal for r in runs),
        "recalibrated_certified": len(recal),
        "recalibrated_met": sum(r["relative_accuracy"] >= goal for r in recal),
        "serving_mean": {k: mean([r["serving"] for r in runs], k)
                         for k in ("relative_accuracy", "relative_cost")},
        "recalibrated_mean": {k: mean(recal, k) for k in ("relative_accuracy", "relative_cost")},
        "runs": runs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="clinc150")
    parser.add_argument("--rows-per-request", type=int, default=10)
    parser.add_argument("--wilderness", type=int, choices=range(4), default=None,
                        help="covertype: only the test rows of this wilderness area")  # fmt: skip
    parser.add_argument("--prior", default=None, metavar="NAME=SHARE,...",
                        help="label shift: resample the test rows without replacement so that "
                        "each named class makes up SHARE of them, the other classes the rest "
                        "in their test proportions (e.g. covertype 5=0.1, clinc150 oos=0.5)",
                        )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the --prior draw")
    parser.add_argument("--draws", type=int, default=0, metavar="N",
                        help="with --prior: also repeat the experiment offline on N seeded draws "
                        "of the mix (seeds 0..N-1, true labels) and count misses and restores",
                        )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()
    try:
        prior = None if args.prior is None else parse_prior(args.prior)
    except ValueError as error:
        parser.error(str(error))

    from cascade._table import table
    from cascade.evaluate import Evaluator, Target, calibrate_from_log, ensure_models
    from cascade.policy import read_policy
    from cascade.zoo import read_dataset

    source = ROOT / "policies" / f"{args.dataset}.yaml"
    shipped = read_policy(source)
    ensure_models(shipped, progress=False)
    assert shipped.policy.provenance is not None
    target = Target(
        relative_accuracy=shipped.policy.provenance.target["relative_accuracy"],
        confidence=shipped.policy.provenance.confidence or 0.95,
    )
    dataset = read_dataset(args.dataset)
    test = dataset.test
    X, y = np.asarray(test.X), np.asarray(test.y)
    if args.wilderness is not None:
        area = X[:, 10 + args.wilderness] == 1
        X, y = X[area], y[area]
    pool = (X, y)
    test_shares = np.bincount(y, minlength=len(dataset.classes)) / len(y)
    shift: dict[str, Any] | None = None
    if prior is not None:
        try:
            picked = prior_sample(y, dataset.classes, prior, args.seed)
        except ValueError as error:
            parser.error(str(error))
        X, y = X[picked], y[picked]
        served_shares = np.bincount(y, minlength=len(dataset.classes)) / len(y)
        shift = {"prior": prior, "seed": args.seed, "rows": len(y),
                 "replacement": False,
                 "shares": {c: {"test": round(float(test_shares[k]), 6),
                                "served": round(float(served_shares[k]), 6)}
                            for k, c in enumerate(dataset.classes) if c in prior}}  # fmt: skip
    text = np.asarray(X).dtype == object or isinstance(X[0], str)
    rows: list[dict[str, Any]] = []
    draws: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as work:
        policy = Path(work) / source.name
        body = source.read_text().replace("placement: deployment", "placement: inline")
        body = body.replace("models/", f"{source.parent}/models/")
        policy.write_text(f"allow_outside_paths: true\n{body}log: {{path: {work}/logs}}\n")
        _serve_and_log(policy, X, y, args.rows_per_request, text)
        log = Path(work) / "logs" / f"{shipped.policy.name}.jsonl"
        plain = Path(work) / "no-feedback" / log.name
        plain.parent.mkdir()
        plain.write_text("".join(line for line in log.read_text().splitlines(keepends=True)
                                 if '"kind":"feedback"' not in line))  # fmt: skip
        loaded = read_policy(policy)
        evaluator = Evaluator(loaded)
        for labels, path in (("feedback (true labels)", log), ("top tier only", plain)):
            result = calibrate_from_log(loaded, [path], target=target, write=False,
                                        evaluator=evaluator)  # fmt: skip
            assert len(result.rows.X) == len(y), "rows were dropped from the log"
            held_shares = {c: round(float(np.mean(y[result.split.held_back] == k)), 6)
                           for k, c in enumerate(dataset.classes)
                           if prior is not None and c in prior}  # fmt: skip
            serving = _truth(result, evaluator, loaded.policy, y)
            after = (
                _truth(result, evaluator, result.calibration.policy, y)
                if result.calibration.met
                else None
            )
            if draws is None and prior is not None and args.draws > 0:
                draws = _draws(evaluator, loaded, target, pool, dataset.classes, prior,
                               result.split, args.draws)  # fmt: skip
            rows.append({"labels": labels, "rows": len(y), "feedback_rows": result.rows.labelled,
                         "held_back": len(result.split.held_back), "serving": serving,
                         "held_back_shares": held_shares,
                         "recalibrated": after,
                         "chosen": None if result.calibration.chosen is None
                         else result.calibration.chosen.params})  # fmt: skip
    goal = target.relative_accuracy
    assert goal is not None
    body_rows = []
    for r in rows:
        s, a = r["serving"], r["recalibrated"]
        body_rows.append([
            r["labels"], f"{r['held_back']:,}",
            f"{s['relative_accuracy']:.4f}", f"{s['relative_cost']:.3f}",
            "-" if a is None else f"{a['relative_accuracy']:.4f}",
            "-" if a is None else f"{a['relative_cost']:.3f}",
            "-" if a is None else ("yes" if a["relative_accuracy"] >= goal else "no"),
        ])  # fmt: skip
    where = "" if args.wilderness is None else f" (wilderness area {args.wilderness} only)"
    if shift is not None:
        mix = ", ".join(f"{c} {v['served']:.1%} (test split {v['test']:.1%})"
                        for c, v in shift["shares"].items())  # fmt: skip
        where += (f" (label shift, drawn without replacement, seed {args.seed}: {mix}; "
                  "other classes in their test proportions)")  # fmt: skip
    print(f"{args.dataset}{where}: {len(y):,} test rows served by the shipped policy "
          f"(calibrated on its calibration split); target relative accuracy {goal:g} at confidence "
          f"{target.confidence:g}; held-back rows scored against the true labels")  # fmt: skip
    print(table(["recalibrated on", "held back", "serving rel acc", "serving rel cost",
                 "recal rel acc", "recal rel cost", "meets target"], body_rows))  # fmt: skip
    if draws is not None:
        s, a = draws["serving_mean"], draws["recalibrated_mean"]
        print(f"\nover {draws['draws']} seeded draws of this mix (seeds 0..{draws['draws'] - 1}, "
              "true labels, replayed offline with the served split): the serving policy missed "
              f"the target on {draws['serving_missed']}; the recalibrated one was certified on "
              f"{draws['recalibrated_certified']} and met the target on "
              f"{draws['recalibrated_met']}; mean rel acc {s['relative_accuracy']:.4f} serving, "
              + ("-" if a["relative_accuracy"] is None else f"{a['relative_accuracy']:.4f}")
              + f" recalibrated; mean rel cost {s['relative_cost']:.3f} serving, "
              + ("-" if a["relative_cost"] is None else f"{a['relative_cost']:.3f}")
              + " recalibrated")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.wilderness is None else f"-wilderness{args.wilderness}"
    if prior is not None:
        suffix += "-prior-" + "-".join(f"{c}={v:g}" for c, v in prior.items())
        suffix += "" if args.seed == 0 else f"-seed{args.seed}"
    out = args.out / f"from_log_shift-{args.dataset}{suffix}.json"
    document = {"dataset": args.dataset, "wilderness": args.wilderness, "shift": shift,
                "target": target.as_dict(),
                "confidence": target.confidence, "runs": rows, "draws": draws}  # fmt: skip
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
