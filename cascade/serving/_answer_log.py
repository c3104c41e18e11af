"""Request/answer logging: the policy's ``log`` section, written off the request path.

The event loop only decides whether a request is sampled and puts one item (references
to the request's rows, its probabilities and decisions) on a bounded queue; a writer
thread turns items into JSON lines, writes them and rotates the files. A full queue drops
the item and counts its rows (``dropped``); a write that fails (disk full, permission) is
logged once and its rows counted (``failed``): the request's answer and status never
depend on the log.

Files, in the section's folder, per policy name ``NAME``::

    NAME.jsonl      the file written now; past max_bytes it becomes NAME.1.jsonl
    NAME.1.jsonl    ... up to NAME.{keep}.jsonl; the oldest is deleted

so one writer keeps at most ``max_bytes x (keep + 1)`` bytes. Several processes may share
the folder (Ray ingress replicas): each claims a slot by a lock file (``.NAME.lock``,
``.NAME.p1.lock``, ...) and the second writes ``NAME.p1.jsonl`` (rotated to
``NAME.p1.1.jsonl``), and so on; a restarted process takes the slot its predecessor left,
so restarts do not pile up files.

Records, one JSON object per line and per row::

    {"kind": "answer", "time": "2026-12-02T10:42:27.123Z", "model": "digits",
     "version": "3f9a0c1d2e4b5a67", "id": "req-7", "row": 0, "input": [0.0, 3.0, ...],
     "label": 3, "class": "3", "answered_by": "tiny", "confidence": 0.991,
     "top_probability": 0.97, "degraded": false, "gear": "normal"}
    {"kind": "feedback", "time": "...", "model": "digits", "id": "req-7", "row": 0,
     "label": 3, "class": "3"}

``id`` is the request's Open Inference Protocol id (``null`` when the client sent none:
such rows can only be labelled by the top tier); ``input`` is the row's values (float32
read back exactly), or its text; with ``inputs: hash`` it is ``input_sha256`` instead (of
the row's little-endian float32 bytes, or of the text's UTF-8), with ``inputs: omit``
absent. ``confidence`` is the routing's calibrated confidence of the answering tier where
it measured one (``null`` for the last tier of a chain); ``top_probability`` its highest
probability. ``cache`` (``exact``/``similar``) appears on rows answered from a cache, and
``probabilities`` with the section's ``probabilities: true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from cascade.errors import InputError
from cascade.policy import LogSection

__all__ = ["AnswerLog", "Feedback", "LogFile", "Sink", "parse_feedback"]

_LOG = logging.getLogger("cascade.serving")
_RECENT_IDS = 10_000  # request ids remembered to check a feedback's length against
_STOP = object()


class Sink(Protocol):
    """Where the writer thread puts encoded lines: :class:`LogFile`, or a test's fake."""

    def write(self, line: bytes) -> None:
        """Append one line (``OSError`` when it cannot)."""

    def flush(self) -> None:
        """Push what was written to the operating system."""

    def close(self) -> None:
        """Flush and release the file."""


class LogFile:
    """One writer's rotated JSONL files: ``STEM.jsonl``, ``STEM.1.jsonl`` ... ``STEM.{keep}``.

    A line that would take the current file past ``max_bytes`` goes to a new one after the
    files shift by one (the oldest is deleted); a line longer than ``max_bytes`` alone is
    refused (``OSError``), so no file ever exceeds it.

    The stem is the first free slot of ``name`` in ``directory``: ``name`` itself, else
    ``name.p1``, ``name.p2``... each held by an exclusive lock on ``.STEM.lock`` for the
    writer's life (several processes may share a folder).

    Example::

        file = LogFile(Path("logs"), "digits", max_bytes=64 << 20, keep=4)
        file.write(b'{"kind": "answer", ...}\\n')
        file.close()
    """

    def __init__(self, directory: Path, name: str, *, max_bytes: int, keep: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)
        self.stem, self._lock = _claim(directory, name)
        self.path = directory / f"{self.stem}.jsonl"
        self._file: IO[bytes] | None = None
        self._size = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 (held open across writes)
            self._size = self._file.tell()
        return self._file

    def write(self, line: bytes) -> None:
        if len(line) > self.max_bytes:
            raise OSError(f"a record of {len(line)} bytes is over log.max_bytes ({self.max_bytes})")
        file = self._open()
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
            file = self._open()
        file.write(line)
        self._size += len(line)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None

        def numbered(i: int) -> Path:
            return self.directory / f"{self.stem}.{i}.jsonl"

        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        numbered(self.keep).unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            if numbered(i).exists():
                numbered(i).rename(numbered(i + 1))
        self.path.rename(numbered(1))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the slot
                self._lock = None


