"""Op-level tracing of one replayed iteration: the first op that *creates* a non-finite value.

A :class:`OpTracer` is a ``TorchDispatchMode``: it sees every aten op of the iteration it is entered for
(the data handling around the model, forward, loss and backward). An op *creates* a non-finite value when

* element-wise ops (``exp``, ``div``, ``add``, ``where``, casts, ...): its output is Inf at a position where
  every input (after broadcasting) is finite, or NaN where no input is NaN (a NaN from ``inf - inf`` or
  ``inf / inf`` at that position is *derived*: it combined infinities made earlier). A legitimate ``-inf``
  mask in an input therefore never hides an ``exp`` that overflowed at the unmasked positions.
* any other op (reductions, matmuls, softmax, norms, losses): its inputs cannot explain the class of its
  non-finite outputs: an Inf from all-finite inputs, a NaN from inputs without NaN.

Ops that produce non-finite values on purpose from a non-finite *scalar* argument (``full(-inf)``,
``masked_fill(mask, -inf)``) are not origins. Each op is attributed to the deepest module of a watched model
running it (global forward hooks) and to the first source line outside torch and nanscope; its phase is
``forward`` inside a model, ``data`` outside one before the first model forward of the iteration, and ``loss``
after it. Backward ops are mapped to the forward op and module whose autograd node is executing
(``torch._C._current_autograd_node``); the tracer remembers which nodes had a non-finite forward output, so
that a backward NaN made from a value that forward made non-finite and then masked away is blamed on its
forward origin. For provenance, every forward op's largest finite output magnitude is kept, with links to the
ops that produced its inputs (:class:`Extreme`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["Extreme", "OpFinding", "OpTracer", "OriginFound", "TensorStats", "extreme_level"]

Phase = Literal["data", "forward", "loss", "backward"]

_SKIP_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
_ABSORBS_INF = {"_softmax", "softmax", "_log_softmax", "log_softmax", "logsumexp", "_safe_softmax"}
# ops that only alias or allocate (uninitialized memory may hold anything); casts and copies are traced
_QUIET = {
    "detach",
    "alias",
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "t",
    "transpose",
    "permute",
    "slice",
    "select",
    "squeeze",
    "unsqueeze",
    "split",
    "split_with_sizes",
    "chunk",
    "unbind",
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "set_",
    "lift_fresh",
}
# element-wise ops (besides those tagged pointwise): the output at a position depends on the inputs there only
_ELEMENTWISE = {
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "true_divide",
    "where",
    "pow",
    "square",
    "clone",
    "copy",
    "copy_",
    "_to_copy",
    "to",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "lerp",
    "addcmul",
    "addcdiv",
    "xlogy",
    "masked_fill",
    "relu",
    "gelu",
    "silu",
    "softplus",
    "hardtanh",
    "threshold",
    "leaky_relu",
    "elu",
    "mish",
}


def extreme_level(dtype: str) -> float:
    """Magnitudes at and above which values of ``dtype`` are out of a normal activation range: 1e6, or
    64x the square root of the largest finite value when that is smaller (float16: 16384)."""
    try:
        top = torch.finfo(getattr(torch, dtype)).max
    except (AttributeError, TypeError):
        return 1e6
    return min(1e6, 64 * math.sqrt(top))


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

    @property
    def magnitude(self) -> float:
        return max((abs(v) for v in (self.min, self.max) if v is not None), default=0.0)

    def text(self) -> str:
        lo = "-" if self.min is None else f"{self.min:.3g}"
        hi = "-" if self.max is None else f"{self.max:.3g}"
        return (
            f"{self.dtype}{list(self.shape)} in [{lo}, {hi}], {self.zeros} zeros, {self.negatives} negative, "
            f"{self.nonfinite} non-finite"
        )


@dataclass(frozen=True, slots=True)
class Extreme:
    """Where the extreme values an overflowing op received came from: the op that took finite values out of
    a normal range (``op`` set), or a leaf that was already extreme (``leaf``: a named parameter or an input
    of the iteration)."""

    op: str | None
    module: str | None
    source: str | None
    phase: Phase | None
    input_max: float | None  # the largest finite input magnitude of that op (None for a leaf)
    output_max: float
    leaf: str | None = None


@dataclass(frozen=True, slots=True)
class OpFinding:
    """The origin of the first non-finite value in a replayed step."""

    op: str  # aten name of the op; in backward the forward op whose derivative failed (``sqrt``)
    aten: str  # the aten op that produced the value
    phase: Phase | Literal["backward"]
    module: str | None
    source: str | None
    inputs: tuple[TensorStats, ...]
    output_dtype: str
    nan: int  # NaN the op created (element-wise: at positions it created them; else in its output)
    inf: int
    rows: tuple[int, ...] | None  # batch rows it turned non-finite (when its output keeps the batch dim)
    derived: bool = False  # its NaN came from infinite inputs at the same positions (inf - inf, inf / inf)
    extreme: Extreme | None = None  # where its already-extreme inputs came from (an overflow of big values)
    then: OpFinding | None = None  # the op where the value finally surfaced, when that is not this one


@dataclass(slots=True)
class _Made:
    """One traced forward op, for provenance: its largest finite output magnitude and its inputs' makers."""

    op: str
    module: str | None
    source: str | None
    phase: Phase
    out_max: float
    in_max: float
    inputs: list[tuple[float, _Made | None, str | None]] = field(default_factory=list)  # (max, maker, leaf)


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


