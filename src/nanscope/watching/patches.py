"""The global patches: one producer of engine events, installed while at least one listener is open.

* ``torch.autograd.backward`` (``Tensor.backward`` calls it): ``backward_started`` with the tensors handed in,
  ``backward_ended`` once it returns (the gradients as backward left them, before any clip or unscale);
* ``_BaseDataLoaderIter._next_index`` / ``__next__``: the dataset indices of every batch, quarantined samples
  dropped from them, and the failing batch handed out again for a replay (:mod:`nanscope.watching.data`);
* ``torch.optim.Optimizer.__init__``: every optimizer the moment it exists (zero-code discovery);
* ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` / ``clip_grads_with_norm_``: the script clips,
  and at which limit;
* ``torch.amp.GradScaler.scale`` / ``step``: which losses are scaled, and the steps a scaler skipped.

Listeners implement :class:`~nanscope.watching.events.Events`; nothing here knows the engine.
:func:`installed` tells a test what is in place.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd
import torch.nn.utils
import torch.nn.utils.clip_grad
from torch.utils.data import dataloader as _dl

from nanscope.watching import data as _data
from nanscope.watching.events import MISSING, Events

__all__ = ["activate", "active", "deactivate", "installed", "is_scaled"]

_lock = threading.RLock()
_listeners: list[Events] = []
_originals: dict[tuple[Any, str], Any] = {}
# outputs of an enabled GradScaler.scale(), by id (a WeakSet would compare tensors with ==: a device sync,
# and NaN != NaN); an entry is dropped when its tensor dies
_scaled: dict[int, weakref.ref[torch.Tensor]] = {}


def active() -> tuple[Events, ...]:
    return tuple(_listeners)


def installed() -> list[str]:
    """Names of the patches currently in place (empty once every listener is closed)."""
    return [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in _originals]


def is_scaled(tensors: Any) -> bool:
    """Whether a tensor handed to ``backward()`` came out of an enabled ``GradScaler.scale()``."""
    if not _scaled:  # (no scaler in use: the common case, on the hot path)
        return False
    items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors or ())
    return any(
        isinstance(t, torch.Tensor) and (r := _scaled.get(id(t))) is not None and r() is t for t in items
    )


def _patched_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        for listener in tuple(_listeners):
            listener.backward_started(tensors)
        result = original(tensors, *args, **kwargs)
        for listener in tuple(_listeners):
            listener.backward_ended(tensors)
        return result

    return backward


def _patched_optimizer_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __init__(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for listener in tuple(_listeners):
            listener.optimizer_created(self)

    return __init__


def _patched_clip(original: Callable[..., Any], kind: str, limit_arg: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
        limit = args[0] if args else kwargs.get(limit_arg)
        if isinstance(limit, (int, float)) and not isinstance(limit, bool):
            for listener in tuple(_listeners):
                listener.clipped(kind, float(limit))
        return original(parameters, *args, **kwargs)

    return clip


def _patched_scale(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def scale(self: Any, outputs: Any) -> Any:
        result = original(self, outputs)
        if getattr(self, "_enabled", False) and isinstance(result, torch.Tensor):
            _scaled[id(result)] = weakref.ref(result, functools.partial(_forget, id(result)))
        return result

    return scale


def _forget(key: int, _: object) -> None:
    _scaled.pop(key, None)


def _patched_scaler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def step(self: Any, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_enabled", False) or not hasattr(optimizer, "register_step_post_hook"):
            return original(self, optimizer, *args, **kwargs)
        stepped: list[bool] = []
        handle = optimizer.register_step_post_hook(lambda *_: stepped.append(True))
        try:
            result = original(self, optimizer, *args, **kwargs)
        finally:
            handle.remove()
        if not stepped:
            for listener in tuple(_listeners):
                listener.update_skipped(optimizer)
        return result

    return step


def _on_batch(batch: Any, indices: Any, source: str, dataset: Any, loader: Any) -> None:
    for listener in tuple(_listeners):
        listener.batch_drawn(batch, indices, source, dataset, loader)


def _refeed(dataset: Any) -> Any:
    for listener in tuple(_listeners):
        batch = listener.batch_to_replay(dataset)
        if batch is not MISSING:
            return batch
    return MISSING


def _excluded(dataset: Any) -> frozenset[int]:
    found: frozenset[int] = frozenset()
    for listener in tuple(_listeners):
        found |= listener.excluded_indices(dataset)
    return found


def _set(owner: Any, name: str, value: Any) -> None:
    _originals[(owner, name)] = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)
    setattr(owner, name, value)


def _install() -> None:
    _set(torch.autograd, "backward", _patched_backward(torch.autograd.backward))
    _set(torch.optim.Optimizer, "__init__", _patched_optimizer_init(torch.optim.Optimizer.__init__))
    clip_norm = _patched_clip(torch.nn.utils.clip_grad.clip_grad_norm_, "norm", "max_norm")
    clip_value = _patched_clip(torch.nn.utils.clip_grad.clip_grad_value_, "value", "clip_value")
    for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
        _set(owner, "clip_grad_norm_", clip_norm)
        _set(owner, "clip_grad_value_", clip_value)
    # the two-stage form (get_total_norm, then clip_grads_with_norm_) that accelerate uses
    with_norm = _patched_clip(torch.nn.utils.clip_grad._clip_grads_with_norm_, "norm", "max_norm")
    _set(torch.nn.utils, "clip_grads_with_norm_", with_norm)
    _set(torch.nn.utils.clip_grad, "_clip_grads_with_norm_", with_norm)
    scaler = torch.amp.GradScaler
    _set(scaler, "scale", _patched_scale(scaler.scale))
    _set(scaler, "step", _patched_scaler_step(scaler.step))
    base = _dl._BaseDataLoaderIter
    _set(base, "_next_index", _data.patched_next_index(base._next_index, _excluded))
    _set(base, "__next__", _data.patched_next(base.__next__, _on_batch, _refeed))


def _uninstall() -> None:
    for (owner, name), original in reversed(list(_originals.items())):
        setattr(owner, name, original)
    _originals.clear()


def activate(listener: Events) -> None:
    with _lock:
        if not _listeners:
            _install()
        _listeners.append(listener)


def deactivate(listener: Events) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners:
            _uninstall()