def _claim(directory: Path, name: str) -> tuple[str, IO[bytes] | None]:
    """The first slot of ``name`` no other writer holds, and the held lock file."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one file per process
        return f"{name}.{os.getpid()}", None
    for slot in range(1000):
        stem = name if slot == 0 else f"{name}.p{slot}"
        lock = open(directory / f".{stem}.lock", "ab")  # noqa: SIM115 (held for the writer's life)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        return stem, lock
    raise OSError(f"{directory}: 1000 writers already log {name!r} here")


class Feedback:
    """A validated feedback body: the request id and one label (class index) or ``None``
    per row of that request."""

    def __init__(self, request_id: str, labels: list[int | None]) -> None:
        self.id = request_id
        self.labels = labels


def parse_feedback(
    document: Any, *, classes: Sequence[str] | None, n_classes: int, max_rows: int
) -> Feedback:
    """``{"id": "...", "labels": [...]}`` checked: labels are class indices or class names
    (``null`` for a row without one), one per row of the request ``id`` names.

    Example::

        parse_feedback({"id": "req-7", "labels": ["3", 5, None]}, classes=[...], n_classes=10,
                       max_rows=4096).labels    # [3, 5, None]
    """
    if not isinstance(document, dict):
        raise InputError('feedback must be a JSON object {"id": ..., "labels": [...]}')
    request_id = document.get("id")
    if not isinstance(request_id, str):
        raise InputError(
            "feedback needs 'id': the id of the inference request it labels (a string), "
            f"got {json.dumps(request_id)[:60]}"
        )
    labels = document.get("labels")
    if not isinstance(labels, list) or not labels:
        raise InputError("feedback needs 'labels': a non-empty list, one label per row")
    if len(labels) > max_rows:
        raise InputError(
            f"feedback has {len(labels)} labels; a request has at most {max_rows} rows"
        )
    index = {name: i for i, name in enumerate(classes)} if classes else {}
    parsed: list[int | None] = []
    for row, label in enumerate(labels):
        if label is None:
            parsed.append(None)
        elif isinstance(label, str):
            if label not in index:
                shown = ", ".join(list(index)[:10]) + (", ..." if len(index) > 10 else "")
                allowed = f"(classes: {shown})" if index else "(the model names no classes)"
                raise InputError(f"labels[{row}]: unknown class {label!r} {allowed}")
            parsed.append(index[label])
        elif _whole(label):
            if not 0 <= int(label) < n_classes:
                raise InputError(
                    f"labels[{row}]: class index {label} out of range (0 to {n_classes - 1})"
                )
            parsed.append(int(label))
        else:
            raise InputError(
                f"labels[{row}]: a class index, a class name or null, got {json.dumps(label)[:60]}"
            )
    return Feedback(request_id, parsed)


class AnswerLog:
    """A policy's answer log: sampling on the caller's side, writing on a thread of its own.

    :meth:`answers` and :meth:`feedback` never block: they put one item on a queue of
    ``queue_size`` items, or count it dropped. The thread writes what arrived within
    ``linger_s`` of an item in one batch (1,024 items hold 50 ms of 20,000 requests/s);
    traffic beyond what it can encode is dropped, never waited for. It starts with the
    first item and opens the file then
    (``sink``: a factory of the :class:`Sink`, default :class:`LogFile` in ``directory``).
    Counters (rows): ``written``, ``dropped``, ``failed``.

    Example::

        log = AnswerLog(Path("logs"), "digits", section, classes=["0", ..., "9"])
        if log.sampled():
            log.answers(version=v, request_id="req-7", rows=rows, probabilities=p,
                        decisions=decisions)
        log.close()
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        section: LogSection,
        *,
        classes: Sequence[str] | None,
        queue_size: int = 1024,
        rng: random.Random | None = None,
        sink: Callable[[], Sink] | None = None,
        wall_clock: Callable[[], float] = time.time,
        linger_s: float = 0.05,
    ) -> None:
        self.directory = directory
        self.name = name
        self.section = section
        self.classes = list(classes) if classes else None
        self._class_json = [_compact(c) for c in self.classes] if self.classes else None
        self.written = self.dropped = self.failed = 0
        self._reported = {"written": 0, "dropped": 0, "failed": 0}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._rng = rng or random.Random()
        self._sink = sink or (
            lambda: LogFile(directory, name, max_bytes=section.max_bytes, keep=section.keep)
        )
        self._wall_clock = wall_clock
        self._linger_s = linger_s
        self._thread: threading.Thread | None = None
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._closed = False
        self._warned = False
        self.file: str | None = None  # the file written, once opened

    # ---- the caller's side (the event loop) --------------------------------------------

    def sampled(self) -> bool:
        """Whether to log the request at hand (``sample_rate``; 1 reads no random number)."""
        rate = self.section.sample_rate
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def answers(
        self,
        *,
        version: str,
        request_id: str | None,
        rows: np.ndarray,
        probabilities: np.ndarray,
        decisions: Sequence[Any],
    ) -> None:
        """Log one answered request's rows (the arrays are not copied: they must not change)."""
        if request_id is not None:
            self._recent[request_id] = len(rows)
            self._recent.move_to_end(request_id)
            if len(self._recent) > _RECENT_IDS:
                self._recent.popitem(last=False)
        item = ("answer", self._wall_clock(), version, request_id, rows, probabilities, decisions)
        self._put(item, len(decisions))

    def expected_rows(self, request_id: str) -> int | None:
        """Rows of the request ``request_id`` if this process logged it lately."""
        return self._recent.get(request_id)

    def feedback(self, feedback: Feedback) -> bool:
        """Log the labels of ``feedback``; ``False`` when the queue is full (dropped)."""
        rows = sum(label is not None for label in feedback.labels)
        return self._put(("feedback", self._wall_clock(), feedback), rows)

    def _put(self, item: tuple[Any, ...], rows: int) -> bool:
        if self._closed:
            self.dropped += rows
            return False
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"cascade-log-{self.name}", daemon=True
            )
            self._thread.start()
        try:
            self._queue.put_nowait((item, rows))
        except queue.Full:
            self.dropped += rows
            return False
        return True

    def unreported(self) -> dict[str, int]:
        """Rows per outcome since the last call (for a counter metric), zeros left out."""
        now = {"written": self.written, "dropped": self.dropped, "failed": self.failed}
        delta = {k: v - self._reported[k] for k, v in now.items() if v != self._reported[k]}
        self._reported = now
        return delta

    def stats(self) -> dict[str, Any]:
        """What metadata reports: the file, rows written, dropped and failed."""
        return {"file": self.file, "written": self.written, "dropped": self.dropped,
                "failed": self.failed, "queued": self._queue.qsize()}  # fmt: skip

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then close the file (waits up to ``timeout_s``)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        while True:  # the stop marker must get in, even behind a full queue
            try:
                self._queue.put((_STOP, 0), timeout=timeout_s)
                break
            except queue.Full:
                _LOG.warning("answer log %s: the writer is stuck; %d rows left unwritten",
                             self.name, self._queue.qsize())  # fmt: skip
                return
        self._thread.join(timeout_s)

    # ---- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        sink: Sink | None = None
        stop = False
        while not stop:
            batch = [self._queue.get()]
            if batch[0][0] is not _STOP:
                # a moment for more to arrive: one wake-up and one flush per batch of
                # requests, not per request (each costs the server more CPU than a line)
                time.sleep(self._linger_s)
            while len(batch) < 4096:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item, rows in batch:
                if item is _STOP:
                    stop = True
                    continue
                try:
                    if sink is None:
                        sink = self._sink()
                        self.file = str(getattr(sink, "path", "")) or None
                    for line in self._encode(item):
                        sink.write(line)
                        self.written += 1
                        rows -= 1
                except Exception as exc:  # a log must never take the server down
                    self.failed += rows
                    self._warn(exc)
            if sink is not None:
                try:
                    sink.flush()
                except OSError as exc:
                    self._warn(exc)
        if sink is not None:
            try:
                sink.close()
            except OSError as exc:
                self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:  # once: a full disk would otherwise log a line per request
            self._warned = True
            _LOG.warning("answer log of model=%s in %s cannot write (%s); its rows count as "
                         "failed from now on", self.name, self.directory, exc)  # fmt: skip

    def _encode(self, item: tuple[Any, ...]) -> list[bytes]:
        if item[0] == "feedback":
            _, at, feedback = item
            head = {"kind": "feedback", "time": _iso(at), "model": self.name, "id": feedback.id}
            return [
                _line(head | {"row": row, "label": label} | self._class(label))
                for row, label in enumerate(feedback.labels)
                if label is not None
            ]
        _, at, version, request_id, rows, probabilities, decisions = item
        head = {"kind": "answer", "time": _iso(at), "model": self.name, "version": version,
                "id": request_id}  # fmt: skip
        # Lines are joined from pieces, not encoded from a dict per row: a dict's encoding
        # cost as much as the rest of the row's logging together (benchmarks/answer_log_cpu.py)
        prefix = _compact(head)[:-1] + ',"row":'
        inputs = self.section.inputs
        labels = probabilities.argmax(axis=1).tolist()
        tops = probabilities.max(axis=1).tolist()
        text = rows.dtype == object
        values = rows.tolist() if inputs == "full" else None
        if values is not None and not text and _whole_numbers(rows):
            # whole numbers written as integers: read back as the same float32, and Python
            # formats an int faster than a float (pixels, counts, one-hot columns)
            values = rows.astype(np.int64).tolist()
        classes = self._class_json
        lines = []
        for row, decision in enumerate(decisions):
            parts = [prefix, str(row)]
            if values is not None:
                parts += [',"input":', _compact(values[row])]
            elif inputs == "hash":
                value = rows[row]
                raw = str(value).encode() if text else np.asarray(value, "<f4").tobytes()
                parts += [',"input_sha256":"', hashlib.sha256(raw).hexdigest(), '"']
            label = labels[row]
            parts += [',"label":', str(label)]
            if classes is not None and label < len(classes):
                parts += [',"class":', classes[label]]
            parts += [
                ',"answered_by":', _compact(decision.answered_by),
                ',"confidence":', _number(_confidence(decision)),
                ',"top_probability":', _number(round(tops[row], 6)),
                ',"degraded":', "true" if decision.degraded else "false",
                ',"gear":', _compact(decision.gear or "normal"),
            ]  # fmt: skip
            if decision.cache_hit:
                parts += [',"cache":', _compact(decision.cache or "exact")]
            if self.section.probabilities:
                chances = [round(p, 6) for p in probabilities[row].tolist()]
                parts += [',"probabilities":', _compact(chances)]
            parts.append("}\n")
            lines.append("".join(parts).encode())
        return lines

    def _class(self, label: int) -> dict[str, str]:
        classes = self.classes
        return {"class": classes[label]} if classes is not None and label < len(classes) else {}


def _number(value: float | None) -> str:
    """A JSON number, ``null`` for none (or a non-finite one, which JSON cannot hold)."""
    return "null" if value is None or not math.isfinite(value) else repr(value)


def _whole_numbers(rows: np.ndarray) -> bool:
    """Whether every value of ``rows`` is a whole number that float32 holds exactly."""
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(rows) < 2**24) and np.all(rows == np.trunc(rows)))


def _whole(value: Any) -> bool:
    """A JSON integer (``3`` or ``3.0``), not a boolean."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    )


def _confidence(decision: Any) -> float | None:
    for step in reversed(decision.steps):
        if step.tier == decision.answered_by and step.confidence is not None:
            return round(float(step.confidence), 6)
    return None


def _iso(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


_compact = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per line


def _line(record: dict[str, Any]) -> bytes:
    return (_compact(record) + "\n").encode()
