"""The engine's input: the small set of events every producer reports, and nothing else.

Producers are the module and optimizer hooks of :class:`~nanscope.watching.watcher.Watcher` (the Python API),
the global patches of :mod:`nanscope.watching.patches` (``nanscope run``, and DataLoaders under the API), and
later the framework adapters and the distributed coordinator. None of them reaches into the engine; each calls
these methods, in the order the training loop produces them:

=====================  ==========================================================================================
``batch_drawn``        a loader handed out a batch (dataset indices, source, dataset, the iterator); a batch
                       belongs to the micro-batch that *consumes* it, not to the one running when it was drawn
``forward_started``    a training forward of a watched module begins (the first one of a micro-batch consumes
                       the oldest unconsumed batch, or the batch whose tensors it is fed)
``forward_ended``      ... and returned ``output`` (the hooks' arguments: ``module, args, output``)
``backward_started``   ``backward()`` was handed ``tensors`` (the loss)
``backward_ended``     ``backward()`` returned: the gradients as backward left them, before any clip or unscale
``clipped``            the script clips the gradients (``clip_grad_norm_`` / ``clip_grad_value_``) at ``limit``
``before_update``      the optimizer is about to apply its update (after the closure, under ``step(closure)``)
``after_update``       the optimizer applied it
``update_skipped``     a GradScaler found Inf/NaN gradients and did not call ``step()``
=====================  ==========================================================================================

Two queries let the data producer act on the engine's decisions: ``batch_to_replay`` (the failing batch,
handed out again for the in-loop replay) and ``excluded_indices`` (quarantined samples).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["Events", "IgnoreEvents", "MISSING"]

#: ``batch_to_replay`` returns this when there is nothing to hand out again.
MISSING: Any = object()


class Events(Protocol):
    def optimizer_created(self, optimizer: torch.optim.Optimizer) -> None: ...

    def batch_drawn(self, batch: Any, indices: Any, source: str, dataset: Any, loader: Any) -> None: ...

    def batch_to_replay(self, dataset: Any) -> Any: ...

    def excluded_indices(self, dataset: Any) -> frozenset[int]: ...

    def forward_started(self, module: nn.Module, args: Any, kwargs: Any) -> None: ...

    def forward_ended(self, module: nn.Module, args: Any, output: Any) -> None: ...

    def backward_started(self, tensors: Any) -> None: ...

    def backward_ended(self, tensors: Any) -> None: ...

    def clipped(self, kind: str, limit: float) -> None: ...

    def before_update(self, optimizer: torch.optim.Optimizer) -> None: ...

    def after_update(self, optimizer: torch.optim.Optimizer) -> None: ...

    def update_skipped(self, optimizer: torch.optim.Optimizer) -> None: ...


class IgnoreEvents:
    """A listener that ignores every event: listeners that need a few (``nanscope check``'s probe, the LR
    sweep) override those."""

    def optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def batch_drawn(self, batch: Any, indices: Any, source: str, dataset: Any, loader: Any) -> None:
        pass

    def batch_to_replay(self, dataset: Any) -> Any:
        return MISSING

    def excluded_indices(self, dataset: Any) -> frozenset[int]:
        return frozenset()

    def forward_started(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        pass

    def forward_ended(self, module: nn.Module, args: Any, output: Any) -> None:
        pass

    def backward_started(self, tensors: Any) -> None:
        pass

    def backward_ended(self, tensors: Any) -> None:
        pass

    def clipped(self, kind: str, limit: float) -> None:
        pass

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def update_skipped(self, optimizer: torch.optim.Optimizer) -> None:
        pass
