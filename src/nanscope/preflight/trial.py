"""The model-side checks on a copy: one recorded iteration, then the one-batch overfit with the reference
optimizer (:mod:`nanscope.preflight.model_checks`). The caller's model, optimizer and random streams are
left as they were."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from nanscope.localize.replay import RngState
from nanscope.preflight.model_checks import OVERFIT_LR, Overfit, iteration_findings, overfit_findings
from nanscope.preflight.recorder import Recorder
from nanscope.preflight.report import Results

__all__ = ["OVERFIT_STEPS", "on_copy", "reference_optimizer"]

OVERFIT_STEPS = 20
OVERFIT_ROWS = (
    8  # "overfit a single batch of only a few examples": fitting them is a matter of bugs, not capacity
)


def reference_optimizer(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer of the one-batch overfit: the same for every model, so that a failure is not the
    hyperparameters'."""
    return torch.optim.Adam(params, lr=OVERFIT_LR)


def _optimizer_copy(opt: torch.optim.Optimizer, model: nn.Module, clone: nn.Module) -> torch.optim.Optimizer:
    """``opt`` over ``clone``'s parameters (matched by position in the model), with its state."""
    twin = {id(p): q for p, q in zip(model.parameters(), clone.parameters(), strict=True)}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [twin[id(p)] for p in g["params"]]}
        for g in opt.param_groups
    ]
    out: torch.optim.Optimizer = type(opt)(groups)  # type: ignore[call-arg]  # subclasses take (params)
    out.load_state_dict(opt.state_dict())
    return out


def on_copy(
    results: Results,
    model: nn.Module,
    batch: tuple[Any, Any],
    loss_fn: Any,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """The model-side checks of ``model`` with ``loss_fn`` on ``batch``, all on copies, into ``results``."""
    with RngState.kept(numpy=True):
        clone = copy.deepcopy(model)
        clone.train(model.training)
        recorder = Recorder([clone])
        try:
            loss = loss_fn(clone(batch[0]), batch[1])
            recorder.loss(loss)
            loss.backward()
            recorder.gradients()
            if optimizer is not None:
                try:
                    twin = _optimizer_copy(optimizer, model, clone)
                except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                    results.not_checked["exploding_gradients (update)"] = (
                        f"the optimizer could not be copied ({exc!r})"
                    )
                else:
                    recorder.before_update(clone.parameters())
                    twin.step()
                    recorder.after_update(restore=True)
        finally:
            recorder.detach()
        results.add(*iteration_findings(recorder.result))
        clone.zero_grad(set_to_none=True)
        reference = reference_optimizer([p for p in clone.parameters() if p.requires_grad])
        losses = []
        x, y = batch[0][:OVERFIT_ROWS], batch[1][:OVERFIT_ROWS]
        for _ in range(OVERFIT_STEPS + 1):
            value = loss_fn(clone(x), y)
            losses.append(float(value.detach()))
            reference.zero_grad(set_to_none=True)
            value.backward()
            reference.step()
        overfit = Overfit(tuple(losses), where=type(model).__name__)
        results.maybe("cannot_overfit_batch", *overfit_findings(overfit, OVERFIT_STEPS))
