"""`cascade models build --data T.csv --text-column` builds text tiers and a calibrated policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.cli import main
from cascade.policy import read_policy
from cascade.zoo import read_dataset


def test_a_users_text_table_gets_tiers_a_calibrated_policy_and_an_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tokenizers")
    data = read_dataset("clinc150")
    intents = [data.classes.index(c) for c in data.classes[:40]]  # 4,000 rows
    keep = np.isin(data.train.y, intents)
    frame = pd.DataFrame({
        "text": np.asarray(data.train.X)[keep],
        "intent": [data.classes[i] for i in np.asarray(data.train.y)[keep]],
    })  # fmt: skip
    table = tmp_path / "intents.csv"
    frame.to_csv(table, index=False)
    out = tmp_path / "models"
    code = main(["models", "build", "--data", str(table), "--text-column", "text",
                 "--label-column", "intent", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "wrote a calibrated policy" in capsys.readouterr().out
    policy = read_policy(out / "intents.yaml").policy
    assert policy.provenance is not None
    assert policy.provenance.target == {"relative_accuracy": 0.99}
    assert main(["evaluate", str(out / "intents.yaml"), "--data", str(table), "--text-column",
                 "text", "--label-column", "intent", "--json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["name"] == "intents"
    assert {"always-tiny", "always-small", "always-large"} <= {r["name"] for r in rows}
    assert all({"accuracy", "relative_accuracy", "relative_cost"} <= set(r) for r in rows)
