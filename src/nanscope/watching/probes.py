"""The always-on reads: one pass over many tensors, per device, giving a single number to test.

A NaN anywhere makes a sum, dot product or norm NaN and an Inf makes it Inf (or NaN), so a finite result
proves every element finite. The converse has one exception: finite values whose squares or sums overflow
float32 (|x| > ~1.8e19) also give Inf, so a non-finite result is only a candidate that the exact element-wise
check in :mod:`nanscope.detect.scan` confirms.

Per device the fastest pass differs. On accelerators ``torch._foreach_norm`` reads every tensor in a few
multi-tensor kernels, and the per-tensor norms come back with the total, so a late read (several steps on)
can still name the bad tensors. On CPU ``_foreach_norm`` is a loop of norm kernels; BLAS dot products and
plain sums are 2-3x faster on large tensors, small ones stay batched, and only the total is kept: the
check runs at once there, so the exact confirmation can read the tensors themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Reading", "grad_sq_norm", "finite_probe"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LARGE = 1 << 14  # elements: from here a dedicated kernel per tensor beats the batched CPU loop


@dataclass(frozen=True, slots=True)
class Reading:
    """One device's probe. ``vector`` holds per-tensor L2 norms when ``per_tensor`` (accelerators), else one
    total: the sum of squares (``squares``) or a plain sum. ``positions`` index the probed sequence."""

    vector: torch.Tensor
    positions: tuple[int, ...]
    per_tensor: bool
    squares: bool

    def evaluate(self, host: torch.Tensor) -> tuple[float, list[int]]:
        """``(total, suspects)`` from the values read on the host: the total is the sum of squares (or a value
        that is finite iff every element is); suspects are the positions that may hold NaN/Inf."""
        if self.per_tensor:
            values = host.tolist()
            total = math.fsum(v * v for v in values)
            suspects = [p for p, v in zip(self.positions, values, strict=True) if not math.isfinite(v)]
            return total, suspects
        total = float(host[0])
        return total, ([] if math.isfinite(total) else list(self.positions))


def _groups(tensors: Sequence[torch.Tensor]) -> dict[torch.device, dict[torch.dtype, list[int]]]:
    groups: dict[torch.device, dict[torch.dtype, list[int]]] = {}
    for i, t in enumerate(tensors):
        if t.dtype in _FLOATS and t.numel() > 0:
            groups.setdefault(t.device, {}).setdefault(t.dtype, []).append(i)
    return groups


def _foreach_norms(members: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float32:
        return torch.stack(torch._foreach_norm(members, 2))
    return torch.stack(torch._foreach_norm(members, 2, dtype=torch.float32))


@torch.no_grad()
def _probe(tensors: Sequence[torch.Tensor], squares: bool) -> list[Reading]:
    readings = []
    for device, by_dtype in _groups(tensors).items():
        covered = tuple(i for positions in by_dtype.values() for i in positions)
        if device.type != "cpu":  # a handful of kernels; the host sums the per-tensor norms
            per_dtype = [_foreach_norms([tensors[i] for i in pos], dt) for dt, pos in by_dtype.items()]
            vector = per_dtype[0] if len(per_dtype) == 1 else torch.cat(per_dtype)
            readings.append(Reading(vector, covered, True, squares))
            continue
        parts = []
        for dtype, positions in by_dtype.items():
            small = [tensors[i] for i in positions if tensors[i].numel() < _LARGE]
            if small:
                small_norms = _foreach_norms(small, dtype)
                parts.append((small_norms * small_norms).sum())
            for i in positions:
                t = tensors[i]
                if t.numel() < _LARGE:
                    continue
                if dtype not in (torch.float32, torch.float64):
                    value = torch.linalg.vector_norm(t, dtype=torch.float32)
                    parts.append(value * value if squares else value)
                elif squares:
                    flat = t.reshape(-1)
                    parts.append(torch.dot(flat, flat).float())
                else:
                    parts.append(t.sum(dtype=torch.float32))
        total = torch.stack(parts).sum() if len(parts) > 1 else parts[0]
        readings.append(Reading(total.reshape(1).float(), covered, False, squares))
    return readings


def grad_sq_norm(tensors: Sequence[torch.Tensor]) -> list[Reading]:
    """Per device: the sum of squares of every element (the squared global L2 norm) and finiteness."""
    return _probe(tensors, squares=True)


def finite_probe(tensors: Sequence[torch.Tensor]) -> list[Reading]:
    """Per device: a number that is finite only if (barring overflow) every element is finite."""
    return _probe(tensors, squares=False)