def _elementwise(func: Any, name: str) -> bool:
    return name.rstrip("_") in _ELEMENTWISE or name in _ELEMENTWISE or torch.Tag.pointwise in func.tags


def _magnitude(t: torch.Tensor) -> float:
    """The largest finite absolute value of ``t`` (0 for an empty or all non-finite tensor)."""
    if not t.numel():
        return 0.0
    d = t.detach()
    return float(torch.where(torch.isfinite(d), d.abs(), 0).amax())


@dataclass(frozen=True, slots=True)
class _Created:
    inf: torch.Tensor  # bool masks over the output: created Inf / created NaN
    nan: torch.Tensor
    derived: bool


def _created(
    func: Any, name: str, out: torch.Tensor, before: list[tuple[torch.Tensor, torch.Tensor]]
) -> _Created:
    """Where ``out`` holds non-finite values its inputs (``before``: finite and NaN masks) cannot explain."""
    out_inf, out_nan = torch.isinf(out), torch.isnan(out)
    if _elementwise(func, name):
        try:
            finite = torch.ones(out.shape, dtype=torch.bool, device=out.device)
            nan = torch.zeros(out.shape, dtype=torch.bool, device=out.device)
            for fin, isnan in before:
                finite &= torch.broadcast_to(fin, out.shape)
                nan |= torch.broadcast_to(isnan, out.shape)
        except RuntimeError:
            pass  # shapes that do not broadcast to the output: judge the op as a whole
        else:
            made_nan = out_nan & ~nan
            return _Created(out_inf & finite, made_nan, bool((made_nan & ~finite).any()))
    in_finite = all(bool(fin.all()) for fin, _ in before)
    in_nan = any(bool(isnan.any()) for _, isnan in before)
    no = torch.zeros_like(out_inf)
    return _Created(
        out_inf if in_finite else no, no if in_nan else out_nan, not in_finite and bool(out_nan.any())
    )


class _Origins(TorchFunctionMode):
    """Above autograd: remembers which module and source line made each autograd node (for backward ops), and
    which nodes had a non-finite output in forward."""

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
                    tracer.origin[node] = (tracer.module(), _source())
                    if tracer.saw_nonfinite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        tracer.nonfinite_nodes.add(node)
        return out


class OriginFound(Exception):
    """Raised by an :class:`OpTracer` with ``stop_at`` when that op creates a NaN/Inf: the re-run can stop."""


