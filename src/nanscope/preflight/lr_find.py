"""A NaN-safe learning-rate range test: the LR swept exponentially, one value per optimizer step, stopped at
divergence, with a suggestion and the seed's advice in words ("start at X; divergence from Y").

Divergence is a non-finite loss (where torch-lr-finder and Lightning's finder, which stop on ``loss > k * best``,
never stop: ``nan > x`` is false) or a smoothed loss above :data:`DIVERGE` x its best (a loss whose best is
<= 0: risen above its best by ``DIVERGE - 1`` x its fall from the start). The smoothed loss is an
exponential moving average (``BETA``, bias-corrected). **Suggestion rule**: the LR at the smoothed loss's
minimum, divided by 10 (and at most a tenth of the LR where it diverged): a decade below the bottom of the
curve, where the loss still falls fast and far from the blow-up. ``bench/lr_find.py`` validates it against a
grid of real short training runs.

:func:`lr_find` runs the sweep on a model, optimizer and loader (all param groups keep their ratios) and puts the
model, the optimizer and the random streams back; ``nanscope lr-find script.py`` runs it through the script's
own loop (:class:`SweepProbe`).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nanscope.errors import UsageError
from nanscope.localize.replay import RngState
from nanscope.preflight.probe import ProbeDone, scalar_loss
from nanscope.watching.events import MISSING, IgnoreEvents
from nanscope.watching.hooks import Hooks

__all__ = ["SCHEMA", "LRFindResult", "Sweep", "SweepProbe", "lr_find"]

SCHEMA = "nanscope.lrfind/1"
BETA = 0.9  # smoothing of the loss: about 10 steps, under a decade of LR at 12.5 steps per decade
DIVERGE = 4.0


@dataclass(frozen=True, slots=True)
class LRFindResult:
    points: tuple[tuple[float, float], ...]  # (lr, loss of that step's batch before its update)
    smoothed: tuple[float, ...]
    suggested_lr: float | None
    min_loss_lr: float | None
    diverged_at: float | None  # the LR at which the loss became non-finite or left DIVERGE x its best
    stop: str  # "nonfinite", "diverged", "end" (all steps run), "data" (the loader ran out)
    schema: str = SCHEMA

    def advice(self) -> str:
        if self.suggested_lr is None:
            return (
                "no suggestion: the loss never fell during the sweep (raise --end, or check the model first)"
            )
        text = f"start at {self.suggested_lr:.3g}"
        if self.diverged_at is not None:
            how = "NaN/Inf" if self.stop == "nonfinite" else f"over {DIVERGE:g}x its best"
            text += f"; divergence from {self.diverged_at:.3g} (the loss went {how})"
        else:
            text += f"; no divergence up to {self.points[-1][0]:.3g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | str:
            return v if math.isfinite(v) else str(v)

        return {
            "schema": self.schema,
            "suggested_lr": self.suggested_lr,
            "min_loss_lr": self.min_loss_lr,
            "diverged_at": self.diverged_at,
            "stop": self.stop,
            "advice": self.advice(),
            "points": [[lr, num(loss)] for lr, loss in self.points],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


class Sweep:
    """The sweep's state: the LR of each step, the losses seen, when to stop, the result."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        if not (0 < start < end and math.isfinite(end)):
            raise UsageError(f"the LR sweep needs 0 < start < end, finite; got start={start}, end={end}")
        if steps < 10:
            raise UsageError(f"the LR sweep needs at least 10 steps, got {steps}")
        self.start, self.end, self.steps = start, end, steps
        self.points: list[tuple[float, float]] = []
        self.smoothed: list[float] = []
        self._avg = 0.0
        self.stop: str | None = None

    def lr(self, i: int) -> float:
        return self.start * (self.end / self.start) ** (i / (self.steps - 1))

    def record(self, lr: float, loss: float) -> bool:
        """One step's loss at ``lr``; True when the sweep is over."""
        self.points.append((lr, loss))
        if not math.isfinite(loss):
            self.stop = "nonfinite"
            return True
        self._avg = BETA * self._avg + (1 - BETA) * loss
        self.smoothed.append(self._avg / (1 - BETA ** len(self.smoothed + [0.0])))
        if len(self.smoothed) > 5 and self._diverged(self.smoothed[-1], min(self.smoothed)):
            self.stop = "diverged"
            return True
        if len(self.points) >= self.steps:
            self.stop = "end"
            return True
        return False

    def _diverged(self, now: float, best: float) -> bool:
        """Over DIVERGE x the best; a loss that can reach 0 or below (a likelihood without its constant):
        risen above its best by (DIVERGE - 1) x its fall from the start."""
        if best > 0:
            return now > DIVERGE * best
        return now - best > (DIVERGE - 1) * max(self.smoothed[0] - best, 1e-12)

    def result(self, stop: str | None = None) -> LRFindResult:
        stop = stop or self.stop or "data"
        diverged = self.points[-1][0] if stop in ("nonfinite", "diverged") and self.points else None
        suggested = low = None
        usable = self.smoothed[: len(self.smoothed) - (1 if stop == "diverged" else 0)]
        if len(usable) >= 3:
            i = min(range(len(usable)), key=usable.__getitem__)
            if usable[i] < usable[0]:  # the loss fell at all
                low = self.points[i][0]
                suggested = low / 10
                if diverged is not None:
                    suggested = min(suggested, diverged / 10)
        return LRFindResult(tuple(self.points), tuple(self.smoothed), suggested, low, diverged, stop)


