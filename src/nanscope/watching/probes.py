"""The always-on reads: one pass over many tensors giving one number per tensor, in a few kernels per device.

A NaN anywhere makes a sum, dot product or norm NaN and an Inf makes it Inf (or NaN), so a finite value
proves the tensor finite. The converse has one exception: finite values whose squares or sums overflow
float32 (|x| > ~1.8e19) also give Inf, so a non-finite value only names a suspect that the exact element-wise
check in :mod:`nanscope.detect.scan` confirms.

How the values are computed depends on the device, so that the cost follows the bytes read and not the number
of tensors:

- on an accelerator, ``torch._foreach_norm`` per dtype (a few multi-tensor kernels for any number of tensors);
- on CPU, where ``_foreach_norm`` is a loop of one norm kernel per tensor (about 2 us each hot, several times
  that between a step's large kernels), tensors of at most 2^12 elements that share their shape and dtype
  (models repeat their layer shapes: four or more alike) are copied into one persistent block per shape and
  reduced row by row (gradients: one norm over the rows, a single pass; sums: a BLAS matrix-vector product), a
  fixed number of kernels however many tensors share the shape; tensors from 2^16 elements get a BLAS dot
  product or a plain sum of their own (1.6-3x faster per element than a norm); the rest (between the two, the
  copy costs more than a kernel per tensor) go through ``_foreach_norm``. A CPU model of at most 32 tensors
  and 2^18 elements in all goes through ``_foreach_norm`` alone (one kernel per dtype instead of a block, a
  product and a root per shape: 5 ops per step instead of 19 on the 1e5-parameter MLP).

The grouping (a :class:`Plan`) depends only on the tensors' shapes, dtypes and devices and is cached for the
parameter list it was made for: gradients have their parameter's layout. The per-tensor values are
concatenated into one small vector per device, so a read several steps later (CUDA) still names the bad
tensors.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nanscope._tree import local_part

__all__ = ["Plan", "Prober", "Reading"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LARGE = 1 << 16  # elements: from here a BLAS dot or sum per CPU tensor beats _foreach_norm's norm kernel
# elements: up to here a copy into a shape's block costs less than a norm kernel per tensor (measured in the
# training loop: 500 tensors of 1936 elements 1.7x faster by block; 50 of 19881 1.6x faster by _foreach_norm)
_ROWS = 1 << 12
_BLOCK = 1 << 24  # elements: the most one shape's persistent block may hold (64 MiB of float32)
_FEW, _SMALL = 32, 1 << 18  # up to 32 tensors of 2^18 elements in all: one _foreach_norm per dtype


@dataclass(frozen=True, slots=True)
class Reading:
    """One device's probe: one value per tensor at ``positions`` (indices into the probed sequence).

    The first ``norms`` values are L2 norms (gradients) or row sums (finite probes); the rest come from one
    dedicated kernel per large CPU tensor: its sum of squares (``squares``) or its plain sum.
    """

    vector: torch.Tensor
    positions: tuple[int, ...]
    norms: int
    squares: bool

    def sum_of_squares(self, values: list[float]) -> float:
        """The sum of the squares of the probed tensors' elements, from a gradient reading's host values."""
        norms = values[: self.norms]
        head = math.fsum(map(operator.mul, norms, norms))  # (C-level: no Python call per tensor)
        return head + (math.fsum(values[self.norms :]) if self.squares else 0.0)

    def suspects(self, values: list[float]) -> list[int]:
        """The positions whose value is NaN/Inf: the tensors that may hold a non-finite element."""
        if all(map(math.isfinite, values)):
            return []
        return [p for p, v in zip(self.positions, values, strict=True) if not math.isfinite(v)]

    def l2_norms(self, values: list[float]) -> list[tuple[int, float]]:
        """``(position, L2 norm)`` for a gradient reading's values (squared entries are square-rooted)."""
        return [
            (p, v if i < self.norms else math.sqrt(abs(v)))
            for i, (p, v) in enumerate(zip(self.positions, values, strict=True))
        ]


