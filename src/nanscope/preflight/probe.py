"""``nanscope check script.py``: the script's own loop as the probe, stopped after its first steps.

:class:`Probe` listens to the global patches (:mod:`nanscope.watching.patches`) while the unmodified script runs:

1. it learns every optimizer as it is created (and the models that own its parameters: a :class:`Recorder` is
   attached to them), every DataLoader's dataset and the first batch it hands out;
2. the first iteration is recorded (forward activations, the loss graph, gradients, the first update, which is
   then undone: the weights go back to their initial values);
3. from then on every batch the first DataLoader hands out is that first batch again, and each update of the
   script's optimizer is replaced by the reference optimizer's (:func:`nanscope.preflight.trial.reference_optimizer`)
   over the same parameters: the script's own forward and loss train the model on one batch, whatever its
   learning rate;
4. after ``steps`` such updates :class:`ProbeDone` (a ``BaseException``, so that the script's ``except Exception``
   does not swallow it) ends the script: nothing it would do after that point is done.

A probe is a probe: the script's model is trained on one batch and not put back.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from nanscope.preflight.recorder import Recorder
from nanscope.preflight.trial import reference_optimizer
from nanscope.recover.actions import discard_update, find_schedulers_and_scalers
from nanscope.watching.discovery import find_roots, graph_parameters
from nanscope.watching.events import MISSING, IgnoreEvents
from nanscope.watching.hooks import Hooks

__all__ = ["Probe", "ProbeDone", "scalar_loss"]


#: an LR scheduler, its ``state_dict()`` and its optimizer's param-group values at the first step
SchedulerAtStart = tuple[Any, dict[str, Any], list[dict[str, Any]]]


class ProbeDone(BaseException):
    """Ends a probed script (``nanscope check``, ``nanscope lr-find``) once the probe has what it needs."""


def scalar_loss(tensors: Any) -> float | None:
    """The value of the scalar loss handed to ``backward()`` (the first tensor), or None (not a scalar)."""
    first = tensors if isinstance(tensors, torch.Tensor) else next(iter(tensors or ()), None)
    if isinstance(first, torch.Tensor) and first.numel() == 1:
        return float(first.detach())
    return None


def _clone(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, dict):
        return (
            type(batch)({k: _clone(v) for k, v in batch.items()}) if type(batch) is dict else _copy_map(batch)
        )
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_clone(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_clone(v) for v in batch)
    return batch


def _copy_map(batch: Any) -> Any:
    """A mapping type with its own constructor (HF's ``BatchEncoding``): the same object type, tensors cloned."""
    import copy

    out = copy.copy(batch)
    for k in list(batch.keys()):
        out[k] = _clone(batch[k])
    return out


class Probe(IgnoreEvents):
    """The :class:`~nanscope.watching.events.Events` listener of ``nanscope check`` (see the module doc)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.optimizers: list[torch.optim.Optimizer] = []
        self.models: list[nn.Module] = []
        self.datasets: list[Any] = []  # every DataLoader's dataset, first seen first
        self.workers: dict[int, int] = {}  # id(dataset) -> its DataLoader's worker processes
        self.schedulers: list[SchedulerAtStart] = []
        self.recorder: Recorder | None = None
        self.overfit_losses: list[float] = []
        self.overfit_skipped: str | None = None
        self.updates = 0  # the script's optimizer steps seen
        self._hooks = Hooks(self, lambda: True)
        self._first_batch: Any = MISSING
        self._first_dataset: Any = None
        self._reference: torch.optim.Optimizer | None = None
        self._making_reference = False
        self._backward_loss: float | None = None

    # ------------------------------------------------------------------ what the script creates
    def _learn_models(self, params: list[torch.Tensor]) -> None:
        roots = [m for m in find_roots(params) if all(m is not k for k in self.models)]
        self.models += roots
        if self.recorder is None and roots:
            self.recorder = Recorder(roots)

    def optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        if self._making_reference or any(optimizer is o for o in self.optimizers):
            return
        self.optimizers.append(optimizer)
        self._hooks.optimizer(optimizer)
        self._learn_models([p for g in optimizer.param_groups for p in g["params"]])

    def batch_drawn(self, batch: Any, indices: Any, source: str, dataset: Any, loader: Any) -> None:
        if dataset is not None and all(dataset is not d for d in self.datasets):
            self.datasets.append(dataset)
            self.workers[id(dataset)] = int(getattr(loader, "_num_workers", 0) or 0)
        if self._first_batch is MISSING and dataset is not None:
            self._first_batch, self._first_dataset = _clone(batch), weakref.ref(dataset)

    def batch_to_replay(self, dataset: Any) -> Any:
        if self.updates == 0 or self._first_batch is MISSING or self._first_dataset is None:
            return MISSING
        if dataset is not None and dataset is self._first_dataset():
            return _clone(self._first_batch)
        return MISSING

    # ------------------------------------------------------------------ the iteration

    def backward_started(self, tensors: Any) -> None:
        if not self.models:  # a loop without an optimizer object: the parameters behind the loss
            self._learn_models(graph_parameters(tensors))
        if self.updates == 0 and self.recorder is not None:
            self.recorder.loss(tensors)
        value = scalar_loss(tensors)
        if value is not None:
            self._backward_loss = value

    def backward_ended(self, tensors: Any) -> None:
        if self.updates == 0 and self.recorder is not None:
            self.recorder.gradients()

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.updates == 0:
            if self.recorder is not None:
                self.recorder.before_update(params)
            schedulers, _ = find_schedulers_and_scalers(self.optimizers)
            self.schedulers = [
                (
                    s,
                    s.state_dict(),
                    [{k: v for k, v in g.items() if k != "params"} for g in s.optimizer.param_groups],
                )
                for s in schedulers
                if hasattr(s, "state_dict")
            ]
            if self._backward_loss is not None:
                self.overfit_losses.append(self._backward_loss)
            return
        if optimizer is not self.optimizers[0]:
            discard_update(params)
            return
        if self._backward_loss is not None:
            self.overfit_losses.append(self._backward_loss)
        if self._reference is None:
            self._making_reference = True
            try:
                self._reference = reference_optimizer([p for p in params if p.requires_grad])
            finally:
                self._making_reference = False
        self._reference.step()
        discard_update(params)  # the script's own update does nothing

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        if self.updates == 0 and self.recorder is not None:
            self.recorder.after_update(restore=True)
        self.updates += 1
        if len(self.optimizers) > 1 and self.updates == 1:
            self.overfit_skipped = (
                f"the script steps {len(self.optimizers)} optimizers (one batch of a GAN or a multi-model "
                "loop does not tell a bug)"
            )
            raise ProbeDone
        if self._first_batch is MISSING and self.updates == 1:
            self.overfit_skipped = "the script's batches do not come from a DataLoader"
            raise ProbeDone
        if self.updates > self.steps:
            raise ProbeDone

    def close(self) -> None:
        self._hooks.remove()
        if self.recorder is not None:
            self.recorder.detach()
