"""Pure scans of tensors for non-finite values: batches (row by row), named tensors, hyperparameters.

These run only after the cheap always-on check tripped, so they may read every element.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nanscope._tree import iter_tensors, local_part
from nanscope.localize.samples import flat_indices

__all__ = [
    "BadHyperparameter",
    "BatchScan",
    "TensorRows",
    "hyperparameter_numbers",
    "nonfinite_hyperparameters",
    "nonfinite_names",
    "scan_batch",
]


@dataclass(frozen=True, slots=True)
class TensorRows:
    """A batch tensor holding non-finite values, and which of its rows (batch positions) do."""

    path: str
    rows: tuple[int, ...] | None  # None: the tensor has no batch dimension
    nan: int
    inf: int


@dataclass(frozen=True, slots=True)
class BatchScan:
    """Result of scanning one batch: the bad tensors and the dataset indices of the bad rows."""

    source: str
    tensors: tuple[TensorRows, ...]
    rows: tuple[int, ...]
    samples: tuple[int, ...] | None  # dataset indices of ``rows``; None when the indices are unknown

    @property
    def clean(self) -> bool:
        return not self.tensors


def scan_batch(batch: Any, indices: Any = None, source: str = "batch") -> BatchScan:
    """Find the rows of ``batch`` that hold NaN/Inf and map them to dataset ``indices`` (position → index)."""
    index_list = flat_indices(indices)
    single = isinstance(indices, int) or (isinstance(indices, torch.Tensor) and indices.dim() == 0)
    tensors = [(p, t) for p, t in iter_tensors(batch) if t.is_floating_point() or t.is_complex()]
    batch_len = len(index_list) if index_list is not None else None
    if batch_len is None:
        sizes = [t.shape[0] for _, t in tensors if t.dim() >= 1]
        batch_len = sizes[0] if sizes else None
    found: list[TensorRows] = []
    bad_rows: set[int] = set()
    for path, tensor in tensors:
        finite = torch.isfinite(tensor.detach())
        if bool(finite.all()):
            continue
        det = tensor.detach()
        nan = int(torch.isnan(det).sum())
        inf = int(torch.isinf(det).sum())
        rows: tuple[int, ...] | None = None
        if single:  # an unbatched loader (batch_size=None): the whole "batch" is one sample
            rows = (0,)
            bad_rows.add(0)
        elif det.dim() >= 1 and batch_len is not None and det.shape[0] == batch_len:
            row_ok = finite.reshape(det.shape[0], -1).all(dim=1)
            rows = tuple(int(r) for r in torch.nonzero(~row_ok).reshape(-1).tolist())
            bad_rows.update(rows)
        found.append(TensorRows(path=path, rows=rows, nan=nan, inf=inf))
    ordered = tuple(sorted(bad_rows))
    samples = None
    if index_list is not None and ordered:
        samples = tuple(index_list[r] for r in ordered)
    return BatchScan(source=source, tensors=tuple(found), rows=ordered, samples=samples)


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor | None]]) -> list[str]:
    """Names of the tensors that hold at least one NaN/Inf (an exact element-wise check)."""
    bad = []
    for name, tensor in named:
        if tensor is None or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        if not bool(torch.isfinite(local_part(tensor).detach()).all()):
            bad.append(name)
    return bad


@dataclass(frozen=True, slots=True)
class BadHyperparameter:
    optimizer: int
    group: int
    key: str
    value: float

    @property
    def name(self) -> str:
        prefix = f"optimizer[{self.optimizer}]." if self.optimizer else ""
        return f"{prefix}param_groups[{self.group}].{self.key}"


def hyperparameter_numbers(value: Any, host_only: bool) -> Iterator[float]:
    """The numbers in a param-group value: a number, a small floating tensor's elements (with ``host_only``,
    none from a tensor on an accelerator: reading it would synchronize), a short tuple or list's."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, torch.Tensor) and value.numel() <= 16 and value.is_floating_point():
        if host_only and value.device.type != "cpu":
            return  # reading it would synchronize with the device
        yield from (float(v) for v in value.detach().reshape(-1).tolist())
    elif isinstance(value, (tuple, list)) and len(value) <= 16:
        for v in value:
            yield from hyperparameter_numbers(v, host_only)


def nonfinite_hyperparameters(
    param_groups: Sequence[Mapping[str, Any]], optimizer: int = 0, host_only: bool = False
) -> list[BadHyperparameter]:
    """Every numeric param-group entry (lr, weight_decay, momentum, betas, eps, ...) that is NaN/Inf.

    With ``host_only`` tensors on an accelerator are not read (that would be a host-device sync).
    """
    bad = []
    for g, group in enumerate(param_groups):
        for key, value in group.items():
            if key == "params" or value is None or isinstance(value, (bool, str)):
                continue
            if type(value) is float or type(value) is int:  # the common case, on the hot path
                if value - value == 0:  # inf - inf and nan - nan are nan
                    continue
                bad.append(BadHyperparameter(optimizer, g, key, float(value)))
                continue
            for number in hyperparameter_numbers(value, host_only):
                if not math.isfinite(number):
                    bad.append(BadHyperparameter(optimizer, g, key, number))
                    break
    return bad
