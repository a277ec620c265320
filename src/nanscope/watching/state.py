"""What the watcher keeps per training iteration and per optimizer."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from nanscope.localize.replay import RngState

__all__ = ["Iteration", "Tracked"]


@dataclass(eq=False)
class Iteration:
    """What one training iteration saw; released once its values are read."""

    step: int
    losses: list[float] = field(default_factory=list)
    grad_sq: float | None = None
    lr: float | None = None
    # batch, indices, source, and the Dataset it came from (None for observe_batch)
    batches: list[tuple[Any, Any, str, Any]] = field(default_factory=list)
    # one 0-d sum per training forward, on the device; read only after a trigger
    output_sums: list[torch.Tensor] = field(default_factory=list)
    pending: int = 0
    done: bool = False
    forward_checked: bool = False
    inf_loss: bool = False  # an infinite (not NaN) loss, judged at the step: a GradScaler may own it
    scaler_step: bool | None = None  # None until a step starts; True when a GradScaler drives it
    rng: RngState | None = None  # RNG at the first training forward (kept only when a step_fn can replay)
    bad_buffers_at_start: tuple[str, ...] = ()
    failed: bool = False  # a non-finite value was handled for this iteration
    discard: bool = False  # the policy discards this iteration's update
    clip_threshold: float | None = None  # the grad-norm limit clipping applied at this step
    settled: bool = False  # every value read and the recovery bookkeeping done
    # (buffer, copy) at the first training forward, under skip/rollback: a discarded step puts them back
    buffers_before: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def release(self) -> None:
        if self.done and self.pending == 0:
            self.batches, self.output_sums, self.rng, self.buffers_before = [], [], None, []


@dataclass(eq=False)
class Tracked:
    optimizer: weakref.ref[torch.optim.Optimizer]
    index: int
    steps: int = 0
    checked: bool = False
    bad_before: tuple[str, ...] = ()
    readings: list[Any] = field(default_factory=list)  # this step's gradient probe (for clipping)
