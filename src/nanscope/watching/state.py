"""What the engine keeps per training iteration and per watched optimizer.

An *iteration* is the work between two weight updates (all watched optimizers stepped once; with no
optimizer, one ``backward()``); a *micro-batch* is one ``backward()`` and the forwards before it. The step
index of an iteration is the number of optimizer steps completed before it (with no optimizer: backward
calls).
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from nanscope.localize.model_call import ModelCall
from nanscope.localize.replay import RngState
from nanscope.watching.batches import Drawn
from nanscope.watching.param_groups import GroupReader
from nanscope.watching.proof import Bound

__all__ = ["Iteration", "WatchedOptimizer"]

_PARAMS = operator.itemgetter("params")


@dataclass(eq=False, slots=True)
class Iteration:
    """What one training iteration saw; released once its values are read."""

    step: int
    losses: list[float] = field(default_factory=list)
    grad_sq: float | None = None  # squared global grad norm after the newest backward (accumulated)
    grad_backward: int = -1  # which backward of the iteration grad_sq was read after
    lr: float | None = None
    batches: list[Drawn] = field(default_factory=list)  # one per micro-batch, in consumption order
    # one 0-d "all finite" flag per training forward output, on the device; read only after a trigger
    output_flags: list[torch.Tensor] = field(default_factory=list)
    pending: int = 0  # device values submitted and not read yet
    done: bool = False  # the iteration ended (update applied or discarded)
    started: bool = False  # its first training forward ran
    in_micro_batch: bool = False  # a training forward ran since the last backward
    first_module: int | None = None  # id of the module whose forward began the current micro-batch
    keep_output: bool = False  # keep the finiteness of that module's output (no replay can find the op)
    backwards: int = 0
    scaled: bool = False  # a GradScaler scaled a loss of this iteration (it judges the gradients itself)
    rng: RngState | None = None  # RNG at the failing micro-batch's first forward (for the replay)
    # the micro-batch's model call, when its batch did not come from a DataLoader (re-run of the model alone)
    model_call: ModelCall | None = None
    # under rollback: the first model call of the iteration (references), to re-run as "the last good batch"
    first_call: ModelCall | None = None
    bad_buffers_at_start: tuple[str, ...] = ()
    failed: bool = False  # a non-finite value was handled for this iteration
    discard: bool = False  # the policy discards this iteration's update
    clip_threshold: float | None = None  # the grad-norm limit nanscope's adaptive clipping applied
    script_clip: tuple[str, float] | None = None  # ("norm" | "value", limit) when the script clipped
    settled: bool = False  # every value read and the bookkeeping done
    # (buffer, copy) at the first training forward, under skip/rollback: a discarded step puts them back
    buffers_before: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def mean_loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None

    @property
    def grad_norm(self) -> float | None:
        return None if self.grad_sq is None else math.sqrt(self.grad_sq)

    def release(self) -> None:
        if self.done and self.pending == 0:
            self.batches, self.output_flags, self.rng, self.buffers_before = [], [], None, []
            self.model_call = self.first_call = None


@dataclass(eq=False, slots=True)
class WatchedOptimizer:
    optimizer: weakref.ref[torch.optim.Optimizer]
    index: int
    steps: int = 0
    checked: bool = False  # its weights were checked once before its first update
    bad_before: tuple[str, ...] = ()
    readings: list[Any] = field(default_factory=list)  # the last gradient probe (for adaptive clipping)
    bound: Bound | None = None  # bounds proving its updates finite since the last read of the weights
    groups: GroupReader = field(default_factory=GroupReader)  # its param groups' numbers, checked each step

    _params: list[torch.Tensor] = field(default_factory=list)
    _layout: tuple[int, ...] = ()  # param-group sizes the cached list was built from

    def params(self) -> list[torch.Tensor]:
        """The optimizer's parameters, in param-group order (rebuilt when its groups change)."""
        opt = self.optimizer()
        if opt is None:
            return []
        layout = tuple(map(len, map(_PARAMS, opt.param_groups)))  # (C-level: called three times a step)
        if layout != self._layout:
            self._params, self._layout = [p for g in opt.param_groups for p in g["params"]], layout
        return self._params
