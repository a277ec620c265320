"""What both framework callbacks share: one watcher per fit, reused from ``nanscope run`` when it watches
already, and the recovery state that travels in the framework's checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nanscope.report.model import Report
from nanscope.watching.watcher import Watcher, open_watchers

__all__ = ["Session"]


class Session:
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self.watcher: Watcher | None = None
        self.owned = False  # False: nanscope run's watcher, which it closes and reports itself
        self.report: Report | None = None
        self._pending: Mapping[str, Any] | None = None  # state loaded before the fit began

    def begin(self, model: Any, optimizers: Any, tensorboard: Any = None) -> Watcher:
        """Attach (or reuse ``nanscope run``'s watcher); ``tensorboard``: the framework's writer (or a lazy
        source of it), used unless the options name one."""
        tensorboard = self.options.get("tensorboard", tensorboard)
        if self.watcher is None:
            running = open_watchers()
            if running:
                self.watcher, self.owned = running[0], False
                if tensorboard is not None:
                    self.watcher.log_to(tensorboard)
            else:
                options = {**self.options, "tensorboard": tensorboard}
                self.watcher, self.owned = Watcher(model, optimizers, **options), True
        if self._pending is not None:
            self.watcher.load_state_dict(self._pending)
            self._pending = None
        return self.watcher

    def end(self, exc: BaseException | None = None) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None or not self.owned:
            return
        if exc is not None:
            watcher.ended_by(exc)
        self.report = watcher.close()

    def state_dict(self) -> dict[str, Any]:
        if self.watcher is not None:
            return self.watcher.state_dict()
        return dict(self._pending) if self._pending is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self.watcher is not None:
            self.watcher.load_state_dict(state)
        else:
            self._pending = state
