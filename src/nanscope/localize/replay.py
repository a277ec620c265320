"""Replaying one failing step under the op tracer, and leaving the run exactly as it was.

The step function (``watch(..., step_fn=...)``) runs forward, loss and backward for one batch, with the random
number state of the original step restored (so dropout draws the same masks). Everything replay could change
is put back afterwards: gradients, buffers (BatchNorm statistics move in forward), and every RNG stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nanscope.localize.trace import OpFinding, OpTracer

__all__ = ["RngState", "replay"]


@dataclass(frozen=True)
class RngState:
    cpu: torch.Tensor
    cuda: tuple[torch.Tensor, ...]
    python: object

    @classmethod
    def capture(cls) -> RngState:
        cuda = (
            tuple(torch.cuda.get_rng_state_all())
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else ()
        )
        return cls(torch.get_rng_state(), cuda, random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(list(self.cuda))
        random.setstate(self.python)  # type: ignore[arg-type]


def replay(
    step_fn: Callable[[Any], object],
    batch: Any,
    *,
    start: RngState,
    params: Sequence[torch.Tensor],
    buffers: Sequence[torch.Tensor],
    module_names: dict[int, str],
    batch_size: int | None,
    param_names: dict[int, str] | None = None,
    trigger: str = "loss",
    loss_nan: bool = True,
) -> OpFinding | None:
    """Run ``step_fn(batch)`` from RNG state ``start`` under an :class:`OpTracer`; restore everything after."""
    grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    now = RngState.capture()
    tracer = OpTracer(module_names, batch_size, param_names)
    try:
        for p in params:
            p.grad = None
        start.restore()
        with tracer:
            step_fn(batch)
    finally:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with torch.no_grad():
            for b, s in zip(buffers, saved_buffers, strict=True):
                b.copy_(s)
        now.restore()
    return tracer.pick(trigger, loss_nan)
