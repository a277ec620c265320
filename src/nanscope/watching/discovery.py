"""Finding the models an optimizer trains, and naming its tensors the way ``named_parameters()`` does.

In zero-code mode nobody hands nanscope the model: it walks the live ``nn.Module`` objects once per new
optimizer, keeps those that own one of its parameters, and climbs to the top-most module holding them
(unwrapping ``torch.compile`` and (Distributed)DataParallel wrappers).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Naming", "find_roots", "graph_parameters", "normalize_models"]


def _unwrap(module: nn.Module) -> nn.Module:
    for _ in range(4):
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
            continue
        break
    return module


def find_roots(params: Iterable[torch.Tensor]) -> list[nn.Module]:
    """Top-most live modules whose subtrees own any of ``params`` (one ``gc`` walk; called once per optimizer)."""
    wanted = {id(p) for p in params}
    if not wanted:
        return []
    with warnings.catch_warnings():  # isinstance() on lazy deprecated module attributes can warn
        warnings.simplefilter("ignore")
        # type(), not isinstance(): a weakref.proxy to a module (Lightning keeps some) claims to be one
        modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    parent: dict[int, list[nn.Module]] = {}
    owners = []
    for m in modules:
        for child in m._modules.values():
            if child is not None:
                parent.setdefault(id(child), []).append(m)
        if any(id(p) in wanted for p in m._parameters.values() if p is not None):
            owners.append(m)
    roots: dict[int, nn.Module] = {}
    for owner in owners:
        stack, seen = [owner], set()
        while stack:
            m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            ups = parent.get(id(m))
            if ups:
                stack.extend(ups)
            else:
                roots[id(m)] = m
    unwrapped = {id(r): r for r in (_unwrap(m) for m in roots.values())}
    return list(unwrapped.values())


def graph_parameters(tensors: object, limit: int = 100_000) -> list[torch.Tensor]:
    """The leaf tensors that require grad behind ``tensors``' autograd graph: the parameters a loop without
    an optimizer trains (walked once, at its first ``backward()``)."""
    items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors or ())  # type: ignore[call-overload]
    stack: list[Any] = [t.grad_fn for t in items if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[int] = set()
    found: dict[int, torch.Tensor] = {}
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad
        if isinstance(variable, torch.Tensor):
            found[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def normalize_models(
    model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None,
) -> dict[str, nn.Module]:
    """``{prefix: module}``; a single model gets the empty prefix so names match its ``named_parameters()``."""
    if model is None:
        return {}
    if isinstance(model, nn.Module):
        return {"": model}
    if isinstance(model, Mapping):
        return {f"{k}.": m for k, m in model.items()}
    models = list(model)
    if len(models) == 1:
        return {"": models[0]}
    names: dict[str, nn.Module] = {}
    for i, m in enumerate(models):
        base = type(m).__name__
        names[f"{base}." if f"{base}." not in names else f"{base}{i}."] = m
    return names


class Naming:
    """Names for parameters, buffers and modules across the watched models.

    One model: names exactly as its ``named_parameters()``/``named_modules()``. Several: each name is prefixed
    with the model's key (API mapping) or class name, e.g. ``Generator.fc.weight``.
    """

    def __init__(self) -> None:
        self._given: dict[str, nn.Module] = {}
        self._found: list[nn.Module] = []
        self.models: dict[str, nn.Module] = {}
        self._params: dict[int, str] = {}
        self._modules: dict[int, str] = {}

    def set_models(self, models: Mapping[str, nn.Module]) -> None:
        self._given = dict(models)
        self._rebuild()

    def add_found(self, modules: Iterable[nn.Module]) -> bool:
        """Add discovered models; True when any was new."""
        known = {id(m) for m in (*self._given.values(), *self._found)}
        new = [m for m in modules if id(m) not in known]
        if new:
            self._found.extend(new)
            self._rebuild()
        return bool(new)

    def _rebuild(self) -> None:
        models = dict(self._given)
        if not models and len(self._found) == 1:
            models[""] = self._found[0]
        else:
            for i, m in enumerate(self._found):
                key = f"{type(m).__name__}."
                models[key if key not in models else f"{type(m).__name__}{i}."] = m
        self.models = models
        self._params, self._modules = {}, {}
        for prefix, model in models.items():
            for name, p in model.named_parameters(remove_duplicate=False):
                self._params.setdefault(id(p), prefix + name)
            for name, m in model.named_modules():
                self._modules.setdefault(id(m), (prefix + name) if name else prefix.rstrip("."))

    def param(self, p: torch.Tensor, fallback: str) -> str:
        return self._params.get(id(p), fallback)

    def module(self, m: nn.Module) -> str | None:
        return self._modules.get(id(m))

    def param_names(self) -> dict[int, str]:
        """id -> name of every model parameter (for the tracer's provenance)."""
        return dict(self._params)

    def buffers(self, floating_only: bool = True) -> list[tuple[str, torch.Tensor]]:
        """Every model's buffers, named; ``floating_only=False`` adds counters such as BatchNorm's
        ``num_batches_tracked`` (restored on rollback, never checked for NaN)."""
        out = []
        for prefix, model in self.models.items():
            for name, b in model.named_buffers():
                if b.is_floating_point() or not floating_only:
                    out.append((prefix + name, b))
        return out
