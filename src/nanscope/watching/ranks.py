"""The distributed coordinator: every rank reaches the same verdict at the same point, and the culprit is named.

Under ``torch.distributed`` (a process group of more than one rank) a trip is not acted on where it happens:
one rank acting alone leaves the others in the next collective (gloo: "connection closed"; NCCL: blocked until
the watchdog). Instead, once per step, at the first optimizer's step pre-hook, which every rank passes every
step, each rank contributes one flag ("I saw a non-finite value") to an all-reduce over the world. It is issued
on every rank unconditionally, over a host (gloo) group, so it never waits on a device stream. When the sum is
zero the step goes on. Otherwise every rank is on the bad path together: they exchange what each measured
(:class:`RankNote`), name the culprit rank(s) from rank-local evidence, replay together when the op must be
found (with gradient synchronisation off, so that each rank sees its own backward), and carry out one decision.

Which evidence is rank-local: a rank's own loss and batch (DDP never reduces the loss), its weights and
hyperparameters, and gradients that were not synchronised (``no_sync`` micro-batches, the replay). Gradients
after DDP's all-reduce are identical everywhere and name no rank; FSDP2's reduce-scattered shards neither.
"""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nanscope.detect.diagnose import Observation

__all__ = ["RankNote", "Ranks", "Settlement", "settle"]


@dataclass(frozen=True, slots=True)
class RankNote:
    """What one rank measured of the failing step; exchanged between the ranks on the bad path only."""

    rank: int
    tripped: bool  # a check of this rank saw a non-finite value since the last agreement
    observation: Observation | None  # of its own trip; after a replay, of its replay (own trip or not)
    local: bool  # the trip is rank-local evidence (its loss, batch, weights or unsynchronised gradients)
    loss_finite: bool | None  # its scalar losses of the failing iteration (None: none seen)
    wants_replay: bool  # its observation leaves the op to be found by an in-loop replay
    # its failing micro-batch can be run again in the loop (RNG captured, batch from a loader)
    can_replay: bool
    applied: bool  # the failing iteration's update had already been applied when it was seen
    replay_found: bool = False  # after a replay: its own forward/backward created the NaN/Inf


@dataclass(frozen=True, slots=True)
class Settlement:
    """The agreed reading of the notes: whose observation stands for the run, and who is to blame."""

    lead: int  # the rank whose observation becomes the diagnosis
    culprits: tuple[int, ...] | None  # None: every rank shows it (a global fault) or no rank could be named
    replay: bool  # the op is still to be found: every rank replays its own micro-batch


def settle(notes: Sequence[RankNote], *, replayed: bool = False) -> Settlement:
    """Name the culprit rank(s) from the notes of all ranks (pure: every rank computes the same)."""
    world = len(notes)
    tripped = [n.rank for n in notes if n.tripped]
    local = [r for r in tripped if notes[r].local]
    if local and len(local) < world:  # its own loss, batch or weights: only the culprits show it
        lead, culprits = local[0], tuple(local)
    elif local:  # every rank shows it on its own state: a global fault (a hyperparameter, the weights)
        lead, culprits = local[0], None
    elif tripped and len(tripped) < world:  # unsynchronised gradients: only the culprits see them
        lead, culprits = tripped[0], tuple(tripped)
    else:  # every rank saw it only after the gradient reduction
        found = [n.rank for n in notes if n.replay_found]
        if replayed and found and len(found) < world:  # the replay with local gradients tells them apart
            lead, culprits = found[0], tuple(found)
        else:
            lead, culprits = (tripped or [0])[0], None
    replay = not replayed and notes[lead].wants_replay and all(n.can_replay for n in notes)
    return Settlement(lead, culprits, replay)


