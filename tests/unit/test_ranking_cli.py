"""`cascade evaluate`, `calibrate` and `models build` on ranking policies (the LTR sample)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cascade.cli import main
from cascade.policy import read_policy
from cascade.ranking import ltr_queries, ndcg_at_k

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ltr_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ltr")
    policy = folder / "ltr.yaml"
    shutil.copy(ROOT / "policies" / "ltr.yaml", policy)
    assert main(["models", "build", "ltr", "--out", str(folder / "models" / "ltr"),
                 "--no-progress"]) == 0  # fmt: skip
    return policy


def test_evaluate_json_rows_agree_with_a_direct_computation(
    ltr_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(ltr_policy), "--json", "--n", "15"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["coarse-only", "fine-only", "policy N=12", "cascade N=15"]
    for row in rows:
        assert {"name", "ndcg_at_10", "relative_ndcg", "relative_cost", "recall_at_10"} <= set(row)
    fine = next(r for r in rows if r["name"] == "fine-only")
    assert fine["relative_ndcg"] == 1.0 and fine["relative_cost"] == 1.0
    # fine-only NDCG@10 by hand: fine's scores over every document, numpy only
    from cascade.backends import OnnxModel

    model = OnnxModel(ltr_policy.parent / "models" / "ltr" / "fine.onnx")
    values = [ndcg_at_k(model.predict_sync(q.features)[:, 0], q.relevance, k=10)
              for q in ltr_queries("test")]  # fmt: skip
    assert fine["ndcg_at_10"] == pytest.approx(np.nanmean(values), abs=1e-9)
    assert fine["queries"] == int(np.sum(~np.isnan(values)))


def test_calibrate_picks_n_with_a_margin_and_writes_it(
    ltr_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["calibrate", str(ltr_policy), "--target-relative-ndcg", "0.98", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    chosen = result["chosen"]
    assert chosen["lower_bound"] >= 0.98
    meeting = [p for p in result["points"] if p["lower_bound"] >= 0.98]
    assert chosen["relative_cost"] == min(p["relative_cost"] for p in meeting)
    policy = read_policy(ltr_policy).policy
    coarse = policy.stage("coarse")
    assert coarse is not None and coarse.keep == chosen["n"]
    assert policy.provenance is not None and policy.provenance.confidence == 0.95


def test_calibrate_a_ranking_policy_needs_an_ndcg_target(
    ltr_policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["calibrate", str(ltr_policy), "--dry-run"]) == 1
    assert "--target-relative-ndcg" in capsys.readouterr().err


def test_movielens_without_its_data_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["models", "build", "movielens", "--data", str(missing), "--out",
                 str(tmp_path / "m"), "--no-progress"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err
