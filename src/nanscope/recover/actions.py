"""Carrying out recovery: skip, roll back, back off the learning rate, clip, quarantine.

The policy (pure) has decided; :class:`Recoverer` owns the state these actions need and is called by the
engine at safe points of the step:

* a discarded step has every gradient set to ``None`` just before the update (:func:`discard_update`), so
  ``step()`` leaves parameters, optimizer state, step counts and weight decay alone (zeroing gradients would
  not: Adam-like optimizers would still decay their moments and apply weight decay);
* a rollback is carried out at the next update or training forward, never inside ``backward()`` (autograd's
  saved tensors must not change under it);
* the learning-rate back-off multiplies each param group's ``lr`` just before ``step()`` and restores it just
  after, so schedulers keep their own values;
* clipping scales the gradients on the device by ``min(1, threshold / norm)`` computed from the probe's
  values (no host sync); the threshold comes from earlier steps' norms (:class:`~nanscope.recover.clip.ZClip`).
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nanscope.recover.clip import ZClip
from nanscope.recover.policy import Policy
from nanscope.recover.quarantine import Quarantine
from nanscope.recover.snapshot import Snapshots, State
from nanscope.report.model import Intervention, Outcome

__all__ = ["LiveState", "Recoverer", "discard_update", "find_schedulers_and_scalers"]

_MAX_RECORDS = 100
_EPISODE_CALM = 200  # steps without an early warning that end an episode of spikes


def discard_update(params: Sequence[torch.Tensor]) -> None:
    """Make the coming ``step()`` a no-op: optimizers leave parameters without gradients untouched."""
    for p in params:
        p.grad = None


class Recoverer:
    def __init__(self, policy: Policy, quarantine: str | None, live: Callable[[], State]) -> None:
        self._policy = policy
        self._live = live
        self.snapshots = Snapshots(policy.rollback) if policy.takes_snapshots else None
        path = quarantine or policy.quarantine_file
        self.quarantine = Quarantine(path) if (policy.quarantine or path) else None
        self._zclip = ZClip(policy.clip) if policy.clip is not None else None
        self.interventions: list[Intervention] = []
        self.interventions_dropped = 0
        self.failures = 0
        self.consecutive = 0
        self.skipped = 0
        self._rollbacks = 0
        self._undone = 0
        self._clipped = 0
        self._recovery_seconds = 0.0
        self.gave_up = False
        self.rollback_due = False
        self._backoff = 1.0  # the learning-rate multiplier in force
        self._ceiling = 2.0  # multipliers at or above this failed: relaxation stays below it
        self._relaxed = False  # the multiplier in force was reached by relaxing
        self._calm_since = 0  # step of the last rollback or back-off relaxation
        self._episode: int | None = None  # step of the first early warning since the last calm or rollback
        self._last_warning = 0
        self._lr_saved: dict[int, list[tuple[dict[str, Any], float]]] = {}

    # ------------------------------------------------------------------ checkpointed state
    _COUNTERS = (
        "failures",
        "consecutive",
        "skipped",
        "_rollbacks",
        "_undone",
        "_clipped",
        "_backoff",
        "_ceiling",
        "_relaxed",
        "_calm_since",
    )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on: counters, the LR back-off, the quarantine (JSON-safe)."""
        state: dict[str, Any] = {name.lstrip("_"): getattr(self, name) for name in self._COUNTERS}
        state["quarantine"] = self.quarantine.state_dict() if self.quarantine is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._COUNTERS:
            if name.lstrip("_") in state:
                setattr(self, name, type(getattr(self, name))(state[name.lstrip("_")]))
        if state.get("quarantine") is not None:
            if self.quarantine is None:
                self.quarantine = Quarantine(None)
            self.quarantine.load_state_dict(state["quarantine"])

    # ------------------------------------------------------------------ records
    def record(self, step: int, kind: Any, detail: str, **data: Any) -> None:
        if len(self.interventions) < _MAX_RECORDS:
            self.interventions.append(Intervention(step, kind, detail, data))
        else:
            self.interventions_dropped += 1

    def failed(self) -> None:
        self.failures += 1
        self.consecutive += 1

    def skip(self, step: int, kind: str, reason: str) -> None:
        """The failing step's update is discarded (the engine does it at the update)."""
        self.skipped += 1
        why = f" ({reason})" if reason else ""
        self.record(step, "skip", f"{kind}: the update was discarded{why}")

    def retry(self, step: int, reason: str) -> None:
        """The failure did not reproduce: the replayed step's update is applied in place of the failing one."""
        self.record(step, "retry", f"not_reproducible: {reason}; its finite update was applied")

    def schedule_rollback(self) -> None:
        """Roll back at the next safe point (the next update or training forward)."""
        self.rollback_due = True

    def give_up(self, step: int, reason: str, *, gave_up: bool) -> None:
        self.gave_up = gave_up
        self.record(step, "give_up", reason)

    def quarantine_samples(
        self, dataset: Any, samples: tuple[int, ...], reason: str, step: int, kind: str
    ) -> None:
        if self.quarantine is None:
            return
        new = self.quarantine.add(dataset, samples, reason, step)
        if new:
            where = f"; kept in {self.quarantine.path}" if self.quarantine.path else ""
            self.record(
                step,
                "quarantine",
                f"samples {', '.join(map(str, new[:20]))} excluded from later batches ({kind}){where}",
                samples=list(new),
                cause=kind,
            )

    def outcome(self, steps: int, seconds_lost: float, median_step: float) -> Outcome | None:
        if not (self._policy.acts or self.quarantine):
            return None
        snaps = self.snapshots
        return Outcome(
            failed_steps=self.failures,
            skipped_steps=self.skipped,
            rollbacks=self._rollbacks,
            steps_undone=self._undone,
            quarantined=tuple(s.index for s in self.quarantine.samples()) if self.quarantine else (),
            clipped_steps=self._clipped,
            clip_rate=self._clipped / max(steps, 1),
            snapshots=snaps.taken if snaps else 0,
            snapshot_seconds=snaps.seconds if snaps else 0.0,
            snapshot_bytes=snaps.items[-1].nbytes if snaps and snaps.items else 0,
            recovery_seconds=self._recovery_seconds,
            seconds_lost=seconds_lost + self._undone * median_step,
            gave_up=self.gave_up,
        )

    # ------------------------------------------------------------------ before and after an update
    def first_snapshot(self, step: int) -> None:
        if self.snapshots is not None and not self.snapshots.items and step == 0:
            self.snapshots.take(0, self._live())  # the state before the first update

    def back_off(self, opt: torch.optim.Optimizer) -> float:
        """Scale this update's learning rates by the back-off in force; returns the factor (1.0: none)."""
        if self._backoff == 1.0:
            return 1.0
        factor = self.lr_factor
        saved = []
        for group in opt.param_groups:
            lr = group.get("lr")
            if isinstance(lr, float):
                saved.append((group, lr))
                group["lr"] = lr * factor
        self._lr_saved[id(opt)] = saved
        return factor

    def restore_lr(self, opt: torch.optim.Optimizer) -> None:
        for group, lr in self._lr_saved.pop(id(opt), ()):
            group["lr"] = lr

    def clip(self, params: Sequence[torch.Tensor], readings: Sequence[Any]) -> float | None:
        """Adaptive clipping from the gradient probe's device values; returns the limit applied."""
        if self._zclip is None or not readings:
            return None
        limit = self._zclip.threshold
        if limit is None:
            return None
        with torch.no_grad():
            self._clip(params, readings, limit)
        return limit

    def _clip(self, params: Sequence[torch.Tensor], readings: Sequence[Any], limit: float) -> None:
        for reading in readings:
            v = reading.vector
            head, tail = v[: reading.norms], v[reading.norms :]
            sq = (head * head).sum() + (tail.sum() if reading.squares else 0)
            coef = (limit / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            grads = [g for p in params if (g := p.grad) is not None and g.device == v.device]
            if grads:
                torch._foreach_mul_(grads, coef.to(grads[0].dtype))

    @property
    def lr_factor(self) -> float:
        """The learning-rate multiplier in force (1.0: none)."""
        return self._backoff

    def _can_relax(self) -> bool:
        """Whether the back-off may still be doubled back: it is on, and doubling stays below every
        multiplier that failed."""
        return (
            self._policy.rollback.cooldown is not None
            and self._backoff < 1.0
            and min(1.0, 2 * self._backoff) < self._ceiling
        )

    def warned(self, step: int) -> None:
        """An early warning (a loss or grad-norm spike) at ``step``: the first of an episode marks the state
        a rollback should go back before, and rotation keeps a good snapshot from before it."""
        if self._episode is None:
            self._episode = step
            if self.snapshots is not None:
                self.snapshots.hold = step
        self._last_warning = step

    def roll_back(self, step: int, growth: float | None = None) -> None:
        """Restore the newest good snapshot from before the episode's first early warning, and back the LR
        off: by ``1 / growth`` (the grad norm's measured per-step growth before the failure) when that is
        lower than the policy's ``backoff``."""
        self.rollback_due = False
        assert self.snapshots is not None
        episode, self._episode = self._episode, None
        snap = self.snapshots.best(before=episode)
        self.snapshots.hold = None
        if snap is None:
            return
        start = time.perf_counter()
        good = snap.good
        self.snapshots.restore(snap, self._live())
        self._recovery_seconds += time.perf_counter() - start
        self._rollbacks += 1
        self._undone += step - snap.step
        options = self._policy.rollback
        factor, steady = options.backoff, False
        if self._relaxed:  # it failed at a rate it had just doubled back to: back to the last one that held
            factor = 0.5
        elif growth is not None and growth * options.backoff > 1:  # steady divergence: the rate is too high
            factor, steady = max(options.backoff**2, 1 / growth), True
        if steady or self._relaxed:  # the rate itself is too high (it diverged, or failed once relaxed to):
            self._ceiling = min(self._ceiling, self._backoff)  # relaxation stays below it from now on
        self._backoff *= factor
        self._relaxed = False
        self._calm_since = step
        total = self._backoff
        until = (
            "for the rest of the run"
            if not self._can_relax()
            else f"doubled back per {options.cooldown} steps without failure, below x{min(self._ceiling, 1):.3g}"
        )
        sized = f"; x{factor:.3g} from the grad norm's growth of x{growth:.3g} per step" if steady else ""
        before = (
            f" (before the spike at step {episode})" if episode is not None and snap.step < episode else ""
        )
        self.record(
            step,
            "rollback",
            f"restored the snapshot of step {snap.step}{before} ({'confirmed good' if good else 'not yet confirmed'}"
            f"; {step - snap.step} steps undone); lr x{total:.3g}{sized} ({until})",
            to_step=snap.step,
            confirmed=good,
            steps_undone=step - snap.step,
            lr_factor=total,
            backoff=factor,
            growth=growth,
            cooldown=options.cooldown,
        )

    def iteration_done(self, step: int) -> None:
        """A step completed (all optimizers stepped): relax the back-off, take a snapshot when one is due."""
        cooldown = self._policy.rollback.cooldown
        if cooldown is not None and self._can_relax() and step - self._calm_since >= cooldown:
            self._backoff = min(1.0, 2 * self._backoff)
            self._relaxed = True
            self._calm_since = step
        if self._episode is not None and step - self._last_warning > _EPISODE_CALM:
            self._episode = None  # the spikes passed without a failure
            if self.snapshots is not None:
                self.snapshots.hold = None
        if self.snapshots is not None and self.snapshots.due(step) and not self.rollback_due:
            self.snapshots.take(step, self._live())

    def settled(self, step: int, norm: float | None, clip_threshold: float | None) -> None:
        """Every value of a finite iteration was read."""
        self.consecutive = 0
        if self.snapshots is not None:
            self.snapshots.confirm(step + 1)
        if self._zclip is not None and norm is not None:
            self._zclip.update(norm)
            if clip_threshold is not None and norm > clip_threshold:
                self._clipped += 1

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.close()


class LiveState:
    """The live objects of the run for snapshots: parameters, buffers and optimizers as they are now, and the
    LR schedulers and GradScalers driving them (found once, by one heap scan, at the first snapshot)."""

    def __init__(self) -> None:
        self._state: State | None = None

    def update(
        self,
        params: Sequence[torch.Tensor],
        buffers: Sequence[torch.Tensor],
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> State:
        if self._state is None:
            schedulers, scalers = find_schedulers_and_scalers(optimizers)
            self._state = State(params, buffers, optimizers, schedulers, scalers)
        else:
            self._state.params, self._state.buffers, self._state.optimizers = params, buffers, optimizers
        return self._state


def find_schedulers_and_scalers(optimizers: Sequence[torch.optim.Optimizer]) -> tuple[list[Any], list[Any]]:
    """LR schedulers driving these optimizers and the GradScalers alive now (one heap scan)."""
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    wanted = {id(o) for o in optimizers}
    schedulers: list[Any] = []
    scalers: list[Any] = []
    scaler_types = tuple(
        t for t in (getattr(torch.amp, "GradScaler", None), getattr(torch.cuda.amp, "GradScaler", None)) if t
    )
    with warnings.catch_warnings():  # isinstance() on deprecated module proxies warns
        warnings.simplefilter("ignore")
        found = [o for o in gc.get_objects() if _is(o, (LRScheduler, ReduceLROnPlateau, *scaler_types))]
    for obj in found:
        if isinstance(obj, (LRScheduler, ReduceLROnPlateau)):
            if id(getattr(obj, "optimizer", None)) in wanted:
                schedulers.append(obj)
        else:
            scalers.append(obj)
    return schedulers, scalers


def _is(obj: Any, types: tuple[type, ...]) -> bool:
    try:
        return isinstance(obj, types)
    except ReferenceError:  # a dead weak proxy
        return False
