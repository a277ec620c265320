"""Updates proven finite: when the weights need not be read after ``optimizer.step()``.

The weights are read after an update because an update can write NaN/Inf into finite weights (Adam with
``eps=0`` divides 0 by 0, a learning rate of 1e35 overflows). For ``torch.optim.SGD``, ``Adam`` and ``AdamW``
the update is a known function of the gradients, the hyperparameters and the optimizer's state, so measured
facts bound every element of it:

- an earlier read after an update found the weights and the first-moment state (SGD's momentum buffers,
  Adam's ``exp_avg``) finite, their largest per-tensor L2 norms ``W`` and ``S`` bounding every element;
- every update since had finite gradients whose norm ``G`` (read when ``backward()`` returned) bounds every
  element, and hyperparameters that are finite host numbers with ``eps > 0`` and betas/momentum in [0, 1).

Then, per param group, with ``g = G + |wd| W`` (L2 weight decay enters the gradient; decoupled decay does not):

- SGD: momentum ``S <- mu S + |1 - dampening| g`` and the step's direction ``D = S`` (Nesterov:
  ``g + mu S``); without momentum ``D = g``;
- Adam/AdamW: ``S <- beta1 S + (1 - beta1) g`` and ``D = S / ((1 - beta1) eps)`` (the bias correction
  ``1 / (1 - beta1^t)`` is at most ``1 / (1 - beta1)``; the denominator ``sqrt(v_hat) + eps`` is at least
  ``eps``; ``v`` is a convex mix of finite squares, so it stays finite). Where the betas have not changed since
  the read and ``beta1^2 < beta2``, also ``D = (beta1^k S_read / eps + K) / (1 - beta1)`` after ``k`` updates,
  ``K = (1 - beta1) / sqrt((1 - beta1^2 / beta2)(1 - beta2))``: ``m`` is the read moment decayed plus a
  weighted sum of gradients that Cauchy-Schwarz bounds by ``K sqrt(v)``, so the step no longer grows with the
  gradients (it does through ``eps`` alone, which with L2 decay would compound every step); the smaller ``D``
  holds;
- ``W <- W (1 + |lr wd|) + |lr| D`` (the first term only under decoupled decay).

While every such bound stays under 1e30 the update has no 0/0, no Inf - Inf and no overflow: a finite float32
or bfloat16 weight plus an update under 1e30 stays finite (half a unit in the last place at float32's largest
value is about 1e31, so even a weight there rounds back). The read after that update is then redundant: it is
skipped. The weights are read (and the bounds re-anchored) at the first update, every ``REREAD``-th update,
after a rollback, after the optimizer's state or param groups are replaced, and whenever a premise fails:
another optimizer class (a subclass too), float16 weights, a tensor learning rate on an accelerator, gradients
not read at the update (a GPU without ``eager``: their values arrive later).

The groups are read column by column (``operator.itemgetter`` mapped over them: C-level), so the proof costs the
same for one param group as for fifty (a learning rate per layer): the bounds are computed once per distinct
set of the other hyperparameters, with the largest learning rate of all the groups. That is exact where the
groups differ only in their learning rates or only in the rest (a weight decay per group) and an upper bound
otherwise, since every bound grows with the learning rate.

What the skip gives up is seeing, right after the update, a weight that code outside the optimizer made
non-finite (a checkpoint loaded into the model mid-run, a bit flip): the loss of the next step that uses it
shows it (the triage then finds the weight non-finite before that step), or the next re-anchoring read.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple

import torch

from nanscope.detect.scan import hyperparameter_numbers

__all__ = ["REREAD", "Bound", "anchor", "advance", "first_moments"]

REREAD = 100  # updates between two reads of the weights, however well the updates in between were proven
_LIMIT = 1e30  # every bound stays below: far from float32's overflow (3.4e38), see the module's doc
_MARGIN = 1.01  # the gradient norm as read (float32 reductions) may round below the true norm
_DTYPES = (torch.float32, torch.bfloat16, torch.float64)
_KINDS: Mapping[type, str] = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}
_MOMENT = {"sgd": "momentum_buffer", "adam": "exp_avg", "adamw": "exp_avg"}
# the hyperparameters besides the learning rate that an update's bound depends on, per kind
_KEYS = {
    "sgd": ("weight_decay", "momentum", "dampening", "nesterov"),
    "adam": ("weight_decay", "betas", "eps", "decoupled_weight_decay"),
    "adamw": ("weight_decay", "betas", "eps", "decoupled_weight_decay"),
}
_LR = operator.itemgetter("lr")
_PLAIN = frozenset({float, int})


class Bound(NamedTuple):
    """Bounds on every element of one optimizer's weights and first-moment state, from the last read on.

    (A NamedTuple: one is made every step, 0.6 us directly against 3.9 us for ``replace()`` of a dataclass.)
    """

    kind: str
    weights: float
    state: float
    update: int  # the optimizer's update count the bounds hold after
    since: int  # updates proven since the read
    read_state: float  # the state's bound at the read
    rows: tuple[tuple[Any, ...], ...]  # each param group's ``columns`` at the read
    params: Sequence[torch.Tensor]  # the parameter list the read covered (compared by identity)
    optimizer_state: object  # the optimizer's state mapping at the read (load_state_dict replaces it)
    # a group's hyperparameters besides the learning rate (those the groups had at the read; an itemgetter)
    columns: Callable[[Mapping[str, Any]], tuple[Any, ...]]


def first_moments(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> list[torch.Tensor] | None:
    """The state tensors a bound covers (momentum buffers or ``exp_avg``), or None for an optimizer whose
    updates are not proven (another class, float16 weights)."""
    kind = _KINDS.get(type(optimizer))
    if kind is None or any(p.dtype not in _DTYPES for p in params):
        return None
    key, state = _MOMENT[kind], optimizer.state
    found = (state.get(p) for p in params)
    return [t for s in found if s and isinstance(t := s.get(key), torch.Tensor)]


def anchor(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    update: int,
    weight_norms: Sequence[float],
    state_norms: Sequence[float],
) -> Bound | None:
    """The bound after a read, after update ``update``, found the weights' and the moments' per-tensor L2
    norms (None: no proof)."""
    kind = _KINDS.get(type(optimizer))
    weights = max(weight_norms, default=0.0)
    state = max(state_norms, default=0.0)
    if kind is None or not (weights < _LIMIT and state < _LIMIT):  # (NaN fails too)
        return None
    groups = optimizer.param_groups
    keys = tuple(k for k in _KEYS[kind] if groups and k in groups[0])
    if len(keys) < 2:  # (torch's SGD, Adam and AdamW fill in all of them: some were removed from the group)
        return None
    columns = operator.itemgetter(*keys)
    rows = tuple(map(columns, groups))
    return Bound(kind, weights, state, update, 0, state, rows, params, optimizer.state, columns)


def advance(
    bound: Bound,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    update: int,
    grad_norm: float | None,
) -> Bound | None:
    """The bound after update ``update`` (the one after the bound's) with gradients of norm ``grad_norm``, or
    None when that update is not proven to keep the weights finite (they must be read)."""
    if (
        update != bound.update + 1  # (a read delivered late, on a device: updates in between are unbounded)
        or grad_norm is None
        or not grad_norm < _LIMIT
        or bound.since + 1 >= REREAD
        or params is not bound.params
        or optimizer.state is not bound.optimizer_state
    ):
        return None
    # (C-level maps over the groups: the same number of Python calls for any number of them; a group added
    # since the read came with parameters, so ``params`` is another list)
    groups = optimizer.param_groups
    try:
        lrs = list(map(_LR, groups))
        rows = list(map(bound.columns, groups))
    except KeyError:  # a hyperparameter was removed from a group since the read
        return None
    if len(rows) != len(bound.rows):
        return None
    lr: float
    if set(map(type, lrs)) <= _PLAIN and all(map(math.isfinite, lrs)):
        lr = max(map(abs, lrs))
    else:  # tensors (a CPU tensor's one value is read, an accelerator's is not) or a non-finite number
        numbers = list(map(_number, lrs))
        if None in numbers:
            return None
        lr = max(map(abs, numbers))  # type: ignore[arg-type]
    alike: Iterable[Mapping[str, Any]]
    if len(rows) == 1:
        alike = groups
    else:  # one group per distinct row (hashed, not compared: ``==`` on a GPU tensor beta would synchronize)
        try:
            alike = dict(zip(rows, groups, strict=True)).values()
        except TypeError:  # an unhashable value (betas given as a list): compared one by one
            alike = [g for i, (r, g) in enumerate(zip(rows, groups, strict=True)) if r not in rows[:i]]
    # every group's betas (and the rest) are the very values of the read (compared by identity: a value
    # assigned again only costs the refinement that needs them; ``==`` on a GPU tensor would synchronize)
    steady = bound.kind != "sgd" and all(
        map(operator.is_, chain.from_iterable(rows), chain.from_iterable(bound.rows))
    )
    grad = grad_norm * _MARGIN
    weights = state = 0.0
    for group in alike:
        step = _group(bound, group, lr, grad, steady)
        if step is None:
            return None
        weights, state = max(weights, step[0]), max(state, step[1])
    if not (weights < _LIMIT and state < _LIMIT):
        return None
    b = bound
    return Bound(
        b.kind,
        weights,
        state,
        update,
        b.since + 1,
        b.read_state,
        b.rows,
        b.params,
        b.optimizer_state,
        b.columns,
    )


def _group(
    bound: Bound, group: Mapping[str, Any], lr: float, grad: float, steady: bool
) -> tuple[float, float] | None:
    """``(weights, state)`` bounds after the update of the groups with ``group``'s hyperparameters besides the
    learning rate and one of at most ``lr``, or None when a premise fails; ``steady``: the betas are the
    read's."""
    wd = _number(group.get("weight_decay", 0.0))
    if wd is None:
        return None
    wd = abs(wd)
    if bound.kind == "sgd":
        mu, dampening = _number(group.get("momentum", 0.0)), _number(group.get("dampening", 0.0))
        if mu is None or dampening is None or not 0.0 <= mu < 1.0:
            return None
        g = grad + wd * bound.weights
        if mu > 0.0:
            state = mu * bound.state + abs(1.0 - dampening) * g
            direction = g + mu * state if group.get("nesterov") else state
        else:
            state, direction = bound.state, g
        decay = 1.0
    else:
        betas, eps = _betas(group), _number(group.get("eps"))
        if betas is None or eps is None or not eps > 0.0:
            return None
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            return None
        decoupled = bound.kind == "adamw" or bool(group.get("decoupled_weight_decay", False))
        g = grad if decoupled else grad + wd * bound.weights
        state = beta1 * bound.state + (1.0 - beta1) * g
        direction = state / ((1.0 - beta1) * eps)
        if steady and beta1 * beta1 < beta2:  # the Cauchy-Schwarz bound (module doc)
            k = bound.since + 1
            ratio = (1.0 - beta1) / math.sqrt((1.0 - beta1 * beta1 / beta2) * (1.0 - beta2))
            direction = min(direction, (beta1**k * bound.read_state / eps + ratio) / (1.0 - beta1))
        decay = 1.0 + lr * wd if decoupled else 1.0
    update = lr * direction
    if not (g < _LIMIT and state < _LIMIT and update < _LIMIT):
        return None
    return bound.weights * decay + update, state


def _betas(group: Mapping[str, Any]) -> tuple[float, float] | None:
    betas = group.get("betas")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        return None
    beta1, beta2 = _number(betas[0]), _number(betas[1])
    return None if beta1 is None or beta2 is None else (beta1, beta2)


def _number(value: object) -> float | None:
    """A finite host number (a CPU tensor's one value too; an accelerator's tensor is not read: None)."""
    if type(value) is float:  # the common cases, on the hot path
        return value if value - value == 0.0 else None  # (inf - inf and nan - nan are nan)
    if type(value) is int:  # (SGD's defaults: momentum=0, dampening=0, weight_decay=0)
        return float(value)
    if isinstance(value, (tuple, list)):
        return None
    numbers = list(hyperparameter_numbers(value, host_only=True))
    return numbers[0] if len(numbers) == 1 and math.isfinite(numbers[0]) else None
