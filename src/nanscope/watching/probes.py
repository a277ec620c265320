"""The always-on reads: one pass over many tensors giving one number per tensor, in a few kernels per device.

A NaN anywhere makes a sum, dot product or norm NaN and an Inf makes it Inf (or NaN), so a finite value
proves the tensor finite. The converse has one exception: finite values whose squares or sums overflow
float32 (|x| > ~1.8e19) also give Inf, so a non-finite value only names a suspect that the exact element-wise
check in :mod:`nanscope.detect.scan` confirms.

``torch._foreach_norm`` reads a list of tensors in one call (a few multi-tensor kernels on CUDA, a loop of
norm kernels on CPU). On CPU a BLAS dot product or a plain sum is 1.6-3x faster per element than a norm, which
pays for its own kernel launch from about 2^18 elements: such tensors get one. The per-tensor values are
stacked into one small vector, so a read several steps later (CUDA) still names the bad tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Reading", "grad_sq_norm", "finite_probe"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LARGE = 1 << 18  # elements: from here a dedicated BLAS kernel per CPU tensor beats a norm in the batch


@dataclass(frozen=True, slots=True)
class Reading:
    """One device's probe: one value per tensor at ``positions`` (indices into the probed sequence).

    The first ``norms`` values are L2 norms (``_foreach_norm``); the rest come from one dedicated kernel per
    large CPU tensor: its sum of squares (``squares``) or its plain sum.
    """

    vector: torch.Tensor
    positions: tuple[int, ...]
    norms: int
    squares: bool

    def evaluate(self, host: torch.Tensor) -> tuple[float, list[int], list[float]]:
        """``(sum of squares, suspects, values)``: suspects are the positions whose value is NaN/Inf."""
        values = host.tolist()
        head = values[: self.norms]
        total = math.fsum(v * v for v in head) + (math.fsum(values[self.norms :]) if self.squares else 0.0)
        suspects = [p for p, v in zip(self.positions, values, strict=True) if not math.isfinite(v)]
        return total, suspects, values

    def l2_norms(self, values: list[float]) -> list[tuple[int, float]]:
        """``(position, L2 norm)`` for a gradient reading's values (squared entries are square-rooted)."""
        return [
            (p, v if i < self.norms else math.sqrt(abs(v)))
            for i, (p, v) in enumerate(zip(self.positions, values, strict=True))
        ]


def _groups(tensors: Sequence[torch.Tensor]) -> dict[torch.device, dict[torch.dtype, list[int]]]:
    groups: dict[torch.device, dict[torch.dtype, list[int]]] = {}
    for i, t in enumerate(tensors):
        if t.dtype in _FLOATS:
            groups.setdefault(t.device, {}).setdefault(t.dtype, []).append(i)
    return groups


@torch.no_grad()
def _probe(tensors: Sequence[torch.Tensor], squares: bool) -> list[Reading]:
    readings = []
    for device, by_dtype in _groups(tensors).items():
        cpu = device.type == "cpu"
        batched: list[int] = []
        single: list[int] = []
        for positions in by_dtype.values():
            for i in positions:
                large = (
                    cpu
                    and tensors[i].numel() >= _LARGE
                    and tensors[i].dtype in (torch.float32, torch.float64)
                )
                (single if large else batched).append(i)
        values: list[torch.Tensor] = []
        for dtype in by_dtype:
            members = [tensors[i] for i in batched if tensors[i].dtype == dtype]
            if members:
                values += torch._foreach_norm(
                    members, 2, dtype=None if dtype == torch.float32 else torch.float32
                )
        for i in single:
            flat = tensors[i].reshape(-1)
            values.append(torch.dot(flat, flat) if squares else flat.sum())
        vector = torch.stack([v.float() if v.dtype != torch.float32 else v for v in values])
        readings.append(Reading(vector, tuple(batched + single), len(batched), squares))
    return readings


def grad_sq_norm(tensors: Sequence[torch.Tensor]) -> list[Reading]:
    """Per device: one value per tensor, giving the global sum of squares and which tensors are non-finite."""
    return _probe(tensors, squares=True)


def finite_probe(tensors: Sequence[torch.Tensor]) -> list[Reading]:
    """Per device: one value per tensor that is finite only if (barring overflow) every element is."""
    return _probe(tensors, squares=False)
