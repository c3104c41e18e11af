"""Calibration data from a served policy's answer log (``cascade calibrate --from-log``).

The log (its format: ``cascade.serving._answer_log``) holds one line per answered row and
one per feedback label. Rows become labelled rows here:

* a row with a feedback label (joined by request id and row index) takes that label;
* every other row takes the answer of the policy's **top tier** (its most expensive one),
  run here on the logged input: the model and the answer the live audit's top-tier calls
  give, so relative accuracy is agreement with the top tier, as calibration measures it.

Only rows logged with their full input can be replayed: rows logged hashed or without
input are counted and left out. The rows are then split, seeded, into a calibration part
(the thresholds are fitted on it, with the usual margin) and a held-back part, on which the
recalibrated policy is checked beside the one that served.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cascade.errors import InputError
from cascade.evaluate._calibrate import (
    CalibrationResult,
    ConfidenceCalibration,
    Target,
    calibrate_policy,
)
from cascade.evaluate._replay import EvalRow, Evaluator
from cascade.policy import ChainStep, ConfidenceRouting, Policy, PolicyFile
from cascade.routing import BatchResult

__all__ = [
    "FromLogResult",
    "LogRows",
    "LogSplit",
    "calibrate_from_log",
    "label_log_rows",
    "read_answer_log",
    "split_log_rows",
]


@dataclass(frozen=True, eq=False)
class LogRows:
    """The replayable rows of an answer log: inputs, feedback labels (-1: none) and counts.

    ``skipped`` counts what could not be used, by reason (``hashed``, ``omitted``,
    ``other model``, ``unreadable``, ``wrong width``, ``feedback without its answer``...).

    Example::

        rows = read_answer_log([Path("logs")], model="digits", width=64)
        rows.X.shape, int((rows.feedback >= 0).sum())
    """

    X: np.ndarray
    feedback: np.ndarray
    files: tuple[str, ...]
    versions: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        """Rows that carry a feedback label."""
        return int((self.feedback >= 0).sum())


def _files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.glob("*.jsonl") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"{path}: no such log file or folder")
    if not found:
        raise InputError(f"no .jsonl log files in {', '.join(map(str, paths))}")
    return found


def read_answer_log(
    paths: Sequence[Path], *, model: str, width: int | None, text: bool = False
) -> LogRows:
    """The rows ``model`` answered in the log files or folders ``paths``, with the feedback
    labels posted for them (the latest label of a row counts).

    ``width``: the policy's input width (rows of another width are left out); ``text``:
    the policy reads texts. A request id used for two requests makes its feedback ambiguous:
    such feedback is left out (counted), the rows stay, labelled by the top tier.
    """
    skipped: dict[str, int] = {}

    def skip(reason: str, count: int = 1) -> None:
        skipped[reason] = skipped.get(reason, 0) + count

    inputs: list[Any] = []
    keys: list[tuple[str, int] | None] = []
    labels: dict[tuple[str, int], tuple[str, int]] = {}  # (time, label): the latest wins
    versions: set[str] = set()
    seen: dict[tuple[str, int], int] = {}
    files = _files(paths)
    for file in files:
        with open(file, encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    skip("unreadable")  # a line cut short by a crash mid-write
                    continue
                if not isinstance(record, dict) or record.get("model") != model:
                    skip("other model")
                    continue
                request_id, row = record.get("id"), record.get("row")
                key = (
                    (request_id, row)
                    if isinstance(request_id, str) and isinstance(row, int)
                    else None
                )
                if record.get("kind") == "feedback":
                    label, at = record.get("label"), str(record.get("time", ""))
                    if (
                        key is not None
                        and isinstance(label, int)
                        and at >= labels.get(key, ("",))[0]
                    ):
                        labels[key] = (at, label)
                    continue
                if record.get("kind") != "answer":
                    skip("unknown kind")
                    continue
                if "input" not in record:
                    skip("hashed" if "input_sha256" in record else "omitted")
                    continue
                value = record["input"]
                if text != isinstance(value, str) or (
                    not text and (not isinstance(value, list) or len(value) != width)
                ):
                    skip("wrong width")
                    continue
                if key is not None:
                    seen[key] = seen.get(key, 0) + 1
                versions.add(str(record.get("version")))
                inputs.append(value)
                keys.append(key)
    feedback = np.full(len(inputs), -1, dtype=np.int64)
    used: set[tuple[str, int]] = set()
    for i, key in enumerate(keys):
        if key is None or key not in labels:
            continue
        if seen[key] > 1:
            skip("ambiguous feedback (request id reused)")
            continue
        feedback[i] = labels[key][1]
        used.add(key)
    if len(labels) > len(used):
        unmatched = len([k for k in labels if k not in used and seen.get(k, 0) <= 1])
        if unmatched:
            skip("feedback without its answer", unmatched)
    if text:
        X = np.array(inputs, dtype=object)
    else:
        X = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), width or 0)
    return LogRows(X, feedback, tuple(map(str, files)), tuple(sorted(versions)), skipped)


def label_log_rows(rows: LogRows, top_answers: np.ndarray) -> np.ndarray:
    """Each row's label: its feedback label where it has one, else the top tier's answer.

    Example::

        y = label_log_rows(rows, evaluator.probabilities(evaluator.reference, rows.X).argmax(1))
    """
    return np.where(rows.feedback >= 0, rows.feedback, np.asarray(top_answers, np.int64))


@dataclass(frozen=True)
class LogSplit:
    """Row indices of the calibration part and of the held-back part."""

    calibration: np.ndarray
    held_back: np.ndarray


def split_log_rows(n: int, *, holdout: float, seed: int) -> LogSplit:
    """A seeded split of ``n`` rows: ``holdout`` of them held back, the rest calibrate.

    Example::

        split = split_log_rows(2000, holdout=0.5, seed=0)
        len(split.calibration), len(split.held_back)     # (1000, 1000)
    """
    if not 0.0 < holdout < 1.0:
        raise InputError(f"--holdout must lie strictly between 0 and 1, got {holdout}")
    order = np.random.default_rng(seed).permutation(n)
    held = round(n * holdout)
    if held == 0 or held == n:
        raise InputError(
            f"{n} logged rows cannot be split with --holdout {holdout}: both parts need rows"
        )
    return LogSplit(np.sort(order[held:]), np.sort(order[:held]))


@dataclass
class FromLogResult:
    """What ``calibrate --from-log`` did: the rows, the calibration and the held-back check.

    ``before`` is the policy that served, ``after`` the recalibrated one (``None`` when the
    target could not be met), ``reference`` always-<top tier>; all on the held-back rows.
    ``top_agreement``: how often the top tier's answer equals the feedback label, on rows
    that have one (``None``: no feedback).
    """

    rows: LogRows
    top: str
    split: LogSplit
    data_label: str
    split_label: str
    calibration: CalibrationResult
    before: EvalRow
    after: EvalRow | None
    reference: EvalRow
    top_agreement: float | None


def _describe_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(skipped.items()))


def calibrate_from_log(
    loaded: PolicyFile,
    paths: Sequence[Path],
    *,
    target: Target,
    method: ConfidenceCalibration = "temperature",
    holdout: float = 0.5,
    seed: int = 0,
    write: bool = True,
    evaluator: Evaluator | None = None,
    progress: Callable[[str], None] | None = None,
) -> FromLogResult:
    """Recalibrate ``loaded`` on the rows its answer log holds (``paths``: files or folders).

    Rows are labelled by feedback, else by the top tier's answer (run here, on the logged
    input); a seeded ``holdout`` share is held back and the rest calibrates, with the margin
    and provenance of :func:`calibrate_policy` (``dataset: live log ...``). The held-back rows
    then score the policy that served beside the recalibrated one.

    Example::

        result = calibrate_from_log(read_policy("policies/digits.yaml"), [Path("logs")],
                                    target=Target(relative_accuracy=0.995))
        result.before.relative_accuracy, result.after.relative_accuracy
    """
    evaluator = evaluator or Evaluator(loaded)
    spec = next(iter(evaluator.backends.values())).input_spec
    text = spec.dtype == "string"
    rows = read_answer_log(paths, model=loaded.policy.name, width=spec.width, text=text)
    where = ", ".join(map(str, paths))
    if len(rows.X) == 0:
        raise InputError(
            f"{where}: no row of model '{loaded.policy.name}' was logged with its input, which "
            f"calibration replays (log.inputs: full); left out: {_describe_skipped(rows.skipped)}"
            if rows.skipped
            else f"{where}: no answer of model '{loaded.policy.name}' in the log"
        )
    top = evaluator.reference
    say = progress or (lambda _: None)
    say(f"labelling {len(rows.X):,} logged rows by tier '{top}' where no feedback label is")
    top_answers = evaluator.probabilities(top, rows.X).argmax(axis=1)
    y = label_log_rows(rows, top_answers)
    has = rows.feedback >= 0
    agreement = float((top_answers[has] == rows.feedback[has]).mean()) if has.any() else None
    split = split_log_rows(len(y), holdout=holdout, seed=seed)
    n = len(y)
    data_label = (
        f"live log {where} ({n:,} rows, {rows.labelled:,} labelled by feedback, the rest by "
        f"tier {top})"
    )
    split_label = (
        f"calibration (log): {len(split.calibration):,} of {n:,} rows, seed {seed}; "
        f"{len(split.held_back):,} held back"
    )
    cal = split.calibration
    result = calibrate_policy(
        loaded, rows.X[cal], y[cal], target=target, method=method, data_label=data_label,
        evaluator=evaluator, write=write, progress=progress, split_label=split_label,
    )  # fmt: skip
    held = split.held_back
    X_held, y_held = rows.X[held], y[held]
    always = ConfidenceRouting(kind="confidence", chain=[ChainStep(tier=top)])
    reference_policy = loaded.policy.model_copy(update={"routing": always, "provenance": None})
    reference = evaluator.replay(reference_policy, X_held)
    reference_accuracy = float((reference.labels == y_held).mean())
    reference_cost = evaluator.costs[top]

    def score(name: str, policy: Policy, result: BatchResult | None = None) -> EvalRow:
        replayed = result if result is not None else evaluator.replay(policy, X_held)
        return evaluator.summarise(
            name, policy, replayed, y_held,
            reference_accuracy=reference_accuracy, reference_cost=reference_cost,
        )  # fmt: skip

    name = loaded.policy.name
    return FromLogResult(
        rows=rows,
        top=top,
        split=split,
        data_label=data_label,
        split_label=split_label,
        calibration=result,
        before=score(f"{name} (serving)", loaded.policy),
        after=score(f"{name} (recalibrated)", result.policy) if result.met else None,
        reference=score(f"always-{top}", reference_policy, reference),
        top_agreement=agreement,
    )
