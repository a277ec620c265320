"""Zero-code replay: the script's own loop runs the failing step again, under op tracing.

Nobody handed nanscope a step function, so the step is replayed by the script itself. When a NaN whose cause
is not in the data, weights or hyperparameters trips under ``stop``, the watcher parks the finding, lets the
step finish with its update skipped (every gradient set to ``None``: no weight, optimizer-state or step-count
change), and makes the next ``next()`` on any tracked DataLoader iterator return the same batch. At that
batch's first training forward the random number state of the failing step is restored and an
:class:`~nanscope.localize.trace.OpTracer` is entered; when its ``backward()`` returns, the tracer is left and
the diagnosis, now with the op, is raised. Side effects the script sees: one extra iteration of its loop
(its prints and, if it steps one, an LR scheduler step); the weights are those before the failing update.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from nanscope.detect.diagnose import Observation
from nanscope.localize.replay import RngState
from nanscope.localize.trace import OpTracer

__all__ = ["Refeed", "Stage"]


class Stage(enum.Enum):
    PARKED = "parked"  # the failing step finishes, its update skipped; waiting for the next next()
    ARMED = "armed"  # the batch was handed out again; waiting for its first training forward
    TRACING = "tracing"  # forward, loss and backward run under the tracer
    DONE = "done"


@dataclass(eq=False)
class Refeed:
    observation: Observation
    batch: Any
    dataset: Any  # the failing batch is handed out again only by a loader over this Dataset
    rng: RngState
    tracer: OpTracer
    batch_size: int | None
    index_list: list[int] | None
    loss_nan: bool
    stage: Stage = Stage.PARKED
    entered: bool = field(default=False)

    def take_batch(self) -> Any:
        self.stage = Stage.ARMED
        return self.batch

    def start(self) -> None:
        self.rng.restore()
        self.tracer.__enter__()
        self.entered = True
        self.stage = Stage.TRACING

    def stop(self) -> None:
        if self.entered:
            self.entered = False
            self.tracer.__exit__(None, None, None)
        self.stage = Stage.DONE
