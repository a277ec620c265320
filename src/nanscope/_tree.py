"""The one walk over nested batches and outputs: tensors inside tuples, lists, dicts, namedtuples, dataclasses."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch

__all__ = ["iter_tensors", "local_part"]


def iter_tensors(obj: Any, path: str = "batch", _depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside a (nested) batch with a readable path: ``batch[0]``, ``batch['label']``, ``batch.x``."""
    if _depth > 6:
        return
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{path}[{key!r}]", _depth + 1)
    elif isinstance(obj, (list, tuple)):
        if hasattr(obj, "_fields"):  # namedtuple
            for name in obj._fields:
                yield from iter_tensors(getattr(obj, name), f"{path}.{name}", _depth + 1)
        else:
            for i, value in enumerate(obj):
                yield from iter_tensors(value, f"{path}[{i}]", _depth + 1)
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from iter_tensors(getattr(obj, f.name), f"{path}.{f.name}", _depth + 1)


def local_part(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (FSDP2, tensor parallel), else ``t`` itself. Checks read the local
    part: a reduction of a DTensor is a collective, and a collective on one rank alone hangs."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None or not _is_dtensor(t) else to_local()


def _is_dtensor(t: torch.Tensor) -> bool:
    return any(c.__name__ == "DTensor" for c in type(t).__mro__)
