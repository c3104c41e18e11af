"""The answer log: rotation within its bound, inputs kept/hashed/omitted, sampling, a writer
that never holds up the caller, feedback validation, and reading a log back for
``calibrate --from-log``. Real files in ``tmp_path``; fakes only for a stalled sink."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.edge._metrics import PrometheusMetrics
from cascade.errors import InputError, PolicyError
from cascade.evaluate._log import label_log_rows, read_answer_log, split_log_rows
from cascade.policy import LogSection, parse_policy
from cascade.routing import Decision
from cascade.routing._decision import Step
from cascade.serving import InferenceService, PolicyText
from cascade.serving._answer_log import AnswerLog, Feedback, LogFile, parse_feedback

ROOT = Path(__file__).resolve().parents[2]
CLASSES = [str(i) for i in range(10)]


def _decisions(n: int, tier: str = "tiny") -> tuple[Decision, ...]:
    step = Step(tier=tier, confidence=0.97, threshold=0.9, accepted=True, latency_ms=0.1, cost=0.01)
    return tuple(
        Decision(
            steps=(step,),
            answered_by=tier,
            reason="confident",
            cost=0.01,
            latency_ms=0.1,
            deadline_ms=None,
        )
        for _ in range(n)
    )


def _probabilities(labels: list[int]) -> np.ndarray:
    p = np.full((len(labels), 10), 0.01, dtype=np.float32)
    p[np.arange(len(labels)), labels] = 0.91
    return p


def _log(tmp_path: Path, **section: Any) -> AnswerLog:
    return AnswerLog(
        tmp_path / "logs",
        "digits",
        LogSection(path="logs", **section),
        classes=CLASSES,
        rng=random.Random(0),
    )


def _records(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(directory.glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def test_rotation_keeps_the_files_within_max_bytes_times_keep_plus_one(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=4096, keep=2)
    rows = np.arange(64 * 4, dtype=np.float32).reshape(4, 64)
    for i in range(200):  # ~800 records of ~600 bytes: some 120 files' worth
        log.answers(
            version="v1",
            request_id=f"r{i}",
            rows=rows,
            probabilities=_probabilities([1, 2, 3, 4]),
            decisions=_decisions(4),
        )
    log.close()
    files = sorted(p.name for p in (tmp_path / "logs").glob("*.jsonl"))
    assert files == ["digits.1.jsonl", "digits.2.jsonl", "digits.jsonl"]
    sizes = [(tmp_path / "logs" / f).stat().st_size for f in files]
    assert all(0 < size <= 4096 for size in sizes)
    assert sum(sizes) <= 4096 * 3
    assert log.written == 800 and log.dropped == 0 and log.failed == 0
    newest = (tmp_path / "logs" / "digits.jsonl").read_text().splitlines()
    assert json.loads(newest[-1])["id"] == "r199"  # the current file holds the latest rows
    oldest = json.loads((tmp_path / "logs" / "digits.2.jsonl").read_text().splitlines()[0])
    assert int(oldest["id"][1:]) < 199


def test_a_second_writer_of_the_same_folder_takes_the_next_slot(tmp_path: Path) -> None:
    first = LogFile(tmp_path, "digits", max_bytes=4096, keep=1)
    second = LogFile(tmp_path, "digits", max_bytes=4096, keep=1)
    assert (first.path.name, second.path.name) == ("digits.jsonl", "digits.p1.jsonl")
    first.close()
    again = LogFile(tmp_path, "digits", max_bytes=4096, keep=1)  # a restart takes slot 0 back
    assert again.path.name == "digits.jsonl"
    again.close()
    second.close()


def test_inputs_are_kept_hashed_or_omitted_as_the_section_says(tmp_path: Path) -> None:
    rows = np.array([[0.1, 2.5, 3.0]], dtype=np.float32)
    texts = np.array(["book a flight to Lisbon"], dtype=object)
    for mode in ("full", "hash", "omit"):
        for name, data in (("numbers", rows), ("text", texts)):
            directory = tmp_path / mode / name
            log = AnswerLog(directory, "m", LogSection(path=".", inputs=mode), classes=CLASSES)
            log.answers(
                version="v",
                request_id=None,
                rows=data,
                probabilities=_probabilities([7]),
                decisions=_decisions(1),
            )
            log.close()
            (record,) = _records(directory)
            assert record["label"] == 7 and record["class"] == "7"
            assert record["answered_by"] == "tiny" and record["confidence"] == 0.97
            assert record["id"] is None and record["row"] == 0
            if mode == "full":
                assert "input_sha256" not in record
                if name == "text":
                    assert record["input"] == "book a flight to Lisbon"
                else:  # float32 read back exactly
                    assert np.array_equal(np.asarray(record["input"], np.float32), rows[0])
            elif mode == "hash":
                assert "input" not in record
                raw = texts[0].encode() if name == "text" else rows[0].astype("<f4").tobytes()
                assert record["input_sha256"] == hashlib.sha256(raw).hexdigest()
            else:
                assert "input" not in record and "input_sha256" not in record


def test_probabilities_are_logged_only_when_asked_for(tmp_path: Path) -> None:
    for flag in (False, True):
        log = AnswerLog(
            tmp_path / str(flag), "m", LogSection(path=".", probabilities=flag), classes=None
        )
        log.answers(
            version="v",
            request_id="a",
            rows=np.zeros((1, 3), np.float32),
            probabilities=_probabilities([2]),
            decisions=_decisions(1),
        )
        log.close()
        (record,) = _records(tmp_path / str(flag))
        assert ("probabilities" in record) is flag and "class" not in record
        if flag:
            assert len(record["probabilities"]) == 10


def test_sampling_follows_the_rate_and_the_seeded_generator(tmp_path: Path) -> None:
    def draws(rate: float, seed: int) -> list[bool]:
        log = AnswerLog(
            tmp_path,
            "m",
            LogSection(path=".", sample_rate=rate),
            classes=None,
            rng=random.Random(seed),
        )
        return [log.sampled() for _ in range(10_000)]

    share = sum(draws(0.2, 7)) / 10_000
    assert 0.18 < share < 0.22
    assert draws(0.2, 7) == draws(0.2, 7)  # the same seed, the same requests
    assert draws(0.2, 7) != draws(0.2, 8)
    assert not any(draws(0.0, 1)) and all(draws(1.0, 1))


class _StalledSink:
    """A sink whose first write blocks until released: the disk hangs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.release.wait()
        self.lines.append(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_stalled_writer_drops_and_counts_and_never_blocks_the_caller(tmp_path: Path) -> None:
    sink = _StalledSink()
    log = AnswerLog(
        tmp_path, "m", LogSection(path="."), classes=None, queue_size=2, sink=lambda: sink
    )
    rows = np.zeros((3, 4), np.float32)

    def submit() -> None:
        for i in range(50):
            log.answers(
                version="v",
                request_id=str(i),
                rows=rows,
                probabilities=_probabilities([0, 1, 2]),
                decisions=_decisions(3),
            )

    caller = threading.Thread(target=submit)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "the caller was held up by a stalled writer"
    # the stalled thread holds at most three items (its first and the two it drained after
    # it), two more wait in the queue: the rest are dropped and counted
    assert log.dropped >= (50 - 5) * 3
    assert log.unreported()["dropped"] == log.dropped
    sink.release.set()
    log.close()
    assert log.written + log.dropped == 150
    assert len(sink.lines) == log.written and log.failed == 0
    assert log.unreported() == {"written": log.written}


def test_a_write_error_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "logs").write_text("a file where the folder should be")
    log = _log(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cascade.serving"):
        for i in range(5):
            log.answers(
                version="v",
                request_id=str(i),
                rows=np.zeros((2, 3), np.float32),
                probabilities=_probabilities([0, 1]),
                decisions=_decisions(2),
            )
        log.close()
    assert log.failed == 10 and log.written == 0
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1


def test_feedback_is_parsed_by_index_or_class_name() -> None:
    parsed = parse_feedback(
        {"id": "r1", "labels": [3, "7", None, 2.0]}, classes=CLASSES, n_classes=10, max_rows=8
    )
    assert parsed.id == "r1" and parsed.labels == [3, 7, None, 2]
    bad = [
        ([], "a JSON object"),
        ({"labels": [1]}, "needs 'id'"),
        ({"id": 5, "labels": [1]}, "needs 'id'"),
        ({"id": "r", "labels": []}, "non-empty list"),
        ({"id": "r", "labels": "3"}, "non-empty list"),
        ({"id": "r", "labels": ["cat"]}, r"labels\[0\]: unknown class 'cat' \(classes: 0, 1"),
        ({"id": "r", "labels": [1, 10]}, r"labels\[1\]: class index 10 out of range \(0 to 9\)"),
        ({"id": "r", "labels": [-1]}, "out of range"),
        ({"id": "r", "labels": [True]}, r"labels\[0\]: a class index, a class name or null"),
        ({"id": "r", "labels": [1.5]}, "a class index"),
        ({"id": "r", "labels": [1] * 9}, "at most 8 rows"),
    ]
    for document, message in bad:
        with pytest.raises(InputError, match=message):
            parse_feedback(document, classes=CLASSES, n_classes=10, max_rows=8)


# ---- the service: the feedback route -------------------------------------------------------


def _policy_text(models: Path, log: str | None) -> str:
    return (
        f"name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n  large: {{model: {models / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny, threshold: 0.9}\n"
        "    - {tier: large}\n" + (f"log: {log}\n" if log else "")
    )


def _call(service: InferenceService, path: str, document: Any) -> tuple[int, Any]:
    raw = json.dumps(document).encode() if not isinstance(document, bytes) else document

    async def read() -> bytes:
        return raw

    reply = asyncio.run(service.handle("POST", path, {}, read))
    return reply.status, json.loads(reply.body)


def _infer_body(rows: np.ndarray, request_id: str) -> dict[str, Any]:
    return {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ],
    }


