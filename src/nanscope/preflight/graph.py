"""The loss's autograd graph, read before ``backward()`` frees what it saved: the loss-path codes.

``double_softmax``: a cross-entropy (``LogSoftmax`` -> ``NllLoss``) over a ``Softmax`` output.
``sigmoid_bce``: ``BCELoss`` over a ``Sigmoid`` output, or a hand-written log of a sigmoid.
``log_of_softmax``: a ``log`` of a ``Softmax`` output (no eps, no clamp in between).
``output_activation_mismatch``: a regression loss (MSE, L1, smooth L1, Huber) over a ReLU/Sigmoid/Tanh/Softmax
output, with targets outside that activation's range. Between the two ops only shape-preserving reads are
allowed (views, indexing, gather, copies): an ``add`` of an eps or a ``clamp`` guards the op and ends the match.
:func:`loss_facts` also returns a cross-entropy's classes and its value recomputed from the saved log-probs
(for ``initial_loss``; any scaling of the loss for accumulation does not change it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from nanscope.preflight.report import Finding

__all__ = ["LossFacts", "loss_facts"]

# ops that move or select values without changing them
_TRANSPARENT = {
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "TransposeBackward1",
    "TBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "SqueezeBackward4",
    "UnsqueezeBackward0",
    "ExpandBackward0",
    "SelectBackward0",
    "SliceBackward0",
    "IndexBackward0",
    "GatherBackward0",
    "CloneBackward0",
    "ToCopyBackward0",
    "AliasBackward0",
    "NarrowBackward0",
    "SplitBackward0",
    "UnbindBackward0",
    "ContiguousBackward0",
    "CatBackward0",
    "StackBackward0",
}
_REGRESSION = {"MseLossBackward0", "L1LossBackward0", "SmoothL1LossBackward0", "HuberLossBackward0"}
# output activations and the range of values they can produce
_RANGES = {
    "ReluBackward0": (0.0, math.inf),
    "SigmoidBackward0": (0.0, 1.0),
    "TanhBackward0": (-1.0, 1.0),
    "SoftmaxBackward0": (0.0, 1.0),
}
_NAMES = {
    "ReluBackward0": "ReLU",
    "SigmoidBackward0": "Sigmoid",
    "TanhBackward0": "Tanh",
    "SoftmaxBackward0": "Softmax",
}
_LIMIT = 200_000  # graph nodes visited at most


@dataclass(frozen=True, slots=True)
class LossFacts:
    findings: tuple[Finding, ...]
    checked: tuple[str, ...]
    classes: int | None = None  # a cross-entropy's number of classes
    cross_entropy: float | None = None  # its value on this batch, from the saved log-probs


def _name(node: Any) -> str:
    return type(node).__name__


def _nodes(roots: list[Any]) -> Iterator[Any]:
    seen: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < _LIMIT:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(n for n, _ in getattr(node, "next_functions", ()))


def _below(node: Any) -> Any:
    """The op that produced ``node``'s (first differentiable) input, skipping value-preserving reads."""
    for _ in range(64):
        nexts = [n for n, _ in getattr(node, "next_functions", ()) if n is not None]
        if not nexts:
            return None
        node = nexts[0]
        if _name(node) not in _TRANSPARENT:
            return node
    return None


def _saved(node: Any, name: str) -> Any:
    try:
        return getattr(node, f"_saved_{name}")
    except (AttributeError, RuntimeError):  # freed by an earlier backward
        return None


