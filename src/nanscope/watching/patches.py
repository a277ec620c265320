"""The few global patches nanscope needs, installed while at least one watcher is open, removed after.

* ``torch.autograd.backward``: sees every tensor handed to ``backward()`` (``Tensor.backward`` calls it).
* ``_BaseDataLoaderIter._next_index`` / ``__next__``: learns the dataset indices of every batch and drops
  quarantined samples from them (:mod:`nanscope.watching.data`).
* ``torch.optim.Optimizer.__init__``: in zero-code mode, learns of every optimizer the moment it exists.

Each patch is a thin dispatcher to the open watchers; :func:`installed` tells a test what is in place.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.autograd
from torch.utils.data import dataloader as _dl

from nanscope.watching import data as _data

if TYPE_CHECKING:
    from nanscope.watching.watcher import Watcher

__all__ = ["activate", "active", "deactivate", "installed"]

_lock = threading.RLock()
_watchers: list[Watcher] = []
_originals: dict[tuple[Any, str], Any] = {}


def active() -> tuple[Watcher, ...]:
    return tuple(_watchers)


def installed() -> list[str]:
    """Names of the patches currently in place (empty once every watcher is closed)."""
    return [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in _originals]


def _patched_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        for watcher in tuple(_watchers):
            watcher._on_backward(tensors)
        return original(tensors, *args, **kwargs)

    return backward


def _patched_optimizer_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for watcher in tuple(_watchers):
            watcher._on_optimizer_created(self)

    return __init__


def _on_batch(batch: Any, indices: Any, source: str, dataset: Any) -> None:
    for watcher in tuple(_watchers):
        watcher._on_batch(batch, indices, source, dataset)


def _refeed(dataset: Any) -> Any:
    for watcher in tuple(_watchers):
        batch = watcher._refeed_batch(dataset)
        if batch is not _data.MISSING:
            return batch
    return _data.MISSING


def _excluded(dataset: Any) -> frozenset[int]:
    found: frozenset[int] = frozenset()
    for watcher in tuple(_watchers):
        found |= watcher._excluded(dataset)
    return found


def _set(owner: Any, name: str, value: Any) -> None:
    _originals[(owner, name)] = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
    setattr(owner, name, value)


def _install() -> None:
    _set(torch.autograd, "backward", _patched_backward(torch.autograd.backward))
    _set(torch.optim.Optimizer, "__init__", _patched_optimizer_init(torch.optim.Optimizer.__init__))
    base = _dl._BaseDataLoaderIter
    _set(base, "_next_index", _data.patched_next_index(base._next_index, _excluded))
    _set(base, "__next__", _data.patched_next(base.__next__, _on_batch, _refeed))


def _uninstall() -> None:
    for (owner, name), original in reversed(list(_originals.items())):
        setattr(owner, name, original)
    _originals.clear()


def activate(watcher: Watcher) -> None:
    with _lock:
        if not _watchers:
            _install()
        _watchers.append(watcher)


def deactivate(watcher: Watcher) -> None:
    with _lock:
        if watcher in _watchers:
            _watchers.remove(watcher)
        if not _watchers:
            _uninstall()
