"""The slow path: from a tripped check to an :class:`~nanscope.detect.diagnose.Observation`.

It runs only after an always-on check saw a non-finite value. It makes the exact checks (weights,
hyperparameters, the iteration's batches), replays the step through ``step_fn`` when one was given, and plans
the in-loop replay (:mod:`nanscope.localize.refeed`) when that is what can localize the op. It returns
values; it never raises for the policy, warns or writes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import torch

from nanscope._tree import local_part
from nanscope.detect.diagnose import Observation
from nanscope.detect.scan import BadHyperparameter, nonfinite_hyperparameters, nonfinite_names, scan_batch
from nanscope.localize.classify import exploding
from nanscope.localize.counterfactual import find_culprits, take_rows
from nanscope.localize.model_call import ModelCall
from nanscope.localize.refeed import Refeed
from nanscope.localize.replay import RngState, replay
from nanscope.localize.samples import batch_rows, culprit_samples
from nanscope.localize.trace import OpFinding, OpTracer, OriginFound
from nanscope.recover.policy import Policy
from nanscope.report.model import Evidence, History
from nanscope.watching.batches import Drawn
from nanscope.watching.checks import LayerNorms, StepChecks, Trip
from nanscope.watching.discovery import Naming
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
        self._last_good = last_good
        self.replaying = False  # a step_fn replay is running: the engine ignores its events

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
                op, op_samples, whole, finite, counterfactual = self._replay(it, trip.where)
            elif it.model_call is not None:
                op, op_samples, whole, note, counterfactual = self._replay_model(it, trip.where)
        last_good_fails = None
        if op is not None and it.rng is not None:
            last_good_fails = self._on_last_good(op, it.rng, trip.where, _loss_nan(it))
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
            OpTracer(self._module_names(), size, self._naming.param_names()),
            size,
            index_list,
            _loss_nan(it),
        )

    def finish_refeed(self, refeed: Refeed) -> Observation:
        finding = refeed.stop()
        samples, whole = culprit_samples(finding, refeed.index_list, refeed.batch_size)
        counterfactual = None
        call = refeed.model_call
        if finding is not None and finding.phase == "forward" and call is not None and refeed.batch_size:
            size = refeed.batch_size
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self._traced(
                    _call_on(call, rows, size), None, refeed.rng, len(rows), "loss", True, stop
                ),
                size,
                refeed.index_list,
                samples,
                whole,
            )
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
            last_good_fails=None
            if finding is None
            else self._on_last_good(finding, refeed.rng, "loss", True),
        )

    def _replay(
        self, it: Iteration, trigger: str
    ) -> tuple[OpFinding | None, tuple[int, ...] | None, bool, bool, Evidence | None]:
        """Re-run the failing micro-batch through ``step_fn`` under op tracing (API mode): the origin op, its
        samples, whether every row went bad, whether the whole replay was finite, and the counterfactual
        re-runs on parts of the batch (each through ``step_fn``)."""
        step_fn = self._step_fn
        assert step_fn is not None and it.rng is not None
        rng, loss_nan = it.rng, _loss_nan(it)
        drawn = it.batches[-1]
        index_list, size = batch_rows(drawn.batch, drawn.indices)
        finding, finite = self._traced(step_fn, drawn.batch, rng, size, trigger, loss_nan)
        samples, whole = culprit_samples(finding, index_list, size)
        counterfactual = None
        if finding is not None and size:
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self._traced(
                    step_fn, take_rows(drawn.batch, rows, size), rng, len(rows), trigger, loss_nan, stop
                ),
                size,
                index_list,
                samples,
                whole,
            )
        return finding, samples, whole, finding is None and finite, counterfactual

    def _replay_model(
        self, it: Iteration, trigger: str
    ) -> tuple[OpFinding | None, tuple[int, ...] | None, bool, str | None, Evidence | None]:
        """Re-run the model alone under op tracing (the batch did not come from a DataLoader)."""
        call = it.model_call
        assert call is not None and it.rng is not None
        rng, loss_nan = it.rng, _loss_nan(it)
        backward = trigger == "gradients"
        if backward and not call.grads:
            return (
                None,
                None,
                False,
                (
                    "no replay: the batch did not come from a DataLoader, and the gradients at the model's output "
                    "were no longer kept when the values were read (lazy device reads: use eager=True, or pass "
                    "step_fn=...)"
                ),
                None,
            )
        drawn = it.batches[-1] if it.batches else None
        index_list, size = batch_rows(
            call.args if drawn is None else drawn.batch, None if drawn is None else drawn.indices
        )
        finding, _ = self._traced(
            functools.partial(call.rerun, backward=backward), None, rng, size, trigger, loss_nan
        )
        samples, whole = culprit_samples(finding, index_list, size)
        counterfactual = None
        if finding is not None and finding.phase == "forward" and size:
            counterfactual, samples, whole = self._counterfactual(
                finding,
                lambda rows, stop: self._traced(
                    _call_on(call, rows, size), None, rng, len(rows), "loss", True, stop
                ),
                size,
                index_list,
                samples,
                whole,
            )
        note = None
        if finding is None:
            what = (
                "forward and backward (from the gradients that reached its output)" if backward else "forward"
            )
            note = (
                f"the batch did not come from a DataLoader, so the model alone was re-run under op tracing (its "
                f"{what}): no op inside it created the NaN/Inf, so the origin is outside the model (in the "
                "loss or the code around the model); pass step_fn=... to trace the whole step"
            )
        return finding, samples, whole, note, counterfactual

    def _on_last_good(self, origin: OpFinding, rng: RngState, trigger: str, loss_nan: bool) -> bool | None:
        """Under rollback: whether the origin op fails again with the same weights on the last good batch
        (through ``step_fn``, or the model's forward for a forward origin). None where it cannot be re-run."""
        good = self._last_good() if self._policy.takes_snapshots else None
        if good is None:
            return None
        drawn, call = good
        stop_at = (origin.aten, origin.phase)
        fn: Callable[[Any], object]
        if self._step_fn is not None and drawn is not None:
            fn, batch, size = self._step_fn, drawn.batch, batch_rows(drawn.batch, drawn.indices)[1]
        elif origin.phase == "forward" and call is not None:
            fn, batch, size, trigger = (lambda _b: call.module(*call.args, **call.kwargs)), None, None, "loss"
        else:
            return None
        try:
            self._traced(fn, batch, rng, size, trigger, loss_nan, stop_at)
        except OriginFound:
            return True
        except Exception:  # a batch of another shape the computation rejects: not measured
            return None
        return False

    def _counterfactual(
        self,
        origin: OpFinding,
        replayed: Callable[[list[int], tuple[str, str]], tuple[OpFinding | None, bool]],
        size: int,
        index_list: list[int] | None,
        samples: tuple[int, ...] | None,
        whole: bool,
    ) -> tuple[Evidence | None, tuple[int, ...] | None, bool]:
        """Re-run the failing computation on parts of the batch (``replayed(rows)``) to find the rows whose
        presence makes it fail; returns the evidence and the samples and whole-batch flag it supports. Not
        for an explosion (the grad norm's growth shows the weights are the cause: every part would fail)."""
        if exploding(self._history()):
            return None, samples, whole
        stop_at = (origin.aten, origin.phase)

        def fails(rows: list[int]) -> bool | None:
            """The failure appears: the same op creates a NaN/Inf again (a harmless -inf a mask makes on a
            part of the batch does not count); the re-run stops there."""
            try:
                replayed(rows, stop_at)
            except OriginFound:
                return True
            except Exception:  # the computation does not run on part of the batch (fixed shapes)
                return None
            return False

        found = find_culprits(fails, size)
        if found is None:
            return None, samples, whole
        names = index_list if index_list is not None and len(index_list) == size else None
        data = {
            "rows": list(found.culprits),
            "samples": None if names is None else [names[r] for r in found.culprits],
            "together": found.together,
            "every": len(found.culprits) == size,
            "confirmed": found.confirmed,
            "runs": found.runs,
            "rows_run": found.rows_run,
        }
        evidence = Evidence("counterfactual", found.text(names), data)
        if found.together:
            return evidence, None, True
        if found.culprits and (found.confirmed or len(found.culprits) == size):
            named = None if names is None else tuple(sorted({names[r] for r in found.culprits}))
            return evidence, named, False
        return evidence, samples, whole

    def _traced(
        self,
        fn: Callable[[Any], object],
        batch: Any,
        rng: RngState,
        size: int | None,
        trigger: str,
        loss_nan: bool,
        stop_at: tuple[str, str] | None = None,
    ) -> tuple[OpFinding | None, bool]:
        """``fn(batch)`` from the failing micro-batch's RNG state under the op tracer; the run is left as it
        was (gradients, buffers, RNG); the engine ignores the events it produces."""
        self.replaying = True
        try:
            return replay(
                fn,
                batch,
                start=rng,
                params=[p for w in self._watched() for p in w.params()],
                buffers=[b for model in self._naming.models.values() for b in model.buffers()],
                module_names=self._module_names(),
                param_names=self._naming.param_names(),
                batch_size=size,
                trigger=trigger,
                loss_nan=loss_nan,
                stop_at=stop_at,
            )
        finally:
            self.replaying = False

    def _module_names(self) -> dict[int, str]:
        models = self._naming.models.values()
        return {id(m): self._naming.module(m) or "" for model in models for m in model.modules()}

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


def _call_on(call: ModelCall, rows: list[int], size: int) -> Callable[[Any], object]:
    """The model's forward on ``rows`` of the recorded call's inputs."""
    args, kwargs = take_rows(call.args, rows, size), take_rows(call.kwargs, rows, size)
    return lambda _batch: call.module(*args, **kwargs)


def _prefixed(prefix: str, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(prefix + n, p) for n, p in model.named_parameters()]


def _loss_nan(it: Iteration) -> bool:
    """Whether the iteration's non-finite loss is a NaN (True also when no scalar loss was seen)."""
    bad = [v for v in it.losses if not math.isfinite(v)]
    return not bad or any(math.isnan(v) for v in bad)