class OpTracer(TorchDispatchMode):
    """Use as a context manager around one iteration (or forward, loss and backward); read :meth:`pick`.

    ``module_names`` names the watched models' modules (id -> name; the root may be ``""``),
    ``param_names`` their parameters (id -> name, for provenance), ``batch_size`` the rows of the batch.
    ``stop_at=(aten name, phase)`` makes a light tracer for counterfactual re-runs: no provenance, no source
    lines, and :class:`OriginFound` is raised as soon as that op creates a NaN/Inf.
    """

    def __init__(
        self,
        module_names: dict[int, str],
        batch_size: int | None,
        param_names: dict[int, str] | None = None,
        stop_at: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._stop_at = stop_at
        self._names = module_names
        self._params = param_names or {}
        self._batch = batch_size
        self._handles: list[Any] = []
        self.entered = False
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far (ops of an iteration that turned out not to be the traced one)."""
        self.origins: dict[str, OpFinding] = {}  # first "forward_inf", "forward_nan" and "backward" origins
        self._order: dict[str, int] = {}
        self.stack: list[str | None] = []  # module names; None: a module outside the watched models
        self.model_ran = False
        self.origin: dict[Any, tuple[str | None, str | None]] = {}
        self.nonfinite_nodes: set[Any] = set()
        self.saw_nonfinite = False
        self._backward_node: Any = None  # the autograd node of the "backward" origin
        # tensor -> the forward op that made it, or the name of the parameter it is a view of
        self._made: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def module(self) -> str | None:
        """The deepest watched module running now ("" for a root model's own code), None outside models."""
        return self.stack[-1] if self.stack else None

    def phase(self) -> Phase:
        if self.stack and self.stack[-1] is not None:
            return "forward"
        return "loss" if self.model_ran else "data"

    # module stack through global forward hooks, only while tracing
    def __enter__(self) -> OpTracer:
        from torch.nn.modules import module as module_globals

        def pre(module: nn.Module, args: Any) -> None:
            name = self._names.get(id(module))
            if name is not None:
                self.model_ran = True
            self.stack.append(name if name is not None else self.module())

        def post(module: nn.Module, args: Any, output: Any) -> None:
            if self.stack:
                self.stack.pop()

        self._handles = [
            module_globals.register_module_forward_pre_hook(pre),
            module_globals.register_module_forward_hook(post),
        ]
        self._origins: _Origins | None = None
        if self._stop_at is None:
            self._origins = _Origins(self)
            self._origins.__enter__()
        self.entered = True
        return super().__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
            if self._origins is not None:
                self._origins.__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self.origin.clear()
            self._made = WeakIdKeyDictionary()
            self.entered = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = _base_name(func)
        mutable = func._schema.is_mutable
        tensors = list(_tensors((args, kwargs)))
        ins = [t for t in tensors if t.is_floating_point()]
        before = [(torch.isfinite(t), torch.isnan(t)) for t in ins] if mutable else None
        out = func(*args, **kwargs)
        node = torch._C._current_autograd_node()
        outs = [t for t in _tensors(out) if t.is_floating_point()]
        if name in _QUIET:
            if node is None and outs and ins:
                maker = self._made.get(ins[0]) or self._params.get(id(ins[0]))
                for t in outs:
                    if maker is not None:
                        self._made[t] = maker  # a view: made by whatever made its base
            return out
        if node is None and outs and self._stop_at is None:
            self._remember(name, ins, outs)
        if len(self.origins) == 3:
            return out
        bad = [t for t in outs if not bool(torch.isfinite(t).all())]
        if not bad:
            return out
        self.saw_nonfinite = True
        if any(not math.isfinite(v) for v in _scalars((args, tuple(kwargs.values())))):
            return out  # full(-inf), masked_fill(mask, -inf): on purpose
        if before is None:
            before = [(torch.isfinite(t), torch.isnan(t)) for t in ins]
        made = _created(func, name, bad[0], before)
        made_inf, made_nan = bool(made.inf.any()), bool(made.nan.any())
        if not (made_inf or made_nan):
            return out
        key = "backward" if node is not None else ("forward_nan" if made_nan else "forward_inf")
        if self._stop_at is not None:
            if self._stop_at == (name, "backward" if node is not None else self.phase()):
                raise OriginFound(name)
            return out
        if key not in self.origins:
            stats = [t for t in tensors if t.dtype is not torch.bool]  # integer counts explain divisions too
            self.origins[key] = self._describe(func, node, ins, stats, bad[0], made)
            self._order[key] = len(self._order)
            if node is not None:
                self._backward_node = node
        return out

    def _links(self, ins: list[torch.Tensor]) -> list[tuple[float, _Made | None, str | None]]:
        """``(largest finite magnitude, the op that made it, or else the leaf's name)`` per input."""
        links: list[tuple[float, _Made | None, str | None]] = []
        for t in ins:
            maker = self._made.get(t) or self._params.get(id(t), "an input of the iteration")
            if isinstance(maker, _Made):
                links.append((maker.out_max, maker, None))
            else:
                links.append((_magnitude(t), None, maker))
        return links

    def _remember(self, name: str, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        links = self._links(ins)
        made = _Made(
            name,
            self.module() or None,
            _source(),
            self.phase(),
            max((_magnitude(t) for t in outs), default=0.0),
            max((m for m, _, _ in links), default=0.0),
            links,
        )
        for t in outs:
            self._made[t] = made

    def _extreme(self, ins: list[torch.Tensor], dtype: str) -> Extreme | None:
        """Follow the largest input back through its makers to where it left the normal range."""
        level = extreme_level(dtype)
        links = self._links(ins)
        for _ in range(10_000):  # a chain of makers, one per op: bounded by the ops traced
            if not links:
                return None
            size, maker, leaf = max(links, key=lambda link: link[0])
            if size < level:
                return None
            if maker is None:
                return Extreme(None, None, None, None, None, size, leaf)
            if maker.in_max < level:
                return Extreme(maker.op, maker.module, maker.source, maker.phase, maker.in_max, maker.out_max)
            links = maker.inputs
        return None

    def pick(self, trigger: str, loss_nan: bool) -> OpFinding | None:
        """The origin that explains the trigger, ignoring infinities that never caused it.

        An infinite loss is explained by the first op that made an Inf in the iteration. A NaN is explained
        by the first op that made a NaN, unless that NaN was derived (inf - inf, inf / inf) from an Inf made
        earlier: then the op that made the infinity is the origin. A softmax over an all ``-inf`` row is
        the exception, since ``-inf`` masks are legitimate input to a softmax until a row is entirely masked.
        Non-finite gradients from a finite loss: the first op that went non-finite in backward, unless its
        forward output had been non-finite (a ``log(0)`` or an overflow that the loss masked or selected
        away); then, as for a NaN, the forward origin, with the backward op kept as :attr:`OpFinding.then`.
        """
        o = self.origins
        if trigger == "gradients" and "backward" in o:
            back = o["backward"]
            if self._backward_node not in self.nonfinite_nodes:
                return back
            forward = self._forward_pick()
            return back if forward is None else _then(forward, back)
        if trigger != "gradients" and not loss_nan:
            return o.get("forward_inf") or o.get("forward_nan") or o.get("backward")
        return self._forward_pick() or o.get("backward")

    def _forward_pick(self) -> OpFinding | None:
        o = self.origins
        nan, inf = o.get("forward_nan"), o.get("forward_inf")
        if nan is not None:
            derived = nan.derived and nan.op not in _ABSORBS_INF
            if inf is not None and derived and self._order["forward_inf"] < self._order["forward_nan"]:
                return _then(inf, nan)
            return nan
        return inf

    @property
    def finding(self) -> OpFinding | None:
        """The first origin of any kind (forward before backward)."""
        return self.pick("loss", loss_nan=True)

    def _describe(
        self,
        func: Any,
        node: Any,
        ins: list[torch.Tensor],
        stats: list[torch.Tensor],
        first: torch.Tensor,
        made: _Created,
    ) -> OpFinding:
        aten = _base_name(func)
        phase: Phase | Literal["backward"]
        if node is None:
            phase = self.phase()
            module = self.module() or None
            op, source = aten, _source()
        else:
            phase = "backward"
            module, source = self.origin.get(node, (None, None))
            op = _forward_name(node)
        mask = made.inf | made.nan
        rows = None
        if self._batch is not None and first.dim() >= 1 and first.shape[0] == self._batch:
            hit = mask.reshape(first.shape[0], -1).any(dim=1)
            rows = tuple(int(r) for r in torch.nonzero(hit).reshape(-1).tolist())
        dtype = str(first.dtype).removeprefix("torch.")
        return OpFinding(
            op=op,
            aten=aten,
            phase=phase,
            module=module or None,
            source=source,
            inputs=tuple(TensorStats.of(t) for t in stats[:4]),
            output_dtype=dtype,
            nan=int(made.nan.sum()),
            inf=int(made.inf.sum()),
            rows=rows,
            derived=made.derived,
            extreme=self._extreme(ins, dtype) if node is None else None,
        )


def _then(origin: OpFinding, surfaced: OpFinding) -> OpFinding:
    return replace(origin, then=surfaced)
