"""Re-running the model alone, for batches that did not come from a DataLoader (the script's own ``get_batch``).

Such a batch cannot be handed out again, so the in-loop replay is impossible. What can be re-run is the model
itself: the engine keeps *references* (no copies) to the inputs of the micro-batch's first training forward,
and, for that micro-batch only, the gradient that reaches each output of the model during ``backward()``. On
a trip the model's forward and backward run again under the op tracer, from the same RNG state, with those
output gradients (:func:`nanscope.localize.replay.replay` restores gradients, buffers and RNG after). Ops of the
loss, which runs outside the model, are not re-run: if the model alone creates no NaN/Inf, the origin lies
outside it, and the report says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nanscope._tree import iter_tensors

__all__ = ["ModelCall"]


def _outputs(output: Any) -> list[torch.Tensor]:
    return [t for _, t in iter_tensors(output, "output") if t.requires_grad and t.is_floating_point()]


@dataclass(eq=False)
class ModelCall:
    module: nn.Module
    args: Any
    kwargs: Any
    grads: dict[int, torch.Tensor] = field(default_factory=dict)  # output position -> gradient reaching it
    hooked: bool = False

    def watch_gradients(self, output: Any) -> None:
        """Keep the gradient that reaches each output during the coming backward (a hook per output)."""
        self.hooked = True
        for position, tensor in enumerate(_outputs(output)):
            tensor.register_hook(functools.partial(self._keep, position))

    def _keep(self, position: int, grad: torch.Tensor) -> None:
        self.grads[position] = grad

    def forget_gradients(self) -> None:
        self.grads = {}

    def rerun(self, _batch: Any = None, *, backward: bool) -> None:
        """The model's forward, and with ``backward`` its backward from the kept output gradients."""
        output = self.module(*self.args, **self.kwargs)
        if not backward:
            return
        pairs = [(t, self.grads[i]) for i, t in enumerate(_outputs(output)) if i in self.grads]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
