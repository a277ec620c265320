"""The slow path: from a tripped check to an :class:`~nanscope.detect.diagnose.Observation`.

It runs only after an always-on check saw a non-finite value. It makes the exact checks (weights,
hyperparameters, the iteration's batches), replays the step through ``step_fn`` when one was given, and plans
the in-loop replay (:mod:`nanscope.localize.refeed`) when that is what can localize the op. It returns
values; it never raises for the policy, warns or writes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from nanscope._tree import local_part
from nanscope.detect.diagnose import Observation
from nanscope.detect.scan import BadHyperparameter, nonfinite_hyperparameters, nonfinite_names, scan_batch
from nanscope.localize.model_call import ModelCall
from nanscope.localize.refeed import Refeed
from nanscope.localize.samples import batch_rows
from nanscope.localize.trace import OpTracer
from nanscope.recover.policy import Policy
from nanscope.report.model import Evidence, History
from nanscope.watching.batches import Drawn
from nanscope.watching.checks import LayerNorms, StepChecks, Trip
from nanscope.watching.discovery import Naming
from nanscope.watching.reruns import Reruns, loss_nan
from nanscope.watching.state import Iteration, WatchedOptimizer

__all__ = ["Triage"]


class Triage:
    def __init__(
        self,
        *,
        naming: Naming,
        checks: StepChecks,
        policy: Policy,
        step_fn: Callable[[Any], object] | None,
        watched: Callable[[], Iterable[WatchedOptimizer]],
        history: Callable[[], History],
        layer_norms: Callable[[], Iterable[LayerNorms]],
        last_good: Callable[[], tuple[Drawn | None, ModelCall | None] | None] = lambda: None,
    ) -> None:
        self._naming = naming
        self._checks = checks
        self._policy = policy
        self._step_fn = step_fn
        self._watched = watched
        self._history = history
        self._layer_norms = layer_norms
        self.reruns = Reruns(
            naming=naming,
            policy=policy,
            step_fn=step_fn,
            watched=watched,
            history=history,
            last_good=last_good,
        )

    # ------------------------------------------------------------------ observation
    def observe(self, it: Iteration, trip: Trip, *, current: bool, replay: bool) -> Observation:
        hps: list[BadHyperparameter] = list(trip.hyperparameters or ())
        if trip.hyperparameters is None:
            for w in self._watched():
                opt = w.optimizer()
                if opt is not None:
                    hps += nonfinite_hyperparameters(opt.param_groups, w.index)
        before: tuple[str, ...] = it.bad_buffers_at_start
        touched: tuple[str, ...] = ()
        if trip.where == "parameters":
            before += trip.watched.bad_before if trip.watched is not None and it.step == 0 else ()
        elif current:  # the failing step has not been applied: the weights are the pre-step ones
            named: list[tuple[str, torch.Tensor | None]] = []
            for w in self._watched():
                params = w.params()
                named += [(self._checks.name(w.index, params, i), p) for i, p in enumerate(params)]
            if not named:  # no optimizer: the models' parameters
                named = [(n, p) for prefix, m in self._naming.models.items() for n, p in _prefixed(prefix, m)]
            before = tuple(dict.fromkeys(before + tuple(nonfinite_names(named))))
            touched = tuple(n for n in nonfinite_names(self._checks.all_buffers()) if n not in before)
        scans = tuple(scan_batch(d.batch, d.indices, d.source) for d in it.batches)
        output_finite = None if not it.output_flags else all(bool(f) for f in it.output_flags)
        notes = (
            self._optimizer_notes(trip.watched, trip.names)
            if trip.where == "parameters" and trip.watched
            else ()
        )
        op, op_samples, whole, finite, counterfactual = None, None, False, False, None
        clean = not hps and not before and all(scan.clean for scan in scans)
        note = self.replay_note(it, current)
        if replay and trip.where in ("loss", "gradients") and clean and note is None:
            if self._step_fn is not None:
                op, op_samples, whole, finite, counterfactual = self.reruns.step(it, trip.where)
            elif it.model_call is not None:
                op, op_samples, whole, note, counterfactual = self.reruns.model_alone(it, trip.where)
        last_good_fails = None
        if op is not None and it.rng is not None:
            last_good_fails = self.reruns.last_good(op, it.rng, trip.where, loss_nan(it))
        return Observation(
            step=it.step,
            trigger=trip.where,
            trigger_names=trip.names,
            history=self._history(),
            hyperparameters=tuple(hps),
            parameters_before=before,
            batches=scans,
            batches_tracked=bool(it.batches),
            model_output_finite=output_finite,
            optimizer_notes=notes,
            buffers_touched=touched,
            op=op,
            op_samples=op_samples,
            op_whole_batch=whole,
            replay_note=note,
            replay_finite=finite,
            counterfactual=counterfactual,
            last_good_fails=last_good_fails,
            layer_growth=self._layer_growth(),
            script_clip=it.script_clip,
        )

    def replay_note(self, it: Iteration, current: bool) -> str | None:
        """Why the failing step cannot be replayed, or None when it can."""
        if it.rng is None:
            if not it.batches:
                return (
                    "no replay: the step's batch was not seen (iterate a DataLoader, or call observe_batch and "
                    "pass step_fn=...)"
                )
            return "no replay: no training forward of a watched model ran in this iteration"
        if not current:
            return (
                "no replay: the failing step's values were read after its update (lazy device reads; use "
                "eager=True)"
            )
        if self._step_fn is not None:
            return None
        if not self._policy.replays_in_loop:
            return (
                f"no replay under policy {self._policy.handler!r} (replaying changes the run): use 'stop', "
                "'skip' or 'rollback', or pass step_fn=... to nanscope.watch"
            )
        if it.model_call is not None:
            return None  # the batch cannot be handed out again, but the model alone can be re-run
        if not any(True for _ in self._watched()):
            return "no replay: no optimizer step to discard (the loop updates the weights itself)"
        if not it.batches or it.batches[-1].dataset is None:
            return "no replay: the batch did not come from a DataLoader; pass step_fn=... to nanscope.watch"
        return None

    # ------------------------------------------------------------------ replays
    def _loader_batch(self, it: Iteration) -> bool:
        """``it``'s last micro-batch came from a loader and no step function replays it: the loop can run it
        again."""
        return (
            self._step_fn is None
            and it.model_call is None
            and bool(it.batches)
            and it.batches[-1].dataset is not None
        )

    def can_replay_in_loop(self, it: Iteration, current: bool) -> bool:
        """Whether the loop itself could run ``it``'s last micro-batch again (its batch came from a loader)."""
        return self._loader_batch(it) and self.replay_note(it, current) is None

    def can_refeed(self, it: Iteration, obs: Observation) -> bool:
        return (
            self._loader_batch(it)
            and obs.op is None
            and obs.trigger in ("loss", "gradients")
            and not obs.hyperparameters
            and not obs.parameters_before
            and all(scan.clean for scan in obs.batches)
            and obs.replay_note is None
        )

    def plan_refeed(self, it: Iteration, obs: Observation, drawn: Drawn | None = None) -> Refeed:
        """The in-loop replay of ``it``'s failing micro-batch: ``drawn`` (default: its last batch)."""
        drawn = drawn or it.batches[-1]
        index_list, size = batch_rows(drawn.batch, drawn.indices)
        assert it.rng is not None
        return Refeed(
            obs,
            drawn.batch,
            drawn.dataset,
            it.rng,
            OpTracer(self.reruns.module_names(), size, self._naming.param_names()),
            size,
            index_list,
            loss_nan(it),
        )

    def finish_refeed(self, refeed: Refeed) -> Observation:
        finding = refeed.stop()
        samples, whole, counterfactual, last_good_fails = self.reruns.after_refeed(refeed, finding)
        note = (
            None
            if finding is not None
            else "the failing step was replayed but no op created a NaN/Inf: the failure did not reproduce "
            "(non-deterministic ops, or state the replay cannot restore)"
        )
        obs: Observation = refeed.observation
        return replace(
            obs,
            op=finding,
            op_samples=samples,
            op_whole_batch=whole,
            replay_note=note,
            replay_finite=finding is None and refeed.replayed_finite,
            counterfactual=counterfactual,
            last_good_fails=last_good_fails,
        )

    # ------------------------------------------------------------------ evidence
    def _layer_growth(self, top: int = 3) -> tuple[tuple[str, float, float], ...]:
        """The parameters whose gradient norm grew the most over the last finite reads: ``(name, first, last)``."""
        by_name: dict[str, list[float]] = {}
        for entry in self._layer_norms():
            for name, norm in self._checks.named_norms(entry).items():
                if math.isfinite(norm) and norm > 0:
                    by_name.setdefault(name, []).append(norm)
        growth = [(name, v[0], v[-1]) for name, v in by_name.items() if len(v) >= 4]
        growth.sort(key=lambda g: g[2] / g[1], reverse=True)
        return tuple(g for g in growth[:top] if g[2] > g[1])

    def _optimizer_notes(self, watched: WatchedOptimizer, names: tuple[str, ...]) -> tuple[Evidence, ...]:
        opt = watched.optimizer()
        if opt is None:
            return ()
        notes: list[Evidence] = []
        wanted = set(names)
        for g, group in enumerate(opt.param_groups):
            hp = {k: v for k, v in group.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for i, p in enumerate(group["params"]):
                name = self._naming.param(p, f"optimizer[{watched.index}].params[{i}]")
                if name not in wanted or len(notes) >= 5:
                    continue
                mask = ~torch.isfinite(local_part(p).detach())
                state_bits = []
                for key, value in opt.state.get(p, {}).items():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.shape == p.shape
                        and value.is_floating_point()
                    ):
                        sel = local_part(value).detach()[mask]
                        if sel.numel():
                            state_bits.append(
                                f"{key} in [{float(sel.min()):.3g}, {float(sel.max()):.3g}] "
                                f"({int((sel == 0).sum())} zeros)"
                            )
                hp_text = ", ".join(f"{k}={v}" for k, v in hp.items())
                detail = (
                    f"{name}: {int(mask.sum())} non-finite elements after the update; group {g}: {hp_text}"
                )
                if state_bits:
                    detail += "; optimizer state there: " + "; ".join(state_bits)
                notes.append(Evidence("optimizer update", detail, {"parameter": name, "group": g, **hp}))
        return tuple(notes)


def _prefixed(prefix: str, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(prefix + n, p) for n, p in model.named_parameters()]
