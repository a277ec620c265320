"""The hook producer: module forward hooks and optimizer step hooks, turned into engine events.

* Forward hooks go on each watched model. When a micro-batch reaches ``backward()`` without any watched
  forward (a loop that calls ``self.body(x)``, as a LightningModule's ``training_step`` does), the engine asks
  for more (:meth:`Hooks.deepen`): the models' submodules two levels deep are hooked from then on. So the
  common loop pays two hook calls per forward, not two per submodule.
* Under ``optimizer.step(closure)`` (Lightning's automatic optimization, LBFGS) forward and backward run
  *inside* ``step``, after its pre-hook: the pre-hook wraps the closure, so ``before_update`` comes after the
  closure returns and before the optimizer applies anything. Without a closure the pre-hook sends it.
* Every handle is kept and :meth:`Hooks.remove` removes them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from nanscope.watching.events import Events

__all__ = ["Hooks", "unwrap_optimizer"]

_DEPTH = 2  # forward hooks on the model and its submodules this deep


def unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer inside framework wrappers (accelerate's ``AcceleratedOptimizer``, Lightning's
    ``LightningOptimizer``)."""
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(opt, "_optimizer", None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not opt:
            opt = inner
            continue
        break
    return opt


class Hooks:
    def __init__(self, events: Events, live: Callable[[], bool]) -> None:
        self._events = events
        self._live = live
        self._handles: list[RemovableHandle] = []
        self._hooked: set[int] = set()
        self._models: list[nn.Module] = []
        self._depth = 0  # submodule levels hooked (see deepen)

    def models(self, models: list[nn.Module]) -> None:
        self._models += models
        for model in models:
            for module in _shallow_modules(model, self._depth):
                self._hook(module)

    def deepen(self) -> None:
        """Hook the models' submodules too (the loop calls them, not the models)."""
        if self._depth < _DEPTH:
            self._depth = _DEPTH
            for model in self._models:
                for module in _shallow_modules(model, self._depth):
                    self._hook(module)

    def _hook(self, module: nn.Module) -> None:
        if id(module) not in self._hooked:
            self._hooked.add(id(module))
            # (the events themselves are the hooks: same arguments, one Python frame less per forward each)
            self._handles.append(
                module.register_forward_pre_hook(self._events.forward_started, with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._events.forward_ended))

    def optimizer(self, opt: torch.optim.Optimizer) -> None:
        self._handles.append(opt.register_step_pre_hook(self.pre_step))
        self._handles.append(opt.register_step_post_hook(self.post_step))

    def every_optimizer(self) -> None:
        """torch's global step hooks: every optimizer, including those created later (zero-code mode)."""
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles.append(register_optimizer_step_pre_hook(self.pre_step))
        self._handles.append(register_optimizer_step_post_hook(self.post_step))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ the hook functions
    def pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # torch hands the pre-hook step's own args, the optimizer first: (opt, closure?, ...)
        closure = kwargs.get("closure")
        by_name = callable(closure)
        if not by_name:
            closure = args[1] if len(args) > 1 else None
        if not callable(closure):
            self._events.before_update(opt)  # (which does nothing unless the watcher is live)
            return None
        if not self._live():
            return None
        if by_name:
            return args, {**kwargs, "closure": self._wrap(opt, closure)}
        return (args[0], self._wrap(opt, closure), *args[2:]), kwargs

    def _wrap(self, opt: torch.optim.Optimizer, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_then_check() -> Any:
            loss = closure()
            self._events.before_update(opt)
            return loss

        return closure_then_check

    def post_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._events.after_update(opt)


def _shallow_modules(model: nn.Module, depth: int) -> list[nn.Module]:
    out, level = [model], [model]
    for _ in range(depth):
        level = [child for m in level for child in m.children()]
        out += level
    return out
