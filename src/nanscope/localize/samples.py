"""From the rows an op turned non-finite to the dataset indices of the samples behind them."""

from __future__ import annotations

from typing import Any

from nanscope._tree import iter_tensors
from nanscope.localize.trace import OpFinding

__all__ = ["batch_rows", "culprit_samples"]


def batch_rows(batch: Any, indices: Any) -> tuple[list[int] | None, int | None]:
    """The batch's dataset indices as a list (None when unknown) and its number of rows."""
    index_list = (
        None
        if indices is None
        else [int(i) for i in (indices if not isinstance(indices, int) else [indices])]
    )
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
