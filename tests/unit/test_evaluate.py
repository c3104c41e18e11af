"""Offline evaluation and calibration on the real digits tiers, against direct numpy math."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cascade.audit import DriftReference, DriftWindow
from cascade.backends import OnnxModel
from cascade.catalog import ModelCard, ModelDriftWarning
from cascade.cli import main
from cascade.evaluate import (
    Evaluator,
    Point,
    Target,
    calibrate_policy,
    loss_upper_bound,
    pareto_front,
)
from cascade.evaluate._data import labelled_rows, labelled_split, model_classes
from cascade.policy import read_policy
from cascade.routing import calibrate, confidence
from cascade.zoo import read_dataset
from cascade.zoo.datasets import read_table, read_table_rows

Zoo = tuple[Path, list[ModelCard]]

CHAIN = """\
# yaml-language-server: $schema=policy.schema.json
# a comment that calibration must keep
name: {name}
tiers:
  tiny: {{model: tiny.onnx}}       # the cheap one
  small: {{model: small.onnx}}
  large: {{model: large.onnx, placement: deployment}}
routing:
  kind: {kind}
  chain:
    - tier: tiny
      threshold: {threshold}
    - tier: large
"""


def _write(directory: Path, text: str, name: str = "p.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_evaluate_agrees_with_a_direct_numpy_cascade(policy_dir: Path) -> None:
    policy = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.93))
    loaded = read_policy(policy)
    test = read_dataset("digits").test
    evaluator = Evaluator(loaded)
    rows = {row.name: row for row in evaluator.evaluate(test.X, test.y)}

    tiny = evaluator.probabilities("tiny", test.X)
    large = evaluator.probabilities("large", test.X)
    sure = tiny.max(axis=1) >= 0.93
    predicted = np.where(sure, tiny.argmax(axis=1), large.argmax(axis=1))
    costs = {c.name: c.relative_cost for c in map(_card, ("tiny", "large"), [policy_dir] * 2)}
    expected_cost = costs["tiny"] + (~sure).mean() * costs["large"]

    row = rows["d"]
    assert row.accuracy == pytest.approx(float((predicted == test.y).mean()))
    assert row.escalation_rate == pytest.approx(float((~sure).mean()))
    assert row.relative_cost == pytest.approx(expected_cost)
    assert row.tier_rates == pytest.approx({"tiny": 1.0, "large": float((~sure).mean())})
    assert rows["always-large"].relative_accuracy == 1.0
    assert rows["always-large"].relative_cost == pytest.approx(1.0)
    assert [r for r in rows] == [
        "d",
        "oracle (labels known)",
        "always-tiny",
        "always-small",
        "always-large",
    ]
    # the oracle by hand: tiny answers, and just enough rows large fixes escalate to reach
    # the policy's accuracy; each row's share of its saving at the row's own accuracy
    tiny_ok, large_ok = tiny.argmax(axis=1) == test.y, large.argmax(axis=1) == test.y
    need = int(np.ceil(row.relative_accuracy * large_ok.sum() - tiny_ok.sum() - 1e-9))
    floor = rows["oracle (labels known)"]
    assert floor.escalation_rate == pytest.approx(max(need, 0) / len(test.y))
    assert floor.relative_cost == pytest.approx(costs["tiny"] + floor.escalation_rate)
    assert floor.relative_accuracy == pytest.approx(row.relative_accuracy, abs=1 / len(test.y))
    assert floor.relative_cost <= row.relative_cost
    assert row.oracle_share == pytest.approx((1 - row.relative_cost) / (1 - floor.relative_cost))
    assert rows["always-large"].oracle_share == pytest.approx(0.0)
    assert rows["always-tiny"].oracle_share == pytest.approx(1.0)  # its own accuracy: the floor
    assert [r.name for r in evaluator.evaluate(test.X, test.y, with_oracle=False)] == [
        "d",
        "always-tiny",
        "always-small",
        "always-large",
    ]


def _card(name: str, directory: Path) -> ModelCard:
    return ModelCard.model_validate_json((directory / f"{name}.card.json").read_text())


def test_calibration_writes_thresholds_with_provenance_and_keeps_comments(
    policy_dir: Path,
) -> None:
    path = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.5))
    loaded = read_policy(path)
    cal = read_dataset("digits").calibration
    evaluator = Evaluator(loaded)
    result = calibrate_policy(
        loaded, cal.X, cal.y, target=Target(relative_accuracy=0.99), data_label="digits",
        evaluator=evaluator,
    )  # fmt: skip
    assert result.met and result.chosen is not None
    assert result.bound is not None and result.allowed_loss is not None
    assert result.bound <= result.allowed_loss
    text = path.read_text()
    assert "# a comment that calibration must keep" in text and "# the cheap one" in text
    assert text.index("name:") < text.index("tiers:") < text.index("routing:")
    reloaded = read_policy(path)
    step = reloaded.policy.routing.chain[0]  # type: ignore[union-attr]
    assert step.threshold == pytest.approx(result.chosen.params["tiny"], abs=1e-6)
    assert step.calibration is not None and step.calibration.method == "temperature"
    provenance = reloaded.policy.provenance
    assert provenance is not None
    assert provenance.target == {"relative_accuracy": 0.99}
    assert provenance.cards["large"] == _card("large", policy_dir).sha256
    # the drift reference: the first tier's confidence on the calibration rows, which the
    # engine's own first step reads the same on the same rows (a drift score of ~0)
    reference = provenance.reference
    assert reference is not None and (reference.tier, reference.measure) == ("tiny", "max_prob")
    assert reference.rows == len(cal.X) and sum(reference.shares) == pytest.approx(1, abs=1e-5)
    served = Evaluator(reloaded).replay(reloaded.policy, cal.X)
    window = DriftWindow(
        DriftReference("tiny", "max_prob", tuple(reference.edges), tuple(reference.shares),
                       reference.rows),
        size=len(cal.X), min_rows=1,
    )  # fmt: skip
    window.add([d.steps[0].confidence for d in served.decisions])
    assert window.score() == pytest.approx(0, abs=1e-6)
    # The engine, replaying the written policy, reproduces what the search simulated.
    replay = Evaluator(reloaded).evaluate(cal.X, cal.y)[0]
    assert replay.relative_accuracy == pytest.approx(result.chosen.relative_accuracy)
    assert replay.relative_cost == pytest.approx(result.chosen.relative_cost)


def test_the_margin_refuses_what_few_rows_cannot_certify(policy_dir: Path) -> None:
    path = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.5))
    before = path.read_text()
    cal = read_dataset("digits").calibration
    result = calibrate_policy(
        read_policy(path), cal.X, cal.y, data_label="digits",
        target=Target(relative_accuracy=0.999, confidence=0.95),
    )  # fmt: skip
    assert not result.met
    assert "cannot certify the target at confidence 0.95 on 359 calibration rows" in result.notes[0]
    assert path.read_text() == before
    assert result.frontier  # the frontier is still there to look at


def test_cost_limit_without_accuracy_target_picks_the_most_accurate(policy_dir: Path) -> None:
    path = _write(policy_dir, CHAIN.format(name="d", kind="sla", threshold=0.5))
    cal = read_dataset("digits").calibration
    result = calibrate_policy(
        read_policy(path), cal.X, cal.y, data_label="digits", write=False,
        target=Target(max_relative_cost=0.1), method="isotonic",
    )  # fmt: skip
    assert result.chosen is not None and result.chosen.relative_cost <= 0.1
    feasible = [p for p in result.points if p.relative_cost <= 0.1]
    assert result.chosen.relative_accuracy == max(p.relative_accuracy for p in feasible)


def test_complexity_calibration_trains_a_scorer_and_fits_bands(policy_dir: Path) -> None:
    path = _write(
        policy_dir,
        """\
