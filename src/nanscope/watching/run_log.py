"""The run log: finished iterations (bounded), the current one, timing, and capped lists of records.

Everything the report's ``history`` and counters come from lives here, so building them never re-enters
the engine.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nanscope.report.model import History
from nanscope.watching.state import Iteration

__all__ = ["Capped", "RunLog"]

T = TypeVar("T")


@dataclass
class Capped(Generic[T]):
    """A list that keeps its first ``limit`` items and counts the ones it dropped."""

    limit: int = 100
    items: list[T] = field(default_factory=list)
    dropped: int = 0

    def add(self, item: T) -> None:
        if len(self.items) < self.limit:
            self.items.append(item)
        else:
            self.dropped += 1


class RunLog:
    def __init__(self, history: int) -> None:
        self._done: deque[Iteration] = deque(maxlen=history)
        self.dropped = 0  # finished iterations that fell out of the history
        self.current = Iteration(step=0)
        self.watched = 0  # iterations that ended (applied or discarded): nanscope saw them
        self.scaler_skipped = 0  # iterations a GradScaler ended without an update
        self._tick = time.perf_counter()  # when the last iteration ended
        self._durations: deque[float] = deque(maxlen=64)  # wall time of the last applied iterations
        self.seconds_lost = 0.0  # wall time of discarded iterations

    def finish(
        self, step: int, *, applied: bool, keep: bool = True, scaler_skipped: bool = False
    ) -> Iteration:
        """End the current iteration; the next starts at ``step``. Returns the finished one."""
        self.scaler_skipped += scaler_skipped
        it, self.current = self.current, Iteration(step=step)
        it.done = True
        self.watched += 1
        now = time.perf_counter()
        took, self._tick = now - self._tick, now
        if applied:
            self._durations.append(took)
        else:
            self.seconds_lost += took
        if keep:
            if len(self._done) == self._done.maxlen:
                self.dropped += 1
            self._done.append(it)
        return it

    def median_step_seconds(self) -> float:
        ordered = sorted(self._durations)
        return ordered[len(ordered) // 2] if ordered else 0.0

    def history(self) -> History:
        entries = list(self._done)
        if self.current.losses or self.current.grad_sq is not None:
            entries.append(self.current)
        return History(
            step=tuple(e.step for e in entries),
            loss=tuple(e.mean_loss for e in entries),
            grad_norm=tuple(e.grad_norm for e in entries),
            lr=tuple(e.lr for e in entries),
            dropped=self.dropped,
        )
