"""Which batch each micro-batch consumed: drawn batches are matched to consumption, not to recency.

Loaders read ahead of use (accelerate's ``DataLoaderShard`` yields batch k only after fetching k+1; the HF
Trainer fetches every micro-batch of a step before the first forward; Lightning prefetches unsized loaders),
so "the last batch a loader yielded" is often not the batch in forward. The ledger keeps, per loader
iterator, the batches drawn and not yet consumed. At the first training forward of a micro-batch:

1. a batch whose tensors (their storage) are among the forward's inputs is the one consumed (exact on CPU,
   and wherever the loop feeds the loader's tensors as they are); older batches of that loader are dropped;
2. otherwise the oldest unconsumed batch of the loader that was consumed from last (FIFO: read-ahead keeps
   the order), or, before any consumption, of the loader whose latest draw happened with grad enabled.

Validation loaders interleaved with training are never matched by a training forward, so their batches
stay out of the training iterations. Each epoch iterates a new loader iterator: when one starts over the
Dataset of the loader consumed from last (with grad enabled), it takes that loader's place, and what the old
one had drawn but nobody consumed is dropped (and returned, so that a batch handed out again for a replay
can be handed out once more).
"""

from __future__ import annotations

import collections
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from nanscope._tree import iter_tensors

__all__ = ["Drawn", "Ledger"]

_DEPTH = 16  # unconsumed batches kept per loader
_LOADERS = 8  # loaders tracked at once (the oldest is forgotten)


@dataclass(eq=False, slots=True)
class Drawn:
    """One batch as a loader handed it out."""

    batch: Any
    indices: Any  # dataset indices of its rows (None when unknown)
    source: str
    dataset: Any  # the Dataset behind the loader (None for observe_batch)
    order: int = 0  # global draw order
    grad_enabled: bool = True
    replay: bool = False  # the failing batch, handed out again for the in-loop replay
    _storages: frozenset[int] | None = field(default=None, repr=False)

    def storages(self) -> frozenset[int]:
        if self._storages is None:
            self._storages = _storages(self.batch)
        return self._storages


def _storages(obj: Any) -> frozenset[int]:
    found = set()
    for _, t in iter_tensors(obj):
        if t.numel():
            try:
                found.add(t.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
                continue
    return frozenset(found)


class Ledger:
    def __init__(self) -> None:
        self._queues: collections.OrderedDict[int, deque[Drawn]] = collections.OrderedDict()
        self._last_loader: int | None = None
        self._datasets: dict[int, Any] = {}  # the Dataset behind each tracked iterator
        self._counter = itertools.count()

    def drawn(self, item: Drawn, loader: Any) -> list[Drawn]:
        """Record a drawn batch; returns the unconsumed batches of an iterator it replaces (a new epoch)."""
        key = id(loader)
        item.order = next(self._counter)
        item.grad_enabled = torch.is_grad_enabled()
        dropped: list[Drawn] = []
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque(maxlen=_DEPTH)
            last = self._last_loader
            next_epoch = item.grad_enabled and item.dataset is not None  # of the training loader?
            if last is not None and next_epoch and self._datasets.get(last) is item.dataset:
                dropped = list(self._queues.pop(last, ()))
                self._datasets.pop(last, None)
                self._last_loader = key
            while len(self._queues) > _LOADERS:
                gone, _ = self._queues.popitem(last=False)
                self._datasets.pop(gone, None)
        self._datasets[key] = item.dataset
        self._queues.move_to_end(key)
        queue.append(item)
        return dropped

    def consume(self, args: Any, kwargs: Any) -> Drawn | None:
        """The batch a micro-batch whose first training forward got ``args``/``kwargs`` consumes."""
        pending = sum(map(len, self._queues.values()))  # (C-level)
        if not pending:
            return None
        fed = _storages((args, kwargs)) if pending > 1 else frozenset()  # one candidate: no matching needed
        if fed:
            for key, queue in self._queues.items():
                for position, item in enumerate(queue):
                    if item.storages() & fed:
                        for _ in range(position + 1):
                            queue.popleft()
                        self._last_loader = key
                        return item
        fallback = self._fallback()
        if fallback is None:
            return None
        self._last_loader = fallback
        return self._queues[fallback].popleft()

    def _fallback(self) -> int | None:
        if self._last_loader is not None:  # the training loader is known: nothing new drawn from it yet
            return self._last_loader if self._queues.get(self._last_loader) else None
        candidates = [(q[-1].order, k) for k, q in self._queues.items() if q and q[-1].grad_enabled]
        return max(candidates)[1] if candidates else None
