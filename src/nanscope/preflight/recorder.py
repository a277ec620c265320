"""One training iteration at initialization, recorded: what the model-side codes are computed from.

:class:`Recorder` hooks every module of the models (removed by :meth:`Recorder.detach`) and, during the first
forward of a model, a ``TorchFunctionMode`` that sees every ReLU, sigmoid and tanh whether it is a module or a
functional call. It keeps plain numbers only:

* per activation call: its module, the share of *units* (channels of a 4-D/5-D output, else the last
  dimension) that are zero for every row of the batch (ReLU), or the share of outputs within 0.01 of the
  activation's bounds (sigmoid, tanh);
* per parameterized layer (Linear, Conv, ...; normalization layers excluded), in call order: its output's RMS;
* the loss graph's facts (:func:`nanscope.preflight.graph.loss_facts`), read before ``backward()``;
* per weight (parameters with 2+ dims), in its layer's call order: the gradient's RMS over its non-zero entries;
* per weight, after the first update: ``|w' - w| / |w|``.

Everything is read with gradients off; nothing of the model is changed (the caller decides about the update).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nanscope.preflight.graph import LossFacts, loss_facts

__all__ = ["Activation", "Iteration", "Recorder"]

_RELU = {"relu", "relu_"}
_BOUNDED = {"sigmoid": (0.0, 1.0), "sigmoid_": (0.0, 1.0), "tanh": (-1.0, 1.0), "tanh_": (-1.0, 1.0)}
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)


@dataclass(frozen=True, slots=True)
class Activation:
    module: str
    op: str  # relu, sigmoid, tanh
    units: int
    share: float  # ReLU: share of dead units; sigmoid/tanh: share of saturated outputs
    rows: int  # batch rows the share was measured over


@dataclass
class Iteration:
    """What one recorded iteration measured (filled as it runs; read once it is over)."""

    activations: list[Activation] = field(default_factory=list)
    layer_rms: list[tuple[str, float]] = field(default_factory=list)  # call order
    loss: LossFacts | None = None
    grad_rms: list[tuple[str, float]] = field(default_factory=list)  # weights, their layer's call order
    unused: list[str] = field(default_factory=list)  # weights without a gradient
    update_ratio: list[tuple[str, float]] = field(default_factory=list)


def _unit_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() in (4, 5) else t.dim() - 1


class _Activations(TorchFunctionMode):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._r = recorder

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if (name in _RELU or name in _BOUNDED) and isinstance(out, torch.Tensor):
            self._r.activation(name.rstrip("_"), out)
        return out


class Recorder:
    """Records the first forward, the loss, the backward and the update of ``models`` (see module doc)."""

    def __init__(self, models: Iterable[nn.Module]) -> None:
        self.models = list(models)
        self.result = Iteration()
        self._names: dict[int, str] = {}
        self._order: dict[int, int] = {}  # layer module id -> call order
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._mode: _Activations | None = None
        self._forward_done = False
        self._before: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for model in self.models:
            prefix = type(model).__name__
            for name, module in model.named_modules():
                self._names.setdefault(id(module), f"{prefix}.{name}" if name else prefix)
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))

    # ------------------------------------------------------------------ forward
    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._forward_done or not torch.is_grad_enabled():
            return
        if not self._stack:  # the outermost module call the loop makes (the model, or one of its parts)
            self._mode = _Activations(self)
            self._mode.__enter__()
        self._stack.append(self._names.get(id(module), type(module).__name__))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._forward_done or not torch.is_grad_enabled() or not self._stack:
            return
        self._stack.pop()
        layer = next(module.parameters(recurse=False), None) is not None and not isinstance(module, _NORMS)
        if layer and id(module) not in self._order:
            self._order[id(module)] = len(self._order)
            out = output[0] if isinstance(output, (tuple, list)) and output else output  # an RNN's sequence
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                with torch.no_grad():
                    rms = float(out.detach().float().pow(2).mean().sqrt())
                self.result.layer_rms.append((self._names[id(module)], rms))
        if not self._stack:
            self._exit_mode()

    def _exit_mode(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            with contextlib.suppress(RuntimeError):  # a forward that raised left it half-way
                mode.__exit__(None, None, None)

    def _end_forward(self) -> None:
        """The first forward is over when the loss reaches ``backward()`` (a loop may call the model in
        parts); the mode is only ever active inside the outermost module call."""
        self._forward_done = True
        self._stack.clear()
        self._exit_mode()

    def activation(self, op: str, out: torch.Tensor) -> None:
        if out.dim() < 2 or not out.is_floating_point() or not out.numel():
            return
        if not self._stack:  # the loop's own code (the loss), not a layer of the model
            return
        where = self._stack[-1]
        with torch.no_grad():
            o = out.detach()
            if op == "relu":
                dim = _unit_dim(o)
                alive = (o > 0).movedim(dim, -1).reshape(-1, o.shape[dim]).any(dim=0)
                units = int(alive.numel())
                share = 1.0 - float(alive.float().mean())
                rows = o.numel() // max(units, 1)
            else:
                low, high = _BOUNDED[op]
                margin = 0.01 * (high - low)
                sat = (o <= low + margin) | (o >= high - margin)
                units, share, rows = int(o.shape[-1]), float(sat.float().mean()), o.numel() // o.shape[-1]
        self.result.activations.append(Activation(where, op, units, share, rows))

    # ------------------------------------------------------------------ loss, backward, update
    def loss(self, tensors: Any) -> None:
        """``backward()`` was handed ``tensors``: read the graph while its saved tensors are alive."""
        self._end_forward()
        if self.result.loss is None:
            self.result.loss = loss_facts(tensors)

    def _weights(self) -> list[tuple[str, nn.Module, torch.Tensor]]:
        out = []
        for model in self.models:
            prefix = type(model).__name__
            for mname, module in model.named_modules():
                for pname, p in module.named_parameters(recurse=False):
                    if p.dim() >= 2 and p.requires_grad:
                        out.append((f"{prefix}.{mname}.{pname}" if mname else f"{prefix}.{pname}", module, p))
        return out

    def gradients(self) -> None:
        """``backward()`` returned: each weight's gradient RMS (non-zero entries), in its layer's call order."""
        if self.result.grad_rms or self.result.unused:
            return
        rows = []
        for name, module, p in self._weights():
            if p.grad is None or id(module) not in self._order:
                self.result.unused.append(name)
                continue
            with torch.no_grad():
                g = p.grad.detach().float()
                nz = g[g != 0]
                rms = float(nz.pow(2).mean().sqrt()) if nz.numel() else 0.0
            rows.append((self._order[id(module)], name, rms))
        self.result.grad_rms = [(n, r) for _, n, r in sorted(rows, key=lambda row: row[0])]

    def before_update(self, params: Iterable[torch.Tensor]) -> None:
        names = {id(p): n for n, _, p in self._weights()}
        with torch.no_grad():  # every parameter, to put back; the weights' (2+ dims) changes are measured
            self._before = [(names.get(id(p), ""), p, p.detach().clone()) for p in params]

    def after_update(self, restore: bool) -> None:
        """The first update applied: each weight's relative change; with ``restore``, the weights put back."""
        with torch.no_grad():
            for name, p, before in self._before:
                norm = float(before.float().norm())
                if name and norm > 0 and math.isfinite(norm):
                    self.result.update_ratio.append(
                        (name, float((p.detach() - before).float().norm()) / norm)
                    )
                if restore:
                    p.copy_(before)
        self._before = []

    def detach(self) -> None:
        self._end_forward()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