class Ranks:
    """This process's place in ``torch.distributed`` and the collectives of the coordinator.

    Inactive (every query answers "single process") until a process group of more than one rank exists; the
    group may be created after watching began (``nanscope run`` starts before the script's
    ``init_process_group``).
    """

    def __init__(self) -> None:
        self._group: Any = None
        self._ready = False
        self.rank = 0
        self.world = 1
        self._unsynced: list[tuple[nn.Module, bool]] = []
        self._found: list[nn.Module] | None = None  # the DDP / FSDP2 wrappers of the models

    @property
    def active(self) -> bool:
        if self._ready:
            if _initialized():
                return True
            self._ready = False  # the group was destroyed: single process again
            self._group = None
            return False
        if not _initialized():
            return False
        import torch.distributed as dist

        world = dist.get_world_size()
        if world < 2:
            return False
        self.rank, self.world = dist.get_rank(), world
        self._ready = True
        return True

    # ------------------------------------------------------------------ collectives (every rank calls them)
    def agree(self, bad: bool, share: float | None = None) -> tuple[tuple[int, ...], float | None]:
        """The ranks that report ``bad``, and the world's sum of every rank's ``share`` (``None`` unless every
        rank had one): one all-reduce of ``world + 2`` numbers on the host."""
        import torch.distributed as dist

        values = torch.zeros(self.world + 2, dtype=torch.float64)
        values[self.rank] = float(bad)
        if share is not None:
            values[self.world], values[self.world + 1] = share, 1.0
        dist.all_reduce(values, group=self._host_group())
        flags = values[: self.world].tolist()
        total, count = values[self.world :].tolist()
        return tuple(r for r, f in enumerate(flags) if f), total if count == self.world else None

    def gather(self, note: RankNote) -> list[RankNote]:
        """Every rank's note (bad path only)."""
        import torch.distributed as dist

        notes: list[Any] = [None] * self.world
        dist.all_gather_object(notes, note, group=self._host_group())
        return notes

    def _host_group(self) -> Any:
        """The world over gloo: the default group when it is gloo, else one created the first time (a
        collective itself, reached by every rank at the first agreement)."""
        if self._group is None:
            import torch.distributed as dist

            backend = str(dist.get_backend())
            self._group = dist.group.WORLD if "gloo" in backend else dist.new_group(backend="gloo")
        return self._group

    # ------------------------------------------------------------------ gradient synchronisation
    def unsync(self, models: Iterable[nn.Module]) -> None:
        """Gradient synchronisation off on the DDP / FSDP2 modules around ``models``: each rank keeps its own
        backward (for a replay); :meth:`resync` switches it back."""
        module: Any
        for module in self._wrappers_of(models):
            if hasattr(module, "require_backward_grad_sync"):  # DDP: what no_sync() switches
                self._unsynced.append((module, bool(module.require_backward_grad_sync)))
                module.require_backward_grad_sync = False
            else:  # FSDP2
                self._unsynced.append((module, True))
                module.set_requires_gradient_sync(False)

    def gradients_unsynced(self, models: Iterable[nn.Module]) -> bool:
        """Whether gradient synchronisation is off now (inside DDP's ``no_sync``, FSDP2 without gradient
        sync): the gradients are this rank's own (slow path)."""
        for module in self._wrappers_of(models):
            if getattr(module, "require_backward_grad_sync", True) is False:
                return True
            state = getattr(module, "_get_fsdp_state", None)
            group = getattr(state(), "_fsdp_param_group", None) if callable(state) else None
            if getattr(group, "reduce_grads", True) is False:
                return True
        return False

    def _wrappers_of(self, models: Iterable[nn.Module]) -> list[nn.Module]:
        """The DDP / FSDP2 modules around ``models`` (one ``gc`` walk, the first time; bad path only)."""
        if self._found is None:
            self._found = _wrappers({id(m) for m in models})
        return self._found

    def resync(self) -> None:
        module: Any
        for module, value in self._unsynced:
            if hasattr(module, "require_backward_grad_sync"):
                module.require_backward_grad_sync = value
            else:
                module.set_requires_gradient_sync(value)
        self._unsynced.clear()


def _wrappers(wanted: set[int]) -> list[nn.Module]:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            if not issubclass(type(o), nn.Module):
                continue
            if (
                type(o).__name__ == "DistributedDataParallel"
                and id(getattr(o, "module", None)) in wanted
                or id(o) in wanted
                and callable(getattr(o, "set_requires_gradient_sync", None))
            ):
                found.append(o)
    return found


def _initialized() -> bool:
    return _is_initialized()()


@functools.cache
def _is_initialized() -> Callable[[], bool]:
    """``torch.distributed.is_initialized`` where torch has it (asked every step: resolved once)."""
    import torch.distributed as dist

    return dist.is_initialized if dist.is_available() else lambda: False
