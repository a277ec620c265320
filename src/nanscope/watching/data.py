"""Which dataset indices make up each batch a DataLoader yields (any sampler, any ``num_workers``).

The sampler runs in the main process even with worker processes: ``_next_index()`` draws a batch of indices
and (with workers) sends it as task ``_send_idx``. Batches come back through ``__next__``; with workers the
task that was just consumed is the one that left ``_task_info``. Both work for ``in_order=False`` too.
Records live in a weak dictionary keyed by the iterator, so nothing is attached to user objects.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from nanscope.errors import InternalErrorWarning
from nanscope.watching.events import MISSING

__all__ = ["patched_next", "patched_next_index"]

_records: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _without(index: Any, excluded: frozenset[int]) -> Any:
    """The sampler's batch without the excluded indices (``None`` when nothing is left of it)."""
    if isinstance(index, int):
        return None if index in excluded else index
    kept = [i for i in index if int(i) not in excluded]
    return kept or None


def patched_next_index(
    original: Callable[[Any], Any], excluded: Callable[[Any], frozenset[int]] | None = None
) -> Callable[[Any], Any]:
    """``excluded(dataset)``: quarantined indices, dropped from every batch the sampler draws (a batch left
    empty is replaced by the sampler's next one)."""

    @functools.wraps(original)
    def _next_index(it: Any) -> Any:
        index = original(it)
        if excluded is not None:
            skip = excluded(getattr(it, "_dataset", None))
            if skip:
                index = _without(index, skip)
                while index is None:
                    index = _without(original(it), skip)  # StopIteration ends the epoch as usual
        try:
            record = _records.get(it)
            if record is None:
                record = _records[it] = {}
            record[getattr(it, "_send_idx", "last")] = index
        except Exception as exc:  # never break the user's data loading
            warnings.warn(
                f"nanscope could not record batch indices: {exc!r}", InternalErrorWarning, stacklevel=2
            )
        return index

    return _next_index


def _source(it: Any) -> str:
    dataset = getattr(it, "_dataset", None)
    return f"DataLoader({type(dataset).__name__})"


def patched_next(
    original: Callable[[Any], Any],
    sink: Callable[[Any, Any, str, Any, Any], None],
    refeed: Callable[[Any], Any] | None = None,
) -> Callable[[Any], Any]:
    """``refeed(dataset)`` may return a batch to hand out again instead of the next one (replay), else
    ``MISSING``; ``sink(batch, indices, source, dataset, iterator)`` learns of every batch."""

    @functools.wraps(original)
    def __next__(it: Any) -> Any:
        if refeed is not None:
            again = refeed(getattr(it, "_dataset", None))
            if again is not MISSING:  # drawn again, in this loader's order: the sink learns of it too
                sink(again, None, _source(it), getattr(it, "_dataset", None), it)
                return again
        task_info = getattr(it, "_task_info", None)
        before = set(task_info) if task_info is not None else None
        batch = original(it)
        try:
            record = _records.get(it, {})
            if before is not None:
                gone = sorted(before - set(it._task_info))
                indices = MISSING
                for task in gone:
                    found = record.pop(task, MISSING)
                    if indices is MISSING:
                        indices = found
            else:
                indices = record.pop("last", MISSING)
            found = None if indices is MISSING else indices
            sink(batch, found, _source(it), getattr(it, "_dataset", None), it)
        except Exception as exc:
            warnings.warn(f"nanscope could not track a batch: {exc!r}", InternalErrorWarning, stacklevel=2)
        return batch

    return __next__