name: cx
tiers:
  tiny: {model: tiny.onnx}
  small: {model: small.onnx}
  large: {model: large.onnx}
routing:
  kind: complexity
  scorer: {name: onnx, model: tiny.onnx}   # replaced by calibration
  bands:
    - {tier: tiny, below: 0.3}
    - {tier: small, below: 0.6}
    - {tier: large}
""",
    )
    cal = read_dataset("digits").calibration
    result = calibrate_policy(
        read_policy(path), cal.X, cal.y, data_label="digits",
        target=Target(relative_accuracy=0.95, confidence=0.8),
    )  # fmt: skip
    assert result.met
    assert (policy_dir / "cx.complexity.onnx").is_file()
    reloaded = read_policy(path)
    routing = reloaded.policy.routing
    assert routing.kind == "complexity"
    assert routing.scorer.model == "cx.complexity.onnx"
    bounds = [b.below for b in routing.bands[:-1]]
    assert all(b is not None for b in bounds) and bounds == sorted(bounds)
    row = Evaluator(reloaded).evaluate(cal.X, cal.y)[0]
    assert row.relative_cost > 0 and 0 < row.accuracy <= 1
    # calibrate says plainly whether a confidence chain over the same tiers does better
    (verdict,) = [n for n in result.notes if "complexity routing" in n]
    costs = []  # every confidence chain over the bands' tiers that ends at large
    for chain in (["tiny", "small"], ["tiny"], ["small"]):
        steps = "".join(f"    - {{tier: {t}, threshold: 0.5}}\n" for t in chain)
        path = _write(policy_dir, CHAIN3.format(steps=steps), name="chain.yaml")
        alternative = calibrate_policy(
            read_policy(path), cal.X, cal.y, data_label="digits", write=False,
            target=Target(relative_accuracy=0.95, confidence=0.8),
        )  # fmt: skip
        if alternative.chosen is not None:
            costs.append((alternative.chosen.relative_cost, " -> ".join([*chain, "large"])))
    assert costs and result.chosen is not None
    cheapest, over = min(costs)
    assert f"{cheapest:.3f}" in verdict and over in verdict, (verdict, costs)
    dominated = cheapest <= result.chosen.relative_cost
    assert ("DOMINATED" in verdict) == dominated, verdict
    assert ("earns its place" in verdict) == (not dominated), verdict


CHAIN3 = """\
name: chain
tiers:
  tiny: {{model: tiny.onnx}}
  small: {{model: small.onnx}}
  large: {{model: large.onnx}}
