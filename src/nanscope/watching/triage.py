"""The watcher's slow path: from a tripped check to a diagnosis, with a replay of the step when one helps.

``Triage`` is mixed into :class:`~nanscope.watching.watcher.Watcher`; it runs only after an always-on check
saw a non-finite value. It gathers an :class:`~nanscope.detect.diagnose.Observation` (exact checks of weights,
hyperparameters and the step's batches), decides whether the step is replayed (``step_fn`` at once, or the
script's own loop via :mod:`nanscope.watching.refeed`), and concludes: diagnose, report, act per policy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from nanscope.detect.diagnose import Observation, diagnose
from nanscope.detect.scan import (
    BadHyperparameter,
    iter_tensors,
    nonfinite_hyperparameters,
    nonfinite_names,
    scan_batch,
)
from nanscope.errors import NonFiniteError, NonFiniteWarning
from nanscope.localize.replay import replay
from nanscope.localize.trace import OpFinding, OpTracer
from nanscope.recover.policy import Action, Event
from nanscope.report import json as report_json
from nanscope.report.model import Detection, Evidence, Where
from nanscope.watching.recovery import Recovery
from nanscope.watching.refeed import Refeed
from nanscope.watching.stack import user_stacklevel
from nanscope.watching.state import Iteration, Tracked

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nanscope.detect.diagnose import Diagnosis
    from nanscope.recover.policy import Policy
    from nanscope.report.model import Report
    from nanscope.watching.discovery import Naming

__all__ = ["Triage"]

_MAX_DETECTIONS = 100


class Triage(Recovery):
    """Diagnosis and replay methods of the watcher (see the module docstring).

    The state and the hot-path helpers it reads are the watcher's; they are declared here for type checking.
    """

    _naming: Naming
    _policy: Policy
    _step_fn: Callable[[Any], object] | None
    _report_path: str | None
    _tracked: dict[int, Tracked]
    _it: Iteration
    _refeed: Refeed | None
    _diagnosis: Diagnosis | None
    _detections: list[Detection]
    _detections_dropped: int
    _stopped: bool
    _replaying: bool

    def report(self) -> Report:
        raise NotImplementedError

    def _name(self, opt_index: int, params: Sequence[torch.Tensor], i: int) -> str:
        raise NotImplementedError

    def _all_buffers(self) -> list[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def _trigger(
        self,
        it: Iteration,
        where: Where,
        names: tuple[str, ...],
        *,
        tracked: Tracked | None = None,
        hyperparameters: tuple[BadHyperparameter, ...] | None = None,
    ) -> None:
        if self._refeed is not None or it.failed:
            return  # parked until its replay, or this iteration's failure is already handled
        if self._diagnosis is not None and not self._policy.recovers:
            self._detected(it.step, where)
            return
        it.failed = True
        replay = self._diagnosis is None or self._policy.recovers  # recovering runs localize every event
        obs = self._observe(it, where, names, tracked, hyperparameters, replay=replay)
        if replay and self._can_refeed(it, obs):
            self._refeed = self._plan_refeed(it, obs)
            return
        self._conclude(obs, it)

    def _detected(self, step: int, where: Where) -> None:
        """A later non-finite event: recorded once per step."""
        assert self._diagnosis is not None
        seen = (self._diagnosis.first.step, *(d.step for d in self._detections[-1:]))
        if step not in seen:
            if len(self._detections) < _MAX_DETECTIONS:
                self._detections.append(Detection(step, where))
            else:
                self._detections_dropped += 1

    def _can_refeed(self, it: Iteration, obs: Observation) -> bool:
        return (
            self._step_fn is None
            and obs.op is None
            and obs.trigger in ("loss", "gradients")
            and not obs.hyperparameters
            and not obs.parameters_before
            and all(scan.clean for scan in obs.batches)
            and self._replay_note(it) is None
        )

    def _replay_inputs(self, it: Iteration) -> tuple[Any, list[int] | None, int | None, dict[int, str]]:
        batch, indices, _, _ = it.batches[-1]
        index_list = (
            None
            if indices is None
            else [int(i) for i in (indices if not isinstance(indices, int) else [indices])]
        )
        tensors = [t for _, t in iter_tensors(batch) if t.dim() >= 1]
        size = len(index_list) if index_list is not None else (tensors[0].shape[0] if tensors else None)
        models = self._naming.models.values()
        names = {id(m): self._naming.module(m) or "" for model in models for m in model.modules()}
        return batch, index_list, size, names

    def _plan_refeed(self, it: Iteration, obs: Observation) -> Refeed:
        batch, index_list, size, names = self._replay_inputs(it)
        assert it.rng is not None
        dataset = it.batches[-1][3]
        return Refeed(
            obs,
            batch,
            dataset,
            it.rng,
            OpTracer(names, size),
            size,
            index_list,
            _loss_nan(it),
        )

    def _finish_refeed(self) -> None:
        refeed = self._refeed
        assert refeed is not None
        refeed.stop()
        self._refeed = None
        finding = refeed.tracer.pick(refeed.observation.trigger, refeed.loss_nan)
        samples, whole = _samples(finding, refeed.index_list, refeed.batch_size)
        note = (
            None
            if finding is not None
            else "the failing step was replayed but no op created a NaN/Inf: the failure did not reproduce "
            "(non-deterministic ops, or state the replay cannot restore)"
        )
        self._conclude(
            replace(
                refeed.observation, op=finding, op_samples=samples, op_whole_batch=whole, replay_note=note
            ),
            self._it,
        )

    def _conclude(self, obs: Observation, it: Iteration) -> None:
        diagnosis = diagnose(obs)
        first = self._diagnosis is None
        if first:
            self._diagnosis = diagnosis
        else:
            self._detected(obs.step, obs.trigger)
        self._failures += 1
        self._consecutive += 1
        applied = it.done or obs.trigger == "parameters" or diagnosis.cause.kind == "nonfinite_parameters"
        decision = self._policy.decide(
            Event(
                diagnosis=diagnosis,
                step=obs.step,
                applied=applied,
                consecutive=self._consecutive,
                failures=self._failures,
                steps=self._step(),
                snapshot=self._snapshots is not None and self._snapshots.best() is not None,
                first=first,
            )
        )
        if decision.quarantine:
            self._quarantine_samples(decision.quarantine, diagnosis, it, obs.step)
        if decision.action is Action.STOP:
            if decision.reason:
                self._gave_up = decision.reason.startswith("gave up")
                self._record(obs.step, "give_up", decision.reason)
            self._stopped = True
            report = self.report()
            if self._report_path:
                report_json.write(report, self._report_path)
            raise NonFiniteError(report)
        if decision.action is Action.SKIP:
            it.discard = True
            self._skipped += 1
            why = f" ({decision.reason})" if decision.reason else ""
            self._record(obs.step, "skip", f"{diagnosis.cause.kind}: the update was discarded{why}")
        elif decision.action is Action.ROLLBACK:
            it.discard = True
            self._rollback_due = True
        report = self.report()
        if self._report_path:
            report_json.write(report, self._report_path)
        if first or self._failures % 10 == 0:
            action = {Action.SKIP: "step skipped", Action.ROLLBACK: "rolling back"}.get(decision.action)
            more = f" ({action}; {self._failures} failed step(s) so far)" if action else ""
            text = report.headline() if first else f"non-finite {obs.trigger} at step {obs.step}"
            warnings.warn(text + more, NonFiniteWarning, stacklevel=user_stacklevel())

    def _quarantine_samples(
        self, samples: tuple[int, ...], diagnosis: Diagnosis, it: Iteration, step: int
    ) -> None:
        if self._quarantine is None:
            return
        datasets = [d for _, _, _, d in it.batches if d is not None]
        if not datasets:
            return
        reason = f"{diagnosis.cause.kind} at step {step}: {diagnosis.cause.summary}"[:300]
        new = self._quarantine.add(datasets[-1], samples, reason, step)
        if new:
            where = f"; kept in {self._quarantine.path}" if self._quarantine.path else ""
            self._record(
                step,
                "quarantine",
                f"samples {', '.join(map(str, new[:20]))} excluded from later batches ({diagnosis.cause.kind}){where}",
                samples=list(new),
                cause=diagnosis.cause.kind,
            )

    def _observe(
        self,
        it: Iteration,
        where: Where,
        names: tuple[str, ...],
        tracked: Tracked | None,
        hyperparameters: tuple[BadHyperparameter, ...] | None,
        replay: bool = True,
    ) -> Observation:
        hps: list[BadHyperparameter] = list(hyperparameters or ())
        if hyperparameters is None:
            for t in self._tracked.values():
                opt = t.optimizer()
                if opt is not None:
                    hps += nonfinite_hyperparameters(opt.param_groups, t.index)
        before: tuple[str, ...] = it.bad_buffers_at_start
        touched: tuple[str, ...] = ()
        if where == "parameters":
            before += tracked.bad_before if tracked is not None and it.step == 0 else ()
        elif it is self._it:  # the failing step has not been applied: the weights are the pre-step ones
            named: list[tuple[str, torch.Tensor | None]] = []
            for t in self._tracked.values():
                opt = t.optimizer()
                if opt is not None:
                    params = self._params(opt)
                    named += [(self._name(t.index, params, i), p) for i, p in enumerate(params)]
            before = tuple(dict.fromkeys(before + tuple(nonfinite_names(named))))
            touched = tuple(n for n in nonfinite_names(self._all_buffers()) if n not in before)
        scans = tuple(scan_batch(b, idx, src) for b, idx, src, _ in it.batches)
        output_finite = None if not it.output_sums else all(math.isfinite(float(v)) for v in it.output_sums)
        notes = self._optimizer_notes(tracked, names) if where == "parameters" and tracked is not None else ()
        op, op_samples, whole = None, None, False
        clean = not hps and not before and all(scan.clean for scan in scans)
        if replay and where in ("loss", "gradients") and clean:
            op, op_samples, whole = self._replay(it, where)
        return Observation(
            step=it.step,
            trigger=where,
            trigger_names=names,
            history=self.report().history,
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
            replay_note=self._replay_note(it),
            layer_growth=self._layer_growth(),
        )

    def _layer_growth(self, top: int = 3) -> tuple[tuple[str, float, float], ...]:
        """The parameters whose gradient norm grew the most over the last finite steps: ``(name, first, last)``."""
        by_name: dict[str, list[float]] = {}
        for entry in self._layer_norms:
            for name, norm in self._named_norms(entry).items():
                if math.isfinite(norm) and norm > 0:
                    by_name.setdefault(name, []).append(norm)
        growth = [(name, v[0], v[-1]) for name, v in by_name.items() if len(v) >= 4]
        growth.sort(key=lambda g: g[2] / g[1], reverse=True)
        return tuple(g for g in growth[:top] if g[2] > g[1])

    def _replay_note(self, it: Iteration) -> str | None:
        """Why the failing step cannot be replayed, or None when it can."""
        if not it.batches:
            return "no replay: the step's batch was not seen (iterate a DataLoader, or call observe_batch and pass step_fn=...)"
        if it is not self._it or it.rng is None:
            return "no replay: the failing step's state is gone (read late on the device; use eager=True)"
        if self._step_fn is not None:
            return None
        if self._policy.handler == "warn":
            return (
                "no replay under policy 'warn' (replaying changes the run): use 'stop', 'skip' or 'rollback', "
                "or pass step_fn=... to nanscope.watch"
            )
        if it.batches[-1][3] is None:
            return "no replay: the batch did not come from a DataLoader; pass step_fn=... to nanscope.watch"
        return None

    def _replay(
        self, it: Iteration, it_trigger: str
    ) -> tuple[OpFinding | None, tuple[int, ...] | None, bool]:
        """Re-run the failing step through ``step_fn`` under op tracing (API mode)."""
        if self._step_fn is None or self._replay_note(it) is not None or it.rng is None:
            return None, None, False
        loss_nan = _loss_nan(it)
        batch, index_list, size, names = self._replay_inputs(it)
        params = [
            p for t in self._tracked.values() if (o := t.optimizer()) is not None for p in self._params(o)
        ]
        buffers = [b for model in self._naming.models.values() for b in model.buffers()]
        self._replaying = True
        try:
            finding = replay(
                self._step_fn,
                batch,
                start=it.rng,
                params=params,
                buffers=buffers,
                module_names=names,
                batch_size=size,
                trigger=it_trigger,
                loss_nan=loss_nan,
            )
        finally:
            self._replaying = False
        return (finding, *_samples(finding, index_list, size))

    def _optimizer_notes(self, tracked: Tracked, names: tuple[str, ...]) -> tuple[Evidence, ...]:
        opt = tracked.optimizer()
        if opt is None:
            return ()
        notes: list[Evidence] = []
        wanted = set(names)
        for g, group in enumerate(opt.param_groups):
            hp = {k: v for k, v in group.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for i, p in enumerate(group["params"]):
                name = self._naming.param(p, f"optimizer[{tracked.index}].params[{i}]")
                if name not in wanted or len(notes) >= 5:
                    continue
                mask = ~torch.isfinite(p.detach())
                state_bits = []
                for key, value in opt.state.get(p, {}).items():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.shape == p.shape
                        and value.is_floating_point()
                    ):
                        sel = value.detach()[mask]
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


def _loss_nan(it: Iteration) -> bool:
    """Whether the iteration's non-finite loss is a NaN (True also when no scalar loss was seen)."""
    bad = [v for v in it.losses if not math.isfinite(v)]
    return not bad or any(math.isnan(v) for v in bad)


def _samples(
    finding: OpFinding | None, index_list: list[int] | None, size: int | None
) -> tuple[tuple[int, ...] | None, bool]:
    """Dataset indices of the rows the op turned non-finite, and whether that was every row (a batch-level
    problem, e.g. statistics over the batch, rather than bad samples)."""
    rows = finding.rows if finding is not None else None
    whole = bool(rows) and size is not None and size > 1 and len(rows or ()) == size
    if not rows or index_list is None or whole:
        return None, whole
    return tuple(sorted({index_list[r] for r in rows})), whole