def loss_facts(loss: Any) -> LossFacts:
    """The loss-path findings of the graph behind ``loss`` (a tensor, or the tensors handed to ``backward``)."""
    tensors = [loss] if isinstance(loss, torch.Tensor) else list(loss or ())
    roots = [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    found: dict[str, Finding] = {}
    classes: int | None = None
    ce: float | None = None
    losses_seen: set[str] = set()
    for node in _nodes(roots):
        name = _name(node)
        if name == "NllLossBackward0":
            losses_seen.add("ce")
            below = _below(node)
            if below is not None and _name(below) == "LogSoftmaxBackward0":
                source = _below(below)
                if source is not None and _name(source) == "SoftmaxBackward0":
                    found.setdefault("double_softmax", _double_softmax())
            if classes is None:
                classes, ce = _cross_entropy(node)
        elif name == "BinaryCrossEntropyBackward0":
            losses_seen.add("bce")
            below = _below(node)
            if below is not None and _name(below) == "SigmoidBackward0":
                found.setdefault("sigmoid_bce", _sigmoid_bce("BCELoss"))
        elif name == "LogBackward0":
            below = _below(node)
            if below is not None and _name(below) == "SoftmaxBackward0":
                found.setdefault("log_of_softmax", _log_of_softmax())
            elif below is not None and _name(below) == "SigmoidBackward0":
                found.setdefault("sigmoid_bce", _sigmoid_bce("log"))
            elif below is not None and _name(below) == "RsubBackward1":  # log(1 - sigmoid(x))
                source = _below(below)
                if source is not None and _name(source) == "SigmoidBackward0":
                    found.setdefault("sigmoid_bce", _sigmoid_bce("log"))
        elif name in _REGRESSION:
            losses_seen.add("regression")
            below = _below(node)
            if below is not None and _name(below) in _RANGES and "output_activation_mismatch" not in found:
                mismatch = _mismatch(node, _name(below))
                if mismatch is not None:
                    found["output_activation_mismatch"] = mismatch
    checked = ["log_of_softmax", "sigmoid_bce"]
    if "ce" in losses_seen:
        checked.append("double_softmax")
    if "regression" in losses_seen:
        checked.append("output_activation_mismatch")
    return LossFacts(
        findings=tuple(found.values()),
        checked=tuple(c for c in checked if c not in found),
        classes=classes,
        cross_entropy=ce,
    )


def _cross_entropy(node: Any) -> tuple[int | None, float | None]:
    logp, target = _saved(node, "self"), _saved(node, "target")
    if not isinstance(logp, torch.Tensor) or not isinstance(target, torch.Tensor) or logp.dim() == 0:
        return None, None
    classes = int(logp.shape[1] if logp.dim() >= 2 else logp.shape[0])
    ignore = _saved(node, "ignore_index")
    with torch.no_grad():
        lp = logp.detach().float()
        t = target.detach().long()
        if lp.dim() == 1:
            lp, t = lp.unsqueeze(0), t.reshape(1)
        lp = lp.movedim(1, -1).reshape(-1, classes)
        t = t.reshape(-1)
        keep = t != (ignore if isinstance(ignore, int) else -100)
        keep &= (t >= 0) & (t < classes)
        if not bool(keep.any()):
            return classes, None
        value = -lp[keep].gather(1, t[keep].unsqueeze(1)).mean()
    return classes, float(value)


def _mismatch(node: Any, activation: str) -> Finding | None:
    target = _saved(node, "target")
    if not isinstance(target, torch.Tensor) or not target.is_floating_point() or not target.numel():
        return None
    low, high = _RANGES[activation]
    with torch.no_grad():
        t = target.detach().float()
        finite = t[torch.isfinite(t)]
        if not finite.numel():
            return None
        # the ends themselves are reachable only in the limit for sigmoid/tanh/softmax: count beyond them
        outside = (finite < low) | (finite > high)
        share = float(outside.float().mean())
        t_min, t_max = float(finite.min()), float(finite.max())
    if share == 0:
        return None
    act = _NAMES[activation]
    return Finding(
        "output_activation_mismatch",
        "error",
        f"{act} before {_name(node).removesuffix('Backward0')}",
        f"the model's output goes through {act} (range [{low:g}, {high:g}]) into a regression loss, but "
        f"{share:.0%} of the targets lie outside it (targets from {t_min:.4g} to {t_max:.4g}): those can never be "
        "fitted and their gradient pushes the pre-activations without bound",
        f"Drop the final {act} (a regression head is linear), or scale the targets into its range.",
        evidence={"activation": act, "outside_share": share, "target_min": t_min, "target_max": t_max},
    )


def _double_softmax() -> Finding:
    return Finding(
        "double_softmax",
        "warning",
        "Softmax before CrossEntropyLoss",
        "the loss is a cross-entropy (log_softmax + nll_loss) of an output that already went through softmax: "
        "the probabilities are squashed a second time, the gradients shrink, and learning stalls",
        "Remove the model's final softmax: CrossEntropyLoss takes raw logits (apply softmax only for "
        "predictions).",
    )


def _sigmoid_bce(form: str) -> Finding:
    how = "BCELoss over a sigmoid output" if form == "BCELoss" else "a hand-written log of a sigmoid"
    return Finding(
        "sigmoid_bce",
        "warning",
        "Sigmoid before " + ("BCELoss" if form == "BCELoss" else "log"),
        f"the loss takes {how}: a saturated sigmoid rounds to 0 or 1, log gives -inf (BCELoss clamps it at -100 "
        "and its gradient vanishes)",
        "Feed the logits to BCEWithLogitsLoss (or F.logsigmoid), which compute it stably.",
        evidence={"form": form},
    )


def _log_of_softmax() -> Finding:
    return Finding(
        "log_of_softmax",
        "warning",
        "log(softmax(...))",
        "the loss takes the log of a softmax: a probability that underflows to 0 gives log(0) = -inf, then "
        "NaN gradients",
        "Use log_softmax (or CrossEntropyLoss on the logits), which never takes log(0).",
    )
