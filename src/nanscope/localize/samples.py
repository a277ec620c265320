"""From the rows an op turned non-finite to the dataset indices of the samples behind them."""

from __future__ import annotations

from typing import Any

import torch

from nanscope._tree import iter_tensors
from nanscope.localize.trace import OpFinding

__all__ = ["batch_rows", "culprit_samples", "flat_indices"]


def flat_indices(indices: Any) -> list[int] | None:
    """A batch's dataset indices (a tensor, a sequence or one int) as a list of ints; None when unknown."""
    if indices is None:
        return None
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    if isinstance(indices, int):
        return [indices]
    try:
        return [int(i) for i in indices]
    except (TypeError, ValueError):
        return None


def batch_rows(batch: Any, indices: Any) -> tuple[list[int] | None, int | None]:
    """The batch's dataset indices as a list (None when unknown) and its number of rows."""
    index_list = flat_indices(indices)
    tensors = [t for _, t in iter_tensors(batch) if t.dim() >= 1]
    size = len(index_list) if index_list is not None else (tensors[0].shape[0] if tensors else None)
    return index_list, size


def culprit_samples(
    finding: OpFinding | None, index_list: list[int] | None, size: int | None
) -> tuple[tuple[int, ...] | None, bool]:
    """Dataset indices of the rows the op turned non-finite, and whether that was every row (a batch-level
    problem, e.g. statistics over the batch, rather than bad samples)."""
    rows = finding.rows if finding is not None else None
    whole = bool(rows) and size is not None and size > 1 and len(rows or ()) == size
    if not rows or index_list is None or whole:
        return None, whole
    return tuple(sorted({index_list[r] for r in rows})), whole
