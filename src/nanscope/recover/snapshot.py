"""Snapshots of the training state for ``rollback``: taken every K steps, bounded, in memory or on disk.

A snapshot holds copies (on the CPU) of the parameters and buffers, every optimizer's, LR scheduler's and
GradScaler's ``state_dict`` and every RNG stream. It is taken after a completed step and counts as *good* only
once ``confirm`` later steps were read finite; rotation never drops the newest good snapshot in favour of one
that is not confirmed yet. On disk, a snapshot is written to a temporary file, flushed and renamed into place,
so a crash during a write leaves the previous files intact and never a half-written "last good" one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nanscope._atomic import atomic_write
from nanscope._rank import distributed_rank
from nanscope.recover.policy import RollbackOptions

__all__ = ["Snapshot", "Snapshots", "State"]


@dataclass
class State:
    """The live objects a snapshot copies and a rollback writes back into (in place)."""

    params: Sequence[torch.Tensor]
    buffers: Sequence[torch.Tensor]
    optimizers: Sequence[torch.optim.Optimizer]
    schedulers: Sequence[Any] = ()
    scalers: Sequence[Any] = ()


@dataclass
class Snapshot:
    step: int
    nbytes: int
    payload: dict[str, Any] | None = None  # in memory
    path: Path | None = None  # on disk
    good: bool = False


def _copy(value: Any) -> Any:
    """A deep copy with every tensor copied to the CPU (containers rebuilt, so nothing aliases the live state)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def capture(state: State) -> dict[str, Any]:
    cuda = (
        [t.clone() for t in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else []
    )
    return {
        "params": [_copy(p) for p in state.params],
        "buffers": [_copy(b) for b in state.buffers],
        "optimizers": [_copy(o.state_dict()) for o in state.optimizers],
        "schedulers": [_copy(s.state_dict()) for s in state.schedulers],
        "scalers": [_copy(s.state_dict()) for s in state.scalers],
        "rng": {"cpu": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()},
    }


@torch.no_grad()
def apply(payload: dict[str, Any], state: State) -> None:
    """Write a snapshot back into the live objects (parameters and buffers in place, so every reference the
    optimizer and the script hold stays valid)."""
    for live, saved in zip(state.params, payload["params"], strict=True):
        live.copy_(saved)
    for live, saved in zip(state.buffers, payload["buffers"], strict=True):
        live.copy_(saved)
    for opt, saved in zip(state.optimizers, payload["optimizers"], strict=True):
        opt.load_state_dict(_copy(saved))  # a copy: the optimizer must not update the snapshot in place
    for sched, saved in zip(state.schedulers, payload["schedulers"], strict=True):
        sched.load_state_dict(_copy(saved))
    for scaler, saved in zip(state.scalers, payload["scalers"], strict=True):
        scaler.load_state_dict(_copy(saved))
    rng = payload["rng"]
    torch.set_rng_state(rng["cpu"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])


@dataclass
class Snapshots:
    options: RollbackOptions
    items: list[Snapshot] = field(default_factory=list)
    taken: int = 0
    seconds: float = 0.0
    hold: int | None = None  # rotation keeps the newest good snapshot taken before this step (a warning's)
    _last_step: int = 0

    def spacing(self, step: int) -> int:
        """Steps between snapshots at ``step``: ``every``, or (adaptive) a quarter of the run so far, between
        ``confirm`` and ``max_every`` steps (a short run is not rolled back to its start each time; the
        same on every rank)."""
        if self.options.every is not None:
            return self.options.every
        return min(self.options.max_every, max(self.options.confirm, 1, step // 4))

    def due(self, step: int) -> bool:
        """Whether a snapshot is due after ``step`` completed steps."""
        if any(s.step == step for s in self.items):
            return False
        if self.options.every is not None:
            return step % self.options.every == 0
        return step - self._last_step >= self.spacing(step)

    def take(self, step: int, state: State) -> Snapshot:
        start = time.perf_counter()
        payload = capture(state)
        snap = Snapshot(step=step, nbytes=_nbytes(payload))
        if self.options.directory is None:
            snap.payload = payload
        else:
            snap.path = self._write(step, payload)
        self.items.append(snap)
        self._rotate()
        self.taken += 1
        self._last_step = step
        self.seconds += time.perf_counter() - start
        return snap

    def _write(self, step: int, payload: dict[str, Any]) -> Path:
        directory = Path(self.options.directory or ".")
        rank = distributed_rank()  # each rank its own files: RNG states and FSDP2 shards differ per rank
        name = f"nanscope-snapshot-{step:09d}" + ("" if rank is None else f".rank{rank}") + ".pt"
        return atomic_write(directory / name, lambda fh: torch.save(payload, fh))

    def _rotate(self) -> None:
        newest, held = self.newest_good(), self.newest_good(before=self.hold)
        kept = {id(newest), id(held)}
        extra = 1 if held is not None and held is not newest else 0  # held beyond ``keep`` while it matters
        while len(self.items) > self.options.keep + extra:
            victim = next((s for s in self.items if id(s) not in kept), None)
            if victim is None:
                break
            self._drop(victim)

    def _drop(self, snap: Snapshot) -> None:
        self.items.remove(snap)
        if snap.path is not None:
            snap.path.unlink(missing_ok=True)

    def confirm(self, verified_step: int) -> None:
        """Every step up to ``verified_step`` was read finite: snapshots old enough become good."""
        for snap in self.items:
            if not snap.good and snap.step + self.options.confirm <= verified_step:
                snap.good = True
        self._rotate()

    def newest_good(self, before: int | None = None) -> Snapshot | None:
        good = [s for s in self.items if s.good and (before is None or s.step < before)]
        return good[-1] if good else None

    def best(self, before: int | None = None) -> Snapshot | None:
        """The snapshot to roll back to: the newest good one (taken before step ``before`` when one was),
        else the oldest one kept (nearest the start)."""
        if before is not None:
            found = self.newest_good(before)
            if found is not None:
                return found
        return self.newest_good() or (self.items[0] if self.items else None)

    def restore(self, snap: Snapshot, state: State) -> None:
        payload = snap.payload
        if payload is None:
            assert snap.path is not None
            payload = torch.load(snap.path, map_location="cpu", weights_only=False)
        apply(payload, state)
        for later in [s for s in self.items if s.step > snap.step]:
            self._drop(later)  # taken after the good state, possibly while the failure was building up

    def close(self) -> None:
        """Remove this run's snapshot files (they are scratch state, not checkpoints)."""
        for snap in list(self.items):
            if snap.path is not None:
                snap.path.unlink(missing_ok=True)
