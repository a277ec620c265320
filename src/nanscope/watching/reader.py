"""Reading small device tensors on the host without a per-step host-device sync.

On CPU a submitted value is handed to its callback at once. On an accelerator values are collected during
the step and :meth:`commit` (once per step) concatenates them into one float32 vector per device, copies it
into pinned host memory with ``non_blocking=True`` and records an event; the callbacks run at a later
:meth:`poll`, oldest first, once the event has completed. So the always-on path costs one small copy per step
and never waits for the device. ``eager=True`` reads at once instead (a sync per value).
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["DeviceReader"]

Callback = Callable[[list[torch.Tensor]], None]
_IS_CPU = operator.attrgetter("is_cpu")  # (C-level: no Python frame per tensor)
_AUTO_COMMIT = 64  # deferred values: commit even if no step comes (e.g. a GradScaler skipping steps)


class DeviceReader:
    def __init__(self, eager: bool = False) -> None:
        self.eager = eager
        self._deferred: list[tuple[list[torch.Tensor], Callback]] = []
        self._pending: deque[tuple[Any, dict[torch.device, torch.Tensor], list[Any]]] = deque()
        self._free: list[torch.Tensor] = []  # pinned host buffers whose values have been delivered

    def submit(self, tensors: Sequence[torch.Tensor], callback: Callback) -> None:
        """Run ``callback(host_tensors)`` (1-D float32 on an accelerator) once the values are on the host."""
        if all(map(_IS_CPU, tensors)):  # (is_cpu: t.device builds a device object, ~10x the time)
            callback(list(tensors))
        elif self.eager:
            callback([t.cpu() for t in tensors])
        else:
            self._deferred.append((list(tensors), callback))
            if len(self._deferred) >= _AUTO_COMMIT:
                self.commit()

    def commit(self) -> None:
        """Start the copy of everything submitted since the last commit: one vector per device."""
        if not self._deferred:
            return
        items, self._deferred = self._deferred, []
        parts: dict[torch.device, list[torch.Tensor]] = {}
        layout = []
        for tensors, callback in items:
            slots = []
            for t in tensors:
                device_parts = parts.setdefault(t.device, [])
                offset = sum(p.numel() for p in device_parts)
                # the probes hand in 1-D float32 values computed without grad: no op is needed for those
                if t.dim() != 1 or t.dtype != torch.float32 or t.requires_grad:
                    t = t.detach().reshape(-1).to(torch.float32)
                device_parts.append(t)
                slots.append((t.device, offset, t.numel()))
            layout.append((slots, callback))
        hosts: dict[torch.device, torch.Tensor] = {}
        for device, device_parts in parts.items():
            flat = device_parts[0] if len(device_parts) == 1 else torch.cat(device_parts)
            if device.type == "cpu":
                hosts[device] = flat
                continue
            host = self._pinned(flat.numel())
            host.copy_(flat, non_blocking=True)
            hosts[device] = host
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, hosts, layout))

    def _pinned(self, n: int) -> torch.Tensor:
        """A pinned float32 host vector of ``n`` values, reused once its previous values were delivered."""
        for i, buffer in enumerate(self._free):
            if buffer.numel() >= n:
                return self._free.pop(i)[:n]
        return torch.empty(max(n, 256), dtype=torch.float32, pin_memory=True)[:n]

    def _deliver(self, hosts: dict[torch.device, torch.Tensor], layout: list[Any]) -> None:
        try:
            for slots, callback in layout:
                callback([hosts[device][offset : offset + n] for device, offset, n in slots])
        finally:  # callbacks read the values and keep no view of them
            for device, host in hosts.items():
                if device.type != "cpu" and len(self._free) < 8:
                    self._free.append(host._base if host._base is not None else host)

    def poll(self) -> None:
        """Run the callbacks whose values have arrived, oldest first; never blocks."""
        while self._pending and self._pending[0][0].query():
            _, hosts, layout = self._pending.popleft()
            self._deliver(hosts, layout)

    def flush(self) -> None:
        """Wait for every value still on its way and run the callbacks (at close)."""
        self.commit()
        while self._pending:
            event, hosts, layout = self._pending.popleft()
            event.synchronize()
            self._deliver(hosts, layout)

    def __len__(self) -> int:
        return len(self._pending) + len(self._deferred)
