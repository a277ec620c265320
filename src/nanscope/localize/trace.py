"""Op-level tracing of one replayed step: the first op that *creates* a non-finite value.

A :class:`OpTracer` is a ``TorchDispatchMode``: it sees every aten op of forward, loss and backward. An op is
the origin when its output holds

* an Inf while every tensor input is finite (overflow, log(0), x/0), or
* a NaN while no tensor input holds a NaN (0/0, sqrt(-1), inf - inf, softmax over an all -inf row).

Ops that produce non-finite values on purpose from a non-finite *scalar* argument (``full(-inf)``,
``masked_fill(mask, -inf)``) are not origins: a legitimate ``-inf`` mask only matters if it later turns into
a NaN, and then that op is the origin. Each op is attributed to the deepest module running it (forward hooks)
and to the first source line outside torch and nanscope; backward ops are mapped to the forward op and
module whose autograd node is executing (``torch._C._current_autograd_node``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpFinding", "OpTracer", "TensorStats"]

_SKIP_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
# ops that only alias or allocate (uninitialized memory may hold anything); casts and copies are traced
_ABSORBS_INF = {"_softmax", "softmax", "_log_softmax", "log_softmax", "logsumexp", "_safe_softmax"}
_QUIET = {
    "detach",
    "alias",
    "view",
    "_unsafe_view",
    "expand",
    "t",
    "transpose",
    "permute",
    "slice",
    "select",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "set_",
    "lift_fresh",
}


@dataclass(frozen=True, slots=True)
class TensorStats:
    """What an op's input looked like: range and the counts that explain domain errors."""

    shape: tuple[int, ...]
    dtype: str
    min: float | None
    max: float | None
    zeros: int
    negatives: int
    nonfinite: int

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorStats:
        d = t.detach()
        finite = d[torch.isfinite(d)] if d.is_floating_point() else d
        return cls(
            tuple(d.shape),
            str(d.dtype).removeprefix("torch."),
            float(finite.min()) if finite.numel() else None,
            float(finite.max()) if finite.numel() else None,
            int((d == 0).sum()),
            int((d < 0).sum()),
            int((~torch.isfinite(d)).sum()) if d.is_floating_point() else 0,
        )

    def text(self) -> str:
        lo = "-" if self.min is None else f"{self.min:.3g}"
        hi = "-" if self.max is None else f"{self.max:.3g}"
        return (
            f"{self.dtype}{list(self.shape)} in [{lo}, {hi}], {self.zeros} zeros, {self.negatives} negative, "
            f"{self.nonfinite} non-finite"
        )


@dataclass(frozen=True, slots=True)
class OpFinding:
    """The origin of the first non-finite value in a replayed step."""

    op: str  # aten name of the op; in backward the forward op whose derivative failed (``sqrt``)
    aten: str  # the aten op that produced the value
    phase: Literal["forward", "loss", "backward"]
    module: str | None
    source: str | None
    inputs: tuple[TensorStats, ...]
    output_dtype: str
    nan: int
    inf: int
    rows: (
        tuple[int, ...] | None
    )  # batch rows of the output that went non-finite (when it keeps the batch dim)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _scalars(obj: Any) -> Iterator[float]:
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _scalars(item)


def _source() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIP_DIRS) and not filename.startswith("<"):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _base_name(func: Any) -> str:
    return str(func.__name__).split(".")[0]


