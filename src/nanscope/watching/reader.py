"""Reading small device tensors on the host without a per-step host-device sync.

On CPU a submitted value is handed to its callback at once. On CUDA it is copied into pinned host memory with
``non_blocking=True``, an event is recorded, and the callback runs at a later :meth:`poll` once the event has
completed: the always-on path never waits for the GPU. ``eager=True`` trades that for an immediate read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["DeviceReader"]

Callback = Callable[[list[torch.Tensor]], None]


class DeviceReader:
    def __init__(self, eager: bool = False) -> None:
        self.eager = eager
        self._pending: deque[tuple[Any, list[torch.Tensor], Callback]] = deque()

    def submit(self, tensors: Sequence[torch.Tensor], callback: Callback) -> None:
        """Run ``callback(host_tensors)`` when the values are on the host."""
        if all(t.device.type == "cpu" for t in tensors):
            callback(list(tensors))
            return
        if self.eager:
            callback([t.cpu() for t in tensors])
            return
        hosts = []
        for t in tensors:
            if t.device.type == "cpu":
                hosts.append(t)
                continue
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            host.copy_(t, non_blocking=True)
            hosts.append(host)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, hosts, callback))

    def poll(self) -> None:
        """Run the callbacks whose values have arrived, oldest first; never blocks."""
        while self._pending and self._pending[0][0].query():
            _, hosts, callback = self._pending.popleft()
            callback(hosts)

    def flush(self) -> None:
        """Wait for every pending value and run its callback (at close, or once something tripped)."""
        while self._pending:
            event, hosts, callback = self._pending.popleft()
            event.synchronize()
            callback(hosts)

    def __len__(self) -> int:
        return len(self._pending)
