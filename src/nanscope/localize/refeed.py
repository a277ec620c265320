"""Zero-code replay: the script's own loop runs the failing micro-batch again, under op tracing.

Nobody handed nanscope a step function, so the step is replayed by the script itself. When a NaN whose cause
is not in the data, weights or hyperparameters trips, the engine parks the finding, lets the step finish with
its update skipped (every gradient set to ``None``: no weight, optimizer-state or step-count change), and the
next ``next()`` on a loader over the same Dataset hands out the failing batch again. The batch takes its place
in that loader's order (:mod:`nanscope.watching.batches`), so a loader that reads ahead yields it when its
turn comes; iterations that consume other batches before it are discarded too. At the first training forward
that consumes it, the random number state of the failing micro-batch is restored. The
:class:`~nanscope.localize.trace.OpTracer` is entered when the batch is handed out, so the whole iteration is
traced: the loop's own handling of the batch before the model (class weights from its labels, normalizers),
the forward, the loss and backward. Updates of iterations that come before the consuming one (a loader that
reads ahead) make the tracer forget what it saw. At the update that follows the consuming micro-batch
(outside any torch-function mode, unlike ``backward()``) the tracer is left and the diagnosis, now with the
op, is concluded.

Side effects the script sees: extra iterations of its loop (its prints and, if it steps one, an LR scheduler
step), whose updates are discarded; the weights are those before the failing update.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from nanscope.localize.model_call import ModelCall
from nanscope.localize.replay import RngState
from nanscope.localize.trace import OpFinding, OpTracer

__all__ = ["Refeed", "Stage"]


class Stage(enum.Enum):
    PARKED = "parked"  # the failing step finishes, its update skipped; waiting for the next next()
    HANDED_OUT = "handed_out"  # the batch was handed out again; waiting for the micro-batch consuming it
    TRACING = "tracing"  # that micro-batch's forward, loss and backward run under the tracer
    OVER = "over"


@dataclass(eq=False)
class Refeed:
    observation: Any  # the engine's observation of the failing step, completed with the replay's finding
    batch: Any
    dataset: Any  # the failing batch is handed out again only by a loader over this Dataset
    rng: RngState
    tracer: OpTracer
    batch_size: int | None
    index_list: list[int] | None
    loss_nan: bool
    stage: Stage = Stage.PARKED
    replayed_finite: bool = False  # the replay ran and no op of it produced a NaN/Inf
    model_call: ModelCall | None = (
        None  # the replayed micro-batch's first model call (counterfactual re-runs)
    )

    def hand_out(self, dataset: Any) -> bool:
        """Whether the next batch of a loader over ``dataset`` is the failing one again; if so, tracing
        starts now (the loop's handling of the batch before the model is part of the iteration)."""
        if self.stage is not Stage.PARKED or dataset is not self.dataset:
            return False
        self.stage = Stage.HANDED_OUT
        if not self.tracer.entered:
            self.tracer.__enter__()
        self.tracer.reset()
        return True

    def lost(self) -> None:
        """The batch handed out again was dropped unconsumed (its loader iterator ended): park it again."""
        if self.stage is Stage.HANDED_OUT:
            self.stage = Stage.PARKED

    def passed(self) -> None:
        """An update of an iteration before the consuming one: what the tracer saw belongs to that one."""
        if self.stage is Stage.HANDED_OUT:
            self.tracer.reset()

    def start(self, module: str | None, call: ModelCall | None = None) -> None:
        """The micro-batch that consumes the failing batch begins (its first forward, of the module named
        ``module``, is starting; the tracer's forward hook, registered after nanscope's, sees it next): the
        RNG of the failing micro-batch is restored. ``call`` (references to that forward's module and
        inputs) lets the model be re-run on parts of the batch afterwards (counterfactual samples)."""
        self.rng.restore()
        self.stage = Stage.TRACING
        self.model_call = call

    def stop(self) -> OpFinding | None:
        """Leave the tracer (if entered) and return the op that created the first NaN/Inf, if any."""
        tracing = self.stage is Stage.TRACING
        self.stage = Stage.OVER
        if self.tracer.entered:
            self.tracer.__exit__(None, None, None)
        if not tracing:
            return None
        self.replayed_finite = not self.tracer.saw_nonfinite
        return self.tracer.pick(self.observation.trigger, self.loss_nan)