def test_feedback_route_validates_and_appends_labels(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    from cascade.zoo import read_dataset

    metrics = PrometheusMetrics()
    service = InferenceService(metrics=metrics, max_rows=64)
    policy = tmp_path / "digits.yaml"
    text = _policy_text(digits_policy_models, "{path: logs}")
    service.apply_policies([PolicyText(str(policy), text)], remote=lambda name: {})
    assert not service.reload_errors
    rows = read_dataset("digits").test.X[:3]
    status, answer = _call(service, "/v2/models/digits/infer", _infer_body(rows, "req-1"))
    assert status == 200 and answer["id"] == "req-1"

    url = "/v2/models/digits/feedback"
    cases = [
        ("/v2/models/nope/feedback", {"id": "req-1", "labels": [1, 2, 3]}, 404, "unknown model"),
        (url, b"{not json", 400, "not valid JSON"),
        (url, {"id": "req-1", "labels": [1, 2]}, 400, "'req-1' had 3 rows; feedback gives 2"),
        (url, {"id": "req-1", "labels": [1, "cat", 3]}, 400, "unknown class 'cat'"),
        (url, {"labels": [1, 2, 3]}, 400, "needs 'id'"),
    ]
    for path, document, code, message in cases:
        status, body = _call(service, path, document)
        assert status == code and message in body["error"], (document, body)
    status, body = _call(service, url, {"id": "req-1", "labels": [0, "5", None]})
    assert (status, body) == (200, {"id": "req-1", "labels": 2, "matched": True})
    status, body = _call(service, url, {"id": "elsewhere", "labels": [4]})
    assert (status, body["matched"]) == (200, False)  # another replica's request: kept
    service.close_logs()
    feedback = [r for r in _records(tmp_path / "logs") if r["kind"] == "feedback"]
    assert [(r["id"], r["row"], r["label"]) for r in feedback] == [
        ("req-1", 0, 0),
        ("req-1", 1, 5),
        ("elsewhere", 0, 4),
    ]
    answers = [r for r in _records(tmp_path / "logs") if r["kind"] == "answer"]
    assert [r["row"] for r in answers] == [0, 1, 2] and answers[0]["id"] == "req-1"
    assert answers[0]["version"] == service.models["digits"].version
    text_metrics = metrics.render()  # closing reported the last writes
    assert 'ray_cascade_log_records_total{model="digits",outcome="written"} 6' in text_metrics


def test_feedback_without_a_log_section_is_a_409(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    service = InferenceService()
    text = _policy_text(digits_policy_models, None)
    service.apply_policies([PolicyText(str(tmp_path / "d.yaml"), text)], remote=lambda n: {})
    status, body = _call(service, "/v2/models/digits/feedback", {"id": "r", "labels": [1]})
    assert status == 409 and "no `log` section" in body["error"]
    status, body = _call(service, "/v2/models/digits/feedback", {"id": "r", "labels": [99]})
    assert status == 400  # a malformed body is a 400 first


def test_a_reload_keeps_the_writer_unless_the_log_section_changes(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    service = InferenceService()
    path = str(tmp_path / "digits.yaml")
    text = _policy_text(digits_policy_models, "{path: logs}")
    service.apply_policies([PolicyText(path, text)], remote=lambda n: {})
    served: Any = service.models["digits"]
    first = served.answer_log
    service.apply_policies([PolicyText(path, text.replace("0.9}", "0.8}"))], remote=lambda n: {})
    assert served.answer_log is first
    changed = text.replace("{path: logs}", "{path: logs, inputs: hash}")
    service.apply_policies([PolicyText(path, changed)], remote=lambda n: {})
    assert served.answer_log is not first and served.answer_log.section.inputs == "hash"
    outside = text.replace("allow_outside_paths: true\n", "").replace(
        "{path: logs}", "{path: ../elsewhere}"
    )
    service.apply_policies([PolicyText(path, outside)], remote=lambda n: {})
    assert "log.path: path leaves the policy folder" in "".join(service.reload_errors.values())
    assert served.answer_log.section.inputs == "hash"  # the refused policy changed nothing
    service.close_logs()


def test_the_log_section_is_checked_where_the_policy_is_read(tmp_path: Path) -> None:
    base = "name: m\ntiers:\n  a: {model: a.onnx}\n"
    base += "routing: {kind: confidence, chain: [{tier: a}]}\n"
    loaded = parse_policy(
        base + "log: {path: logs}\n", source="p.yaml", base_dir=tmp_path, check_files=False
    )
    assert loaded.log_dir() == (tmp_path / "logs").resolve()
    with pytest.raises(PolicyError, match=r"p\.yaml:5 log\.path: path leaves the policy folder"):
        parse_policy(
            base + "log: {path: /var/log}\n", source="p.yaml", base_dir=tmp_path, check_files=True
        )
    with pytest.raises(PolicyError, match=r"log\.keep"):
        parse_policy(
            base + "log: {path: logs, keep: -1}\n",
            source="p.yaml",
            base_dir=tmp_path,
            check_files=False,
        )
    with pytest.raises(PolicyError, match="log applies to classification policies"):
        parse_policy(
            "name: r\ntiers:\n  f: {model: f.onnx}\nstages: [{name: fine, tier: f, keep: 5}]\n"
            "log: {path: logs}\n",
            source="r.yaml",
            base_dir=tmp_path,
            check_files=False,
        )


# ---- reading it back ---------------------------------------------------------------------------


def test_a_log_reads_back_with_feedback_joined_and_the_rest_counted(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path, "digits", LogSection(path="."), classes=CLASSES)
    X = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    for i in range(3):
        log.answers(
            version="v1",
            request_id=f"r{i}",
            rows=X[2 * i : 2 * i + 2],
            probabilities=_probabilities([1, 1]),
            decisions=_decisions(2),
        )
    log.feedback(Feedback("r0", [4, None]))
    log.feedback(Feedback("r0", [5, None]))  # a correction: the latest label counts
    log.feedback(Feedback("r2", [None, 9]))
    log.feedback(Feedback("never-logged", [3]))
    log.close()
    other = AnswerLog(tmp_path, "covertype", LogSection(path=".", inputs="hash"), classes=None)
    other.answers(
        version="c",
        request_id="x",
        rows=X[:1],
        probabilities=_probabilities([0]),
        decisions=_decisions(1),
    )
    other.close()
    hashed = AnswerLog(
        tmp_path / "h", "digits", LogSection(path=".", inputs="hash"), classes=CLASSES
    )
    hashed.answers(
        version="v1",
        request_id="h",
        rows=X[:2],
        probabilities=_probabilities([1, 1]),
        decisions=_decisions(2),
    )
    hashed.close()
    with (tmp_path / "digits.jsonl").open("a") as f:
        f.write('{"kind": "answer", "model": "digits", "input": [1, 2')  # cut short by a crash

    rows = read_answer_log([tmp_path, tmp_path / "h"], model="digits", width=4)
    assert np.array_equal(rows.X, X)  # float32 exactly, in the order logged
    assert rows.feedback.tolist() == [5, -1, -1, -1, -1, 9]
    assert rows.labelled == 2 and rows.versions == ("v1",)
    assert rows.skipped == {
        "other model": 1,
        "hashed": 2,
        "unreadable": 1,
        "feedback without its answer": 1,
    }
    top = np.array([1, 1, 2, 2, 3, 3])
    # feedback beats the top tier's answer; the top tier labels the rest
    assert label_log_rows(rows, top).tolist() == [5, 1, 2, 2, 3, 9]
    with pytest.raises(InputError, match="no such log file or folder"):
        read_answer_log([tmp_path / "missing"], model="digits", width=4)


def test_a_reused_request_id_makes_its_feedback_ambiguous(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path, "m", LogSection(path="."), classes=None)
    for _ in range(2):
        log.answers(
            version="v",
            request_id="same",
            rows=np.zeros((1, 2), np.float32),
            probabilities=_probabilities([1]),
            decisions=_decisions(1),
        )
    log.feedback(Feedback("same", [3]))
    log.close()
    rows = read_answer_log([tmp_path], model="m", width=2)
    assert rows.feedback.tolist() == [-1, -1]
    assert rows.skipped == {"ambiguous feedback (request id reused)": 2}


def test_the_log_split_is_seeded_and_disjoint() -> None:
    split = split_log_rows(1001, holdout=0.3, seed=4)
    again = split_log_rows(1001, holdout=0.3, seed=4)
    assert np.array_equal(split.held_back, again.held_back)
    assert len(split.held_back) == 300 and len(split.calibration) == 701
    assert not set(split.held_back.tolist()) & set(split.calibration.tolist())
    assert not np.array_equal(split.held_back, split_log_rows(1001, holdout=0.3, seed=5).held_back)
    with pytest.raises(InputError, match="both parts need rows"):
        split_log_rows(1, holdout=0.5, seed=0)


def test_from_log_calibration_uses_feedback_over_the_top_tier(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    import yaml

    from cascade.evaluate import Target, calibrate_from_log
    from cascade.policy import read_policy
    from cascade.zoo import read_dataset

    policy = tmp_path / "digits.yaml"
    policy.write_text(_policy_text(digits_policy_models, "{path: logs}"))
    dataset = read_dataset("digits")
    X = np.concatenate([dataset.calibration.X, dataset.test.X]).astype(np.float32)
    y = np.concatenate([dataset.calibration.y, dataset.test.y])
    log = AnswerLog(tmp_path / "logs", "digits", LogSection(path="logs"), classes=CLASSES,
                    queue_size=4096)  # fmt: skip
    for i, row in enumerate(X):
        log.answers(version="v", request_id=f"r{i}", rows=row[None, :],
                    probabilities=_probabilities([0]), decisions=_decisions(1))  # fmt: skip
    wrong = (y[:40] + 1) % 10  # feedback that contradicts every right answer
    for i, label in enumerate(wrong.tolist()):
        log.feedback(Feedback(f"r{i}", [label]))
    log.close()
    assert log.dropped == 0

    result = calibrate_from_log(read_policy(policy), [tmp_path / "logs"],
                                target=Target(relative_accuracy=0.95, confidence=0.8),
                                holdout=0.4, seed=3)  # fmt: skip
    assert result.rows.labelled == 40 and result.top == "large"
    assert result.top_agreement is not None and result.top_agreement < 0.2
    assert len(result.split.held_back) == round(len(X) * 0.4)
    assert result.data_label == (
        f"live log {tmp_path / 'logs'} ({len(X):,} rows, 40 labelled by feedback, the rest "
        "by tier large)"
    )
    assert result.calibration.met and result.after is not None
    assert result.before.n == result.after.n == result.reference.n == len(result.split.held_back)
    written = yaml.safe_load(policy.read_text())["provenance"]
    assert written["dataset"] == result.data_label
    assert written["split"] == result.split_label
    assert written["split"].startswith(f"calibration (log): {len(X) - round(len(X) * 0.4):,} of")