def _set_lr(optimizer: torch.optim.Optimizer, ratios: list[float], lr: float) -> None:
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr * ratio)
        else:
            group["lr"] = lr * ratio


def _ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(lrs) if lrs and max(lrs) > 0 else 1.0
    return [lr / top if top > 0 else 1.0 for lr in lrs]


def lr_find(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
) -> LRFindResult:
    """Sweep the LR of ``optimizer`` from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps of
    ``loss_fn(model(x), y)`` on ``(x, y)`` batches of ``data`` (a DataLoader; cycled if it runs out), stop at
    divergence, and put the model, the optimizer and the random streams back as they were."""
    if not isinstance(model, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError("nanscope.lr_find(model, optimizer, data, loss_fn): model must be an nn.Module and "
                         "optimizer a torch.optim.Optimizer")  # fmt: skip
    sweep = Sweep(start_lr, end_lr, steps)
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    ratios = _ratios(optimizer)
    with RngState.kept(numpy=True):
        try:
            batches = itertools.cycle(data) if hasattr(data, "__len__") else iter(data)
            for i in range(steps):
                batch = next(batches, MISSING)
                if batch is MISSING:
                    break
                x, y = batch[0], batch[1]
                lr = sweep.lr(i)
                _set_lr(optimizer, ratios, lr)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                value = float(loss.detach())
                if math.isfinite(value):
                    loss.backward()
                    optimizer.step()
                if sweep.record(lr, value):
                    break
        finally:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(opt_state)
            optimizer.zero_grad(set_to_none=True)
    return sweep.result()


class SweepProbe(IgnoreEvents):
    """The :class:`~nanscope.watching.events.Events` listener of ``nanscope lr-find script.py``: before each
    update of the script's first optimizer the LR of every param group is set to the sweep's (ratios kept; the
    script's own scheduler is overridden), the loss handed to ``backward()`` is recorded, and the script is
    stopped (:class:`~nanscope.preflight.probe.ProbeDone`) at divergence or after the last step. Nothing is put back: the run was a probe."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.optimizer: torch.optim.Optimizer | None = None
        self._ratios: list[float] = []
        self._loss: float | None = None
        self._hooks = Hooks(self, lambda: True)
        self._i = 0

    def optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is None:
            self.optimizer = optimizer
            self._hooks.optimizer(optimizer)

    def backward_started(self, tensors: Any) -> None:
        value = scalar_loss(tensors)
        if value is not None:
            self._loss = value
            if not math.isfinite(value):  # no update will follow a NaN loss in most loops: stop here
                self.sweep.record(self.sweep.lr(self._i), self._loss)
                raise ProbeDone

    def before_update(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is not self.optimizer:
            return
        if not self._ratios:
            self._ratios = _ratios(optimizer)
        lr = self.sweep.lr(self._i)
        _set_lr(optimizer, self._ratios, lr)
        if self._loss is not None and self.sweep.record(lr, self._loss):
            raise ProbeDone
        self._i += 1

    def close(self) -> None:
        self._hooks.remove()