routing:
  kind: confidence
  chain:
{steps}    - {{tier: large}}
"""


def test_speculative_policy_evaluates_and_calibrates(policy_dir: Path) -> None:
    path = _write(
        policy_dir,
        """\
name: sp
tiers:
  tiny: {model: tiny.onnx}
  large: {model: large.onnx}
routing: {kind: speculative, cheap: tiny, expensive: large, threshold: 0.9}
""",
    )
    test = read_dataset("digits").test
    evaluator = Evaluator(read_policy(path))
    row = evaluator.evaluate(test.X, test.y)[0]
    # Every request starts both tiers: cost is at least the cheap tier plus a share of large.
    assert row.relative_cost >= evaluator.costs["tiny"]
    tiny = evaluator.probabilities("tiny", test.X)
    assert row.escalation_rate == pytest.approx(float((tiny.max(axis=1) < 0.9).mean()))


def test_model_drift_is_warned(policy_dir: Path) -> None:
    path = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.9))
    text = path.read_text() + (
        "provenance:\n  dataset: digits\n  split: calibration\n  date: '2026-01-01'\n"
        "  target: {relative_accuracy: 0.99}\n  achieved: {}\n  confidence: 0.95\n"
        "  cards: {large: '" + "0" * 64 + "'}\n"
    )
    path.write_text(text)
    with pytest.warns(ModelDriftWarning, match=r"tiers\.large: large\.onnx differs from the build"):
        Evaluator(read_policy(path))


def test_confidence_measures_used_by_calibration_match_the_engine() -> None:
    p = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    raw = confidence(p, "max_prob")
    assert raw == pytest.approx([0.7])
    assert calibrate(p, raw, None, "max_prob") == pytest.approx(raw)


def test_loss_bound_behaviour() -> None:
    zeros = np.zeros(1000, dtype=np.int8)
    assert loss_upper_bound(zeros, confidence=0.95) == pytest.approx(1 - 0.05 ** (1 / 1000))
    few = zeros.copy()
    few[:3] = 1  # too few events for the CLT: exact binomial bound on 3 losses
    assert loss_upper_bound(few, confidence=0.95) == pytest.approx(0.00774, abs=2e-4)
    many = np.r_[np.ones(30), -np.ones(20), np.zeros(950)].astype(np.int8)
    assert loss_upper_bound(many, confidence=0.95) > many.mean()
    assert loss_upper_bound(many, confidence=0.99) > loss_upper_bound(many, confidence=0.9)


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [
        Point(1.0, 1.0),
        Point(0.5, 0.99),
        Point(0.6, 0.98),
        Point(0.2, 0.95),
        Point(0.3, 0.9),
    ]
    assert [(p.relative_cost, p.relative_accuracy) for p in pareto_front(points)] == [
        (0.2, 0.95), (0.5, 0.99), (1.0, 1.0)
    ]  # fmt: skip


@dataclass(frozen=True)
class Wine:
    """Tiers built with `models build --data wine.csv`, a policy over them and the table."""

    directory: Path
    table: Path
    policy: Path
    frame: pd.DataFrame


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Wine:
    from sklearn.datasets import load_wine

    out = tmp_path_factory.mktemp("wine")
    frame = load_wine(as_frame=True).frame  # 178 rows, classes 0 (59), 1 (71), 2 (48)
    table = out / "wine.csv"
    frame.to_csv(table, index=False)
    assert main(["models", "build", "--data", str(table), "--label-column", "target",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    policy = _write(out, CHAIN.format(name="wine", kind="confidence", threshold=0.8))
    return Wine(out, table, policy, frame)


def _evaluate_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["evaluate", *argv, "--json", "--no-progress"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _large_accuracy(wine: Wine, frame: pd.DataFrame) -> float:
    """always-large's accuracy on ``frame``, straight from the ONNX file: wine's classes are
    0, 1, 2, so the target is the probability column."""
    X = frame.drop(columns="target").to_numpy(dtype=np.float32)
    return float((OnnxModel(wine.directory / "large.onnx").predict_sync(X).argmax(axis=1)
                  == frame["target"].to_numpy()).mean())  # fmt: skip


def test_cli_evaluate_json_and_users_own_table(
    wine: Wine, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(wine.policy), "--data", str(wine.table), "--label-column", "target"]
    rows = _evaluate_json(argv, capsys)
    assert [r["name"] for r in rows] == [
        "wine",
        "oracle (labels known)",
        "always-tiny",
        "always-small",
        "always-large",
    ]
    for row in rows:
        assert {"name", "accuracy", "relative_accuracy", "relative_cost", "escalation_rate",
                "oracle_share"} <= set(row)  # fmt: skip
    assert main(["evaluate", str(wine.policy)]) == 1
    assert "the policy names no `dataset`" in capsys.readouterr().err


def test_cli_evaluate_scores_a_users_file_whole_unless_a_split_is_asked(
    wine: Wine, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(wine.policy), "--data", str(wine.table), "--label-column", "target"]
    rows = _evaluate_json(argv, capsys)
    assert {(r["n"], r["data"], r["split"], r["rows"], r["data_rows"]) for r in rows} == {
        (178, str(wine.table), "all", 178, 178)
    }
    large = next(r for r in rows if r["name"] == "always-large")
    assert large["accuracy"] == pytest.approx(_large_accuracy(wine, wine.frame))

    split = _evaluate_json([*argv, "--split", "test"], capsys)
    assert {(r["n"], r["split"], r["data_rows"]) for r in split} == {(36, "test", 178)}
    test = read_table(wine.table, label_column="target").test
    assert Evaluator(read_policy(wine.policy)).evaluate(test.X, test.y)[-1].accuracy == (
        pytest.approx(next(r for r in split if r["name"] == "always-large")["accuracy"])
    )

    assert main(["evaluate", *argv, "--no-progress"]) == 0
    assert f"wine on {wine.table} (all 178 rows)\n" in capsys.readouterr().out
    assert main(["evaluate", *argv, "--split", "calibration", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"wine on {wine.table} (calibration split, 36 of 178 rows)\n" in out


def test_a_held_out_file_missing_classes_is_scored_in_the_models_class_order(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Classes 1 and 2 only, and 3 rows of class 2: too few to split, and the table's own
    # sorted labels (1 -> 0, 2 -> 1) would not line up with the model's columns.
    held_out = pd.concat([wine.frame[wine.frame.target == 1],
                          wine.frame[wine.frame.target == 2].head(3)])  # fmt: skip
    path = tmp_path / "held_out.csv"
    held_out.to_csv(path, index=False)
    argv = [str(wine.policy), "--data", str(path), "--label-column", "target"]
    rows = _evaluate_json(argv, capsys)
    large = next(r for r in rows if r["name"] == "always-large")
    assert (large["n"], large["split"]) == (74, "all")
    assert large["accuracy"] == pytest.approx(_large_accuracy(wine, held_out))
    assert large["accuracy"] > 0.9

    assert main(["evaluate", *argv, "--split", "test"]) == 1  # a split still needs 5 a class
    assert "class '2' has 3 rows in label column 'target'" in capsys.readouterr().err
    held_out.assign(target=held_out.target.replace(2, 7)).to_csv(path, index=False)
    assert main(["evaluate", *argv]) == 1
    assert (f"{path}: label column 'target' has a label the model does not know: '7' "
            "(its classes: '0', '1', '2')") in capsys.readouterr().err  # fmt: skip


def test_whole_and_split_reads_encode_labels_alike(wine: Wine, tmp_path: Path) -> None:
    whole = read_table_rows(wine.table, label_column="target")
    ds = read_table(wine.table, label_column="target")
    assert whole.classes == ds.classes == ("0", "1", "2") and len(whole) == 178
    np.testing.assert_array_equal(whole.rows.y, wine.frame["target"].to_numpy())
    parts = (ds.train, ds.calibration, ds.test)
    joined = {(x.tobytes(), int(y)) for p in parts for x, y in zip(p.X, p.y, strict=True)}
    assert joined == {(x.tobytes(), int(y)) for x, y in zip(whole.rows.X, whole.rows.y,
                                                            strict=True)}  # fmt: skip

    # Into a model's class order: the split's rows do not move, only their codes.
    order = ("2", "0", "1")
    mapped = read_table(wine.table, label_column="target", classes=order)
    np.testing.assert_array_equal(mapped.test.X, ds.test.X)
    np.testing.assert_array_equal(mapped.test.y, np.array([1, 2, 0])[ds.test.y])
    mapped_whole = read_table_rows(wine.table, label_column="target", classes=order)
    np.testing.assert_array_equal(mapped_whole.rows.y, np.array([1, 2, 0])[whole.rows.y])
    # Labels that read back as floats still match integer classes.
    floats = tmp_path / "floats.csv"
    wine.frame.assign(target=wine.frame.target.astype(float)).to_csv(floats, index=False)
    as_floats = read_table_rows(floats, label_column="target", classes=("0", "1", "2"))
    np.testing.assert_array_equal(as_floats.rows.y, whole.rows.y)

    loaded = read_policy(wine.policy)
    assert model_classes(loaded) == ("0", "1", "2")
    rows = labelled_rows(loaded, split=None, data=wine.table, label_column="target")
    assert (rows.label, rows.rows, len(rows.y)) == (str(wine.table), "all 178 rows", 178)
    test = labelled_rows(loaded, split="test", data=wine.table, label_column="target")
    assert test.description == f"{wine.table} (test split, 36 of 178 rows)"
    assert labelled_split(loaded, split="test", data=wine.table,
                          label_column="target")[2] == f"{wine.table}/test"  # fmt: skip


def test_cli_calibrate_and_plan_say_which_rows_of_a_file_they_use(
    wine: Wine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", str(wine.table), "--label-column", "target", "--no-progress"]
    argv = ["calibrate", str(wine.policy), *data, "--target-relative-accuracy", "0.9",
            "--confidence", "0.5", "--dry-run", "--png", str(tmp_path / "f.png")]  # fmt: skip
    capsys.readouterr()
    main(argv)  # met or not, the heading says which rows were fitted on
    out = capsys.readouterr().out
    assert f"Pareto frontier on {wine.table} (calibration split, 36 of 178 rows); * = chosen" in out
    main([*argv, "--json"])
    document = json.loads(capsys.readouterr().out)
    assert (document["split"], document["rows"], document["data_rows"]) == ("calibration", 36, 178)

    assert main(["plan", str(wine.policy), *data, "--qps", "10"]) == 0
    assert f"share reaching measured on {wine.table}/calibration, 36 rows" in (
        capsys.readouterr().out
    )


def test_cli_calibrate_dry_run_leaves_the_file(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.5))
    path.write_text(path.read_text().replace("name: d\n", "name: d\ndataset: digits\n"))
    before = path.read_text()
    png = policy_dir / "front.png"
    argv = ["calibrate", str(path), "--target-relative-accuracy", "0.99", "--dry-run",
            "--png", str(png), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Pareto frontier on digits (calibration split, 359 of 1,797 rows); * = chosen" in out
    assert "thresholds not written (--dry-run)" in out
    assert path.read_text() == before
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_works_inside_a_running_event_loop(policy_dir: Path) -> None:
    import asyncio

    path = _write(policy_dir, CHAIN.format(name="d", kind="confidence", threshold=0.9))
    evaluator = Evaluator(read_policy(path))
    test = read_dataset("digits").test

    async def inside() -> float:  # as in a notebook cell, where a loop is already running
        return float((evaluator.replay(evaluator.loaded.policy, test.X).labels == test.y).mean())

    assert asyncio.run(inside()) == evaluator.evaluate(test.X, test.y)[0].accuracy


def test_complexity_scorer_outside_the_policy_folder_gets_an_absolute_path(
    policy_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("policy-elsewhere")
    text = (
        "name: far\nallow_outside_paths: true\ntiers:\n"
        + "".join(f"  {t}: {{model: {policy_dir / f'{t}.onnx'}}}\n" for t in ("tiny", "large"))
        + "routing:\n  kind: complexity\n  scorer: {name: onnx, model: "
        + str(policy_dir / "tiny.onnx")
        + "}\n  bands:\n    - {tier: tiny, below: 0.5}\n    - {tier: large}\n"
    )
    path = _write(elsewhere, text)
    cal = read_dataset("digits").calibration
    calibrate_policy(
        read_policy(path), cal.X, cal.y, data_label="digits",
        target=Target(relative_accuracy=0.9, confidence=0.8),
    )  # fmt: skip
    routing = read_policy(path).policy.routing
    assert routing.kind == "complexity"
    assert routing.scorer.model == str(policy_dir / "far.complexity.onnx")


def test_gear_plan_replays_candidates_and_writes_a_cheaper_ladder(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade.evaluate import plan_gears

    chain = CHAIN.format(name="d", kind="confidence", threshold=0.99)
    path = _write(policy_dir, chain.replace("name: d\n", "name: d\ndataset: digits\n"))
    calibration = read_dataset("digits").calibration
    plan = plan_gears(read_policy(path), calibration.X, calibration.y, capacity_rps=200,
                      deadline_ms=100)  # fmt: skip
    assert plan.full.relative_cost == 1.0
    names = [c.name for c in plan.candidates]
    assert names[:4] == ["shift-0.02", "shift-0.05", "shift-0.1", "shift-0.2"]
    assert names[4:] == ["tiny-only"]  # routed tiers but the dearest; small is not routed
    costs = [1.0, *(c.relative_cost for c in plan.chosen)]
    assert plan.chosen and all(b <= 0.8 * a for a, b in itertools.pairwise(costs))
    tiny_only = next(c for c in plan.candidates if c.name == "tiny-only")
    tiny = read_policy(path)
    assert tiny_only.accuracy == pytest.approx(
        float((Evaluator(tiny).probabilities("tiny", calibration.X).argmax(1)
               == calibration.y).mean())
    )  # fmt: skip
    depths = [g["queue_depth_at_least"] for g in plan.gears]
    assert depths[0] == 5 and depths == sorted(set(depths))  # 200/s * 0.1 s / 4

    argv = ["calibrate", str(path), "--gears", "--capacity", "200", "--deadline-ms", "100",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "gears written to" in capsys.readouterr().out
    assert [g.name for g in read_policy(path).policy.gears] == [c.name for c in plan.chosen]
    with pytest.raises(SystemExit) as usage:
        main(["calibrate", str(path), "--gears"])
    assert usage.value.code == 2
    assert "--gears needs --capacity RPS and --deadline-ms MS" in capsys.readouterr().err