class _Rows:
    """Tensors of one shape and dtype on CPU, copied into one persistent block and reduced row by row (norms in
    one pass; sums by a BLAS matrix-vector product): a fixed number of kernels however many tensors share the
    shape. The block is kept so that no step pays for fresh pages."""

    __slots__ = ("positions", "_block", "_ones")

    def __init__(self, positions: tuple[int, ...], dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.positions = positions
        self._block = torch.empty((len(positions) * shape[0], *shape[1:]), dtype=dtype)
        self._ones = torch.ones(math.prod(shape), dtype=dtype)

    def values(self, tensors: Sequence[torch.Tensor], squares: bool) -> torch.Tensor:
        torch.cat([tensors[i] for i in self.positions], out=self._block)
        block = self._block.view(len(self.positions), -1)
        # one pass over the block either way (a square in place and a product read it twice)
        return torch.linalg.vector_norm(block, dim=1) if squares else block @ self._ones


@dataclass(frozen=True, slots=True)
class _DevicePlan:
    foreach: tuple[tuple[int, ...], ...]  # one position group per dtype: torch._foreach_norm
    rows: tuple[_Rows, ...]  # same shape and dtype (CPU): one block each
    single: tuple[int, ...]  # large CPU tensors: a kernel each
    positions: tuple[int, ...]  # the order of the values: foreach, rows, single
    norms: int  # values from foreach and rows (the rest come from single)


@dataclass(frozen=True, slots=True)
class Plan:
    """How to probe one list of tensors: which kernels read which tensors, per device."""

    devices: tuple[_DevicePlan, ...]
    sharded: bool = False  # the tensors are DTensors: probe their local shards

    @staticmethod
    def make(tensors: Sequence[torch.Tensor], sharded: bool = False) -> Plan:
        by_device: dict[torch.device, dict[tuple[torch.dtype, tuple[int, ...]], list[int]]] = {}
        for i, t in enumerate(tensors):
            if t.dtype in _FLOATS:
                by_device.setdefault(t.device, {}).setdefault((t.dtype, tuple(t.shape)), []).append(i)
        plans = []
        for device, by_layout in by_device.items():
            foreach: dict[torch.dtype, list[int]] = {}
            rows: list[_Rows] = []
            single: list[int] = []
            count = sum(map(len, by_layout.values()))
            total = sum(math.prod(shape) * len(p) for (_, shape), p in by_layout.items())
            # few small tensors: one _foreach_norm per dtype is fewer kernels than blocks and dots
            few = count <= _FEW and total <= _SMALL
            for (dtype, shape), positions in by_layout.items():
                numel = math.prod(shape)
                blas = dtype in (torch.float32, torch.float64)
                if device.type != "cpu" or not shape or numel == 0 or not blas or few:
                    foreach.setdefault(dtype, []).extend(positions)
                elif numel >= _LARGE:
                    single.extend(positions)
                elif len(positions) >= 4 and numel <= _ROWS and numel * len(positions) <= _BLOCK:
                    rows.append(_Rows(tuple(positions), dtype, shape))
                else:
                    foreach.setdefault(dtype, []).extend(positions)
            groups = [tuple(p) for p in foreach.values()]
            plans.append(
                _DevicePlan(
                    foreach=tuple(groups),
                    rows=tuple(rows),
                    single=tuple(single),
                    positions=sum(groups, ()) + sum((r.positions for r in rows), ()) + tuple(single),
                    norms=sum(map(len, groups)) + sum(len(r.positions) for r in rows),
                )
            )
        return Plan(tuple(plans), sharded)

    def probe(self, tensors: Sequence[torch.Tensor], squares: bool) -> list[Reading]:
        grad = torch.is_grad_enabled()  # (the two C calls of a no_grad() block, without its context objects)
        torch._C._set_grad_enabled(False)
        try:
            readings = []
            for plan in self.devices:
                values: list[torch.Tensor] = []
                for positions in plan.foreach:
                    members = list(map(tensors.__getitem__, positions))  # (C-level)
                    dtype = None if members[0].dtype == torch.float32 else torch.float32
                    values.append(torch.stack(torch._foreach_norm(members, 2, dtype=dtype)))
                for rows in plan.rows:
                    values.append(rows.values(tensors, squares))
                # Gradients are read first to last (backward wrote the first layers' last); weights, read right
                # after the optimizer wrote them first to last, last to first: the most recently written are
                # still cached.
                if plan.single:
                    order = plan.single if squares else plan.single[::-1]
                    large = [_sum(tensors[i].reshape(-1), squares) for i in order]
                    # (one stack of the 0-d results instead of a reshape of each: an op less per tensor)
                    values.append(torch.stack(large if squares else large[::-1]))
                vector = torch.cat(values) if len(values) > 1 else values[0]
                if vector.dtype != torch.float32:
                    vector = vector.float()
                readings.append(Reading(vector, plan.positions, plan.norms, squares))
            return readings
        finally:
            torch._C._set_grad_enabled(grad)


def _sum(flat: torch.Tensor, squares: bool) -> torch.Tensor:
    return torch.dot(flat, flat) if squares else flat.sum()


class Prober:
    """Probes tensor lists, reusing the :class:`Plan` made for the same parameters (compared by identity).

    A plan that no longer fits (a parameter moved to another device or changed shape in place) makes a kernel
    fail; the plan is then made again and the probe repeated.
    """

    def __init__(self, size: int = 8) -> None:
        self._plans: dict[int, tuple[tuple[torch.Tensor, ...], Plan]] = {}
        self._size = size
        self.sharded = False  # the last probe read DTensor shards

    def _plan(self, key: int, owners: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> Plan:
        owned = tuple(owners)
        cached = self._plans.get(key)
        # by identity (C-level): == on tensors of the same length that are not the same would compare values
        if cached is not None and len(cached[0]) == len(owned) and all(map(operator.is_, cached[0], owned)):
            return cached[1]
        sharded = any(local_part(t) is not t for t in tensors)
        plan = Plan.make([local_part(t) for t in tensors] if sharded else tensors, sharded)
        if len(self._plans) >= self._size:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = (owned, plan)
        return plan

    def probe(
        self,
        key: int,
        owners: Sequence[torch.Tensor],
        tensors: Sequence[torch.Tensor],
        squares: bool,
    ) -> list[Reading]:
        """Probe ``tensors`` (the parameters ``owners`` themselves, or their gradients): one reading per device.

        ``key`` names the call site (one cached plan each); ``squares`` gives gradient norms (sum of squares
        for the history), otherwise values that are only checked for finiteness.
        """
        plan = self._plan(key, owners, tensors)
        self.sharded = plan.sharded
        if plan.sharded:  # DTensors (FSDP2): this rank's shards; their reductions would be collectives
            tensors = [local_part(t) for t in tensors]
        try:
            return plan.probe(tensors, squares)
        except (RuntimeError, IndexError):
            plan = Plan.make(tensors, plan.sharded)
            self._plans[key] = (tuple(owners), plan)
            return plan.probe(tensors, squares)
