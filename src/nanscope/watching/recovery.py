"""The watcher's acting side for recovery policies: skip, roll back, back off, clip, quarantine, warn early.

``Recovery`` is mixed into :class:`~nanscope.watching.watcher.Watcher`. The policy (pure) has decided; this
module carries decisions out at safe points of the step:

* a discarded step has every gradient set to ``None`` in the optimizer's step pre-hook, so ``step()`` leaves
  parameters, optimizer state, step counts and weight decay alone (zeroing gradients would not: Adam-like
  optimizers would still decay their moments and apply weight decay);
* a rollback is carried out at the next step pre-hook or training forward, never inside ``backward()``
  (autograd's saved tensors must not change under it);
* the learning-rate back-off multiplies each param group's ``lr`` just before ``step()`` and restores it just
  after, so schedulers keep their own values;
* clipping scales the gradients on the device by ``min(1, threshold / norm)`` computed from the probe's
  values (no host sync); the threshold comes from earlier steps' norms (:class:`~nanscope.recover.clip.ZClip`);
* spikes are detected from values already read, when an iteration's reads are complete.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from nanscope.detect.spikes import SpikeDetector, rising_layers
from nanscope.errors import SpikeWarning
from nanscope.recover.clip import ZClip
from nanscope.recover.policy import Policy
from nanscope.recover.quarantine import Quarantine
from nanscope.recover.snapshot import Snapshots, State
from nanscope.report.model import EarlyWarning, Intervention, Outcome
from nanscope.watching.stack import user_stacklevel

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nanscope.watching.discovery import Naming
    from nanscope.watching.probes import Reading
    from nanscope.watching.state import Iteration, Tracked

__all__ = ["Recovery"]

_MAX_RECORDS = 100
_WARN_EVERY = 50  # steps between two spike warnings of the same series
_EPISODE = 10  # spikes of one series less than this many steps apart are one episode (one record)


class Recovery:
    _policy: Policy
    _naming: Naming
    _tracked: dict[int, Tracked]
    _it: Iteration
    _layer_norms: deque[tuple[list[torch.Tensor], list[Reading], list[list[float]]]]

    def _step(self) -> int:
        raise NotImplementedError

    def _params(self, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        raise NotImplementedError

    def _init_recovery(self, quarantine: str | None) -> None:
        policy = self._policy
        self._snapshots = Snapshots(policy.rollback) if policy.handler == "rollback" else None
        path = quarantine or policy.quarantine_file
        self._quarantine = Quarantine(path) if (policy.quarantine or path) else None
        self._zclip = ZClip(policy.clip) if policy.clip is not None else None
        self._spikes = {"loss": SpikeDetector(ratio=2.0), "grad_norm": SpikeDetector(ratio=4.0)}
        self._last_warned = {"loss": -_WARN_EVERY, "grad_norm": -_WARN_EVERY}
        self._early: list[EarlyWarning] = []
        self._episode: dict[str, int] = {}  # series -> step of its last spike
        self._interventions: list[Intervention] = []
        self._interventions_dropped = 0
        self._failures = 0
        self._consecutive = 0
        self._skipped = 0
        self._rollbacks = 0
        self._undone = 0
        self._clipped = 0
        self._recovery_seconds = 0.0
        self._gave_up = False
        self._rollback_due = False
        self._backoff_level = 0  # rollbacks whose LR back-off is still in force
        self._calm_since = 0  # step of the last rollback or back-off relaxation
        self._backoff_relaxed = False  # a back-off was relaxed once
        self._backoff_kept = False  # ...and failed again: the lower rate stays for the rest of the run
        self._lr_saved: dict[int, list[tuple[dict[str, Any], float]]] = {}
        self._state: State | None = None
        self._tick = time.perf_counter()  # when the last iteration ended (applied or discarded)
        self._durations: deque[float] = deque(maxlen=64)  # wall time of the last applied iterations
        self._seconds_lost = 0.0  # wall time of discarded iterations

    def _iteration_ended(self, applied: bool) -> None:
        now = time.perf_counter()
        took, self._tick = now - self._tick, now
        if applied:
            self._durations.append(took)
        else:
            self._seconds_lost += took

    def _median_step(self) -> float:
        ordered = sorted(self._durations)
        return ordered[len(ordered) // 2] if ordered else 0.0

    # ------------------------------------------------------------------ records
    def _record(self, step: int, kind: Any, detail: str, **data: Any) -> None:
        if len(self._interventions) < _MAX_RECORDS:
            self._interventions.append(Intervention(step, kind, detail, data))
        else:
            self._interventions_dropped += 1

    def _outcome(self) -> Outcome | None:
        policy = self._policy
        if not (policy.recovers or policy.quarantine or policy.clip is not None or self._quarantine):
            return None
        snaps = self._snapshots
        steps = max(self._step(), 1)
        return Outcome(
            failed_steps=self._failures,
            skipped_steps=self._skipped,
            rollbacks=self._rollbacks,
            steps_undone=self._undone,
            quarantined=tuple(s.index for s in self._quarantine.samples()) if self._quarantine else (),
            clipped_steps=self._clipped,
            clip_rate=self._clipped / steps,
            snapshots=snaps.taken if snaps else 0,
            snapshot_seconds=snaps.seconds if snaps else 0.0,
            snapshot_bytes=snaps.items[-1].nbytes if snaps and snaps.items else 0,
            recovery_seconds=self._recovery_seconds,
            seconds_lost=self._seconds_lost + self._undone * self._median_step(),
            gave_up=self._gave_up,
        )

    def _early_warnings(self, first_step: int | None) -> tuple[EarlyWarning, ...]:
        """The spikes, each linked to the first non-finite step when that followed within 1000 steps."""
        out = []
        for w in self._early:
            after = None
            if first_step is not None and 0 <= first_step - w.step <= 1000:
                after = first_step - w.step
            out.append(
                EarlyWarning(w.step, w.series, w.value, w.baseline, w.score, w.layers, nonfinite_after=after)
            )
        return tuple(out)

    def _named_norms(
        self, entry: tuple[list[torch.Tensor], list[Reading], list[list[float]]]
    ) -> dict[str, float]:
        """One step of ``_layer_norms`` as parameter name -> gradient L2 norm."""
        params, readings, values = entry
        out: dict[str, float] = {}
        for reading, vals in zip(readings, values, strict=True):
            for position, norm in reading.l2_norms(vals):
                out[self._naming.param(params[position], f"params[{position}]")] = norm
        return out

    # ------------------------------------------------------------------ the live state
    def _live_state(self) -> State:
        """Parameters, buffers, optimizers, and the LR schedulers and GradScalers found at the first call."""
        optimizers = [o for t in self._tracked.values() if (o := t.optimizer()) is not None]
        params = list({id(p): p for o in optimizers for p in self._params(o)}.values())
        buffers = [b for _, b in self._naming.buffers(floating_only=False)]
        if self._state is None:
            schedulers, scalers = _schedulers_and_scalers(optimizers)
            self._state = State(params, buffers, optimizers, schedulers, scalers)
        else:
            self._state.params, self._state.buffers, self._state.optimizers = params, buffers, optimizers
        return self._state

    # ------------------------------------------------------------------ acting, at safe points
    def _skip_step(self, opt: torch.optim.Optimizer) -> None:
        raise NotImplementedError

    def _before_update(self, opt: torch.optim.Optimizer, tracked: Tracked, it: Iteration) -> None:
        """At the step pre-hook after the checks: roll back / discard / back off / clip."""
        if self._rollback_due:
            self._skip_step(opt)
            self._roll_back()
            return
        if it.discard:
            self._skip_step(opt)
            return
        if self._snapshots is not None and not self._snapshots.items and self._step() == 0:
            self._snapshots.take(0, self._live_state())  # the state before the first update
        if self._backoff_level:
            factor = self._policy.rollback.backoff**self._backoff_level
            saved = []
            for group in opt.param_groups:
                lr = group.get("lr")
                if isinstance(lr, float):
                    saved.append((group, lr))
                    group["lr"] = lr * factor
            self._lr_saved[id(opt)] = saved
            if tracked.index == 0 and it.lr is not None:
                it.lr *= factor
        if self._zclip is not None and tracked.readings:
            self._clip(opt, tracked, it)

    def _after_update(self, opt: torch.optim.Optimizer) -> None:
        for group, lr in self._lr_saved.pop(id(opt), ()):
            group["lr"] = lr

    def _before_forward(self) -> None:
        if self._rollback_due:
            self._roll_back()

    @torch.no_grad()
    def _clip(self, opt: torch.optim.Optimizer, tracked: Tracked, it: Iteration) -> None:
        assert self._zclip is not None
        limit = self._zclip.threshold
        if limit is None:
            return
        it.clip_threshold = limit
        for reading in tracked.readings:
            v = reading.vector
            head, tail = v[: reading.norms], v[reading.norms :]
            sq = (head * head).sum() + (tail.sum() if reading.squares else 0)
            coef = (limit / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            grads = [g for p in self._params(opt) if (g := p.grad) is not None and g.device == v.device]
            if grads:
                torch._foreach_mul_(grads, coef.to(grads[0].dtype))

    def _roll_back(self) -> None:
        self._rollback_due = False
        assert self._snapshots is not None
        snap = self._snapshots.best()
        if snap is None:
            return
        start = time.perf_counter()
        good = snap.good
        self._snapshots.restore(snap, self._live_state())
        self._recovery_seconds += time.perf_counter() - start
        step = self._step()
        self._rollbacks += 1
        self._undone += step - snap.step
        self._backoff_level += 1
        self._backoff_kept = self._backoff_kept or self._backoff_relaxed
        self._calm_since = step
        options = self._policy.rollback
        factor = options.backoff**self._backoff_level
        until = (
            "for the rest of the run"
            if options.cooldown is None or self._backoff_kept
            else f"one factor undone per {options.cooldown} steps without failure"
        )
        self._record(
            step,
            "rollback",
            f"restored the snapshot of step {snap.step} ({'confirmed good' if good else 'not yet confirmed'}"
            f"; {step - snap.step} steps undone); lr x{factor:g} ({until})",
            to_step=snap.step,
            confirmed=good,
            steps_undone=step - snap.step,
            lr_factor=factor,
            cooldown=options.cooldown,
        )

    def _after_iteration(self) -> None:
        """A step completed (all optimizers stepped): relax the back-off, take a snapshot when one is due."""
        snaps = self._snapshots
        step = self._step()
        cooldown = self._policy.rollback.cooldown
        if (
            self._backoff_level
            and cooldown is not None
            and not self._backoff_kept
            and step - self._calm_since >= cooldown
        ):
            self._backoff_level -= 1
            self._backoff_relaxed = True
            self._calm_since = step
        if snaps is not None and snaps.due(step) and not self._rollback_due:
            snaps.take(step, self._live_state())

    # ------------------------------------------------------------------ once an iteration's reads are in
    def _settled(self, it: Iteration) -> None:
        if it.failed:
            return
        self._consecutive = 0
        if self._snapshots is not None:
            self._snapshots.confirm(it.step + 1)
        norm = None if it.grad_sq is None else math.sqrt(it.grad_sq)
        if self._zclip is not None and norm is not None:
            limit = it.clip_threshold
            self._zclip.update(norm)
            if limit is not None and norm > limit:
                self._clipped += 1
        loss = sum(it.losses) / len(it.losses) if it.losses else None
        for series, value in (("loss", loss), ("grad_norm", norm)):
            spike = self._spikes[series].update(value)
            if spike is not None:
                self._warn_spike(it.step, series, spike.value, spike.baseline, spike.score)

    def _warn_spike(self, step: int, series: Any, value: float, baseline: float, score: float) -> None:
        layers: tuple[str, ...] = ()
        if len(self._layer_norms) >= 2:
            now = self._named_norms(self._layer_norms[-1])
            earlier = [self._named_norms(entry) for entry in list(self._layer_norms)[:-1]]
            before = [[norms.get(name, math.nan) for name in now] for norms in earlier]
            layers = rising_layers(list(now), list(now.values()), before)
        warning = EarlyWarning(step, series, value, baseline, score, layers)
        episode = self._episode.get(series)
        new_episode = episode is None or step - episode > _EPISODE  # not the next step of the last one
        if new_episode and len(self._early) < _MAX_RECORDS:
            self._early.append(warning)
        self._episode[series] = step
        if step - self._last_warned[series] >= _WARN_EVERY:
            self._last_warned[series] = step
            where = f"; rising fastest: {', '.join(layers)}" if layers else ""
            label = "loss" if series == "loss" else "grad norm"
            warnings.warn(
                f"nanscope: {label} spike at step {step}: {value:.4g} against a running level of "
                f"{baseline:.4g} (x{value / baseline:.3g}, score {score:.1f}){where}",
                SpikeWarning,
                stacklevel=user_stacklevel(),
            )


def _schedulers_and_scalers(optimizers: Sequence[torch.optim.Optimizer]) -> tuple[list[Any], list[Any]]:
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
