"""FakeModel: a scripted backend for unit tests of the core (never used in serving)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from cascade.backends._base import InputSpec, validate_batch

__all__ = ["FakeModel"]


class FakeModel:
    """A model whose answers, latency and failures are set by the test.

    Example::

        model = FakeModel(lambda rows: np.tile([0.9, 0.1], (len(rows), 1)), width=4)
        probabilities = await model.predict(np.zeros((2, 4)))
        assert model.calls == [2]

    ``answer`` maps validated float32 rows to probabilities. ``fail_with`` makes every call
    raise that exception (after ``latency_s``), as a crashed or unreachable tier would.
    """

    def __init__(
        self,
        answer: Callable[[np.ndarray], np.ndarray],
        *,
        width: int | None = None,
        name: str = "fake",
        input_name: str = "input",
        latency_s: float = 0.0,
        fail_with: BaseException | None = None,
    ) -> None:
        self.name = name
        self.input_spec = InputSpec(name=input_name, width=width)
        self._answer = answer
        self.latency_s = latency_s
        self.fail_with = fail_with
        self.calls: list[int] = []

    def predict_sync(self, batch: Any) -> np.ndarray:
        rows = validate_batch(batch, self.input_spec)
        self.calls.append(len(rows))
        if self.fail_with is not None:
            raise self.fail_with
        return np.asarray(self._answer(rows), dtype=np.float32)

    async def predict(self, batch: Any) -> np.ndarray:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return self.predict_sync(batch)
