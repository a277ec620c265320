"""The fused always-on reads: per-tensor L2 norms of many tensors in one pass per (device, dtype).

``torch._foreach_norm`` reads every element once; a NaN anywhere makes that tensor's norm NaN and an Inf
makes it Inf, so a finite norm proves a finite tensor. The converse has one exception: a finite tensor whose
squares overflow float32 (|x| > ~1.8e19) has an infinite norm, so an infinite norm is only a candidate that
the exact check in :mod:`nanscope.detect.scan` confirms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["fused_norms"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.no_grad()
def fused_norms(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Per device: a float32 vector ``[total_norm, norm_0, norm_1, ...]`` and the positions it covers.

    Tensors of other dtypes (integers, float8) are skipped: integers cannot hold NaN.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        if t.dtype in _FLOATS and t.numel() > 0:
            groups.setdefault((t.device, t.dtype), []).append(i)
    by_device: dict[torch.device, tuple[list[torch.Tensor], list[int]]] = {}
    for (device, dtype), positions in groups.items():
        members = [tensors[i] for i in positions]
        if dtype == torch.float32:
            norms = torch._foreach_norm(members, 2)
        else:
            norms = torch._foreach_norm(members, 2, dtype=torch.float32)
        parts, covered = by_device.setdefault(device, ([], []))
        parts.append(torch.stack(norms))
        covered.extend(positions)
    vectors, positions_out = [], []
    for parts, covered in by_device.values():
        flat = parts[0] if len(parts) == 1 else torch.cat(parts)
        total = torch.linalg.vector_norm(flat).reshape(1)
        vectors.append(torch.cat([total, flat]))
        positions_out.append(covered)
    return vectors, positions_out