def _forward_name(node: Any) -> str:
    name = type(node).__name__
    for suffix in ("Backward0", "Backward1", "Backward"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.lower()


class _Origins(TorchFunctionMode):
    """Above autograd: remembers which module and source line made each autograd node (for backward ops)."""

    def __init__(self, tracer: OpTracer) -> None:
        super().__init__()
        self._tracer = tracer

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tracer = self._tracer
        if torch.is_grad_enabled():
            for t in _tensors(out):
                node = t.grad_fn
                if node is not None and node not in tracer.origin:
                    tracer.origin[node] = (tracer.stack[-1] if tracer.stack else None, _source())
        return out


class OpTracer(TorchDispatchMode):
    """Use as a context manager around forward, loss and backward of one step; read :attr:`finding`."""

    def __init__(self, module_names: dict[int, str], batch_size: int | None) -> None:
        super().__init__()
        self.origins: dict[str, OpFinding] = {}  # first "forward_inf", "forward_nan" and "backward" origins
        self._order: dict[str, int] = {}
        self._names = module_names
        self._batch = batch_size
        self.stack: list[str] = []
        self.origin: dict[Any, tuple[str | None, str | None]] = {}
        self._handles: list[Any] = []

    # module stack through global forward hooks, only while tracing
    def __enter__(self) -> OpTracer:
        from torch.nn.modules import module as module_globals

        def pre(module: nn.Module, args: Any) -> None:
            name = self._names.get(id(module))
            self.stack.append(name if name is not None else (self.stack[-1] if self.stack else ""))

        def post(module: nn.Module, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()

        self._handles = [
            module_globals.register_module_forward_pre_hook(pre),
            module_globals.register_module_forward_hook(post),
        ]
        self._origins = _Origins(self)
        self._origins.__enter__()
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
            self._origins.__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self.origin.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if len(self.origins) == 3 or _base_name(func) in _QUIET:
            return out
        node = torch._C._current_autograd_node()
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        bad = [t for t in outs if not bool(torch.isfinite(t).all())]
        if not bad:
            return out
        ins = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
        out_nan = any(bool(torch.isnan(t).any()) for t in bad)
        in_nan = any(bool(torch.isnan(t).any()) for t in ins)
        in_finite = all(bool(torch.isfinite(t).all()) for t in ins)
        intentional = any(not math.isfinite(v) for v in _scalars((args, tuple(kwargs.values()))))
        if intentional or not (in_finite or (out_nan and not in_nan)):
            return out
        key = "backward" if node is not None else ("forward_nan" if out_nan else "forward_inf")
        if key not in self.origins:
            self.origins[key] = self._describe(func, node, ins, bad)
            self._order[key] = len(self._order)
        return out

    def pick(self, trigger: str, loss_nan: bool) -> OpFinding | None:
        """The origin that explains the trigger, ignoring infinities that never caused it.

        An infinite loss is explained by the first op that made an Inf in forward or loss. A NaN is explained
        by the first op that made a NaN, unless that op only combined infinities made earlier (inf / inf,
        inf - inf): then the op that made the infinity is the origin. A softmax over an all ``-inf`` row is
        the exception, since ``-inf`` masks are legitimate input to a softmax until a row is entirely masked.
        Non-finite gradients from a finite loss: the first op that went non-finite in backward or, when every
        backward NaN came from a value saved in forward (a masked-out ``sqrt(-1)``), that forward origin.
        """
        o = self.origins
        if trigger == "gradients" and "backward" in o:
            return o["backward"]
        if trigger != "gradients" and not loss_nan:
            return o.get("forward_inf") or o.get("forward_nan") or o.get("backward")
        nan, inf = o.get("forward_nan"), o.get("forward_inf")
        if nan is not None:
            derived = any(s.nonfinite for s in nan.inputs) and nan.op not in _ABSORBS_INF
            if inf is not None and derived and self._order["forward_inf"] < self._order["forward_nan"]:
                return inf
            return nan
        return inf or o.get("backward")

    @property
    def finding(self) -> OpFinding | None:
        """The first origin of any kind (forward before backward)."""
        return self.pick("loss", loss_nan=True)

    def _describe(self, func: Any, node: Any, ins: list[torch.Tensor], bad: list[torch.Tensor]) -> OpFinding:
        aten = _base_name(func)
        phase: Literal["forward", "loss", "backward"]
        if node is None:
            phase = "forward" if self.stack else "loss"
            module = self.stack[-1] if self.stack else None
            op, source = aten, _source()
        else:
            phase = "backward"
            module, source = self.origin.get(node, (None, None))
            op = _forward_name(node)
        first = bad[0].detach()
        rows = None
        if self._batch is not None and first.dim() >= 1 and first.shape[0] == self._batch:
            ok = torch.isfinite(first).reshape(first.shape[0], -1).all(dim=1)
            rows = tuple(int(r) for r in torch.nonzero(~ok).reshape(-1).tolist())
        return OpFinding(
            op=op,
            aten=aten,
            phase=phase,
            module=module or None,
            source=source,
            inputs=tuple(TensorStats.of(t) for t in ins[:4]),
            output_dtype=str(first.dtype).removeprefix("torch."),
            nan=sum(int(torch.isnan(t).sum()) for t in bad),
            inf=sum(int(torch.isinf(t).sum()) for t in bad),
            rows=rows,
        )
