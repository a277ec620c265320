"""From a tripped check to a verdict, and the one place where the policy's decision is carried out.

:class:`Verdicts` owns what the run has concluded so far: the first diagnosis, later detections, the parked
in-loop replay, whether the run was stopped, and how it ended. A trip goes to :class:`~nanscope.watching.
triage.Triage` for an :class:`~nanscope.detect.diagnose.Observation`; the observation is either parked for
the in-loop replay or diagnosed at once; :meth:`Policy.decide <nanscope.recover.policy.Policy.decide>` (pure)
decides; :meth:`Verdicts._act` carries the decision out.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from dataclasses import replace

from nanscope.detect.diagnose import Diagnosis, Observation, diagnose
from nanscope.errors import NonFiniteError, NonFiniteWarning
from nanscope.localize.refeed import Refeed, Stage
from nanscope.recover.actions import Recoverer
from nanscope.recover.policy import Action, Decision, Event, Policy
from nanscope.report import json as report_json
from nanscope.report.model import Detection, Ending, Report, Where
from nanscope.watching.checks import Trip
from nanscope.watching.run_log import Capped, RunLog
from nanscope.watching.stack import user_stacklevel
from nanscope.watching.state import Iteration
from nanscope.watching.triage import Triage

__all__ = ["Verdicts"]


class Verdicts:
    def __init__(
        self,
        *,
        policy: Policy,
        log: RunLog,
        triage: Triage,
        recoverer: Recoverer,
        step: Callable[[], int],
        report: Callable[[], Report],
        report_path: str | None,
    ) -> None:
        self._policy = policy
        self._log = log
        self._triage = triage
        self._recoverer = recoverer
        self._step = step
        self._report = report
        self._report_path = report_path
        self.refeed: Refeed | None = None
        self.diagnosis: Diagnosis | None = None
        self.detections: Capped[Detection] = Capped()
        self.stopped = False
        self.ending: Ending | None = None
        self.script_clip: tuple[str, float] | None = None  # the script's own clipping, as last seen
        self._causes: collections.Counter[tuple[str, str | None]] = collections.Counter()

    def clipped(self, it: Iteration, kind: str, limit: float) -> None:
        it.script_clip = self.script_clip = (kind, limit)

    def ended_by(self, exc: BaseException) -> None:
        if self.ending is not None or isinstance(exc, NonFiniteError):
            return
        self.ending = Ending(
            kind="interrupted" if isinstance(exc, KeyboardInterrupt) else "exception",
            exception=type(exc).__name__,
            message=str(exc),
            step=self._step(),
            nonfinite_seen=self.diagnosis is not None,
        )

    # ------------------------------------------------------------------ trips and replays
    def trip(self, it: Iteration, trip: Trip) -> None:
        if self.refeed is not None or it.failed:
            return  # parked until its replay, or this iteration's failure is already handled
        if self.diagnosis is not None and not self._policy.diagnoses_every_event:
            self._detected(it.step, trip.where)
            return
        it.failed = True
        replay = self.diagnosis is None or self._policy.diagnoses_every_event
        obs = self._triage.observe(it, trip, current=it is self._log.current, replay=replay)
        if replay and self._triage.can_refeed(it, obs):
            self.refeed = self._triage.plan_refeed(it, obs)
            return
        self._conclude(obs, it)

    def finish_refeed(self) -> None:
        refeed, self.refeed = self.refeed, None
        assert refeed is not None
        self._conclude(self._triage.finish_refeed(refeed), self._log.current)

    def abandon_refeed(self) -> None:
        """The loop ended before the failing batch came round again: conclude without the replay."""
        refeed = self.refeed
        if refeed is None:
            return
        if refeed.stage is Stage.TRACING:
            self.finish_refeed()
            return
        self.refeed = None
        refeed.stop()
        note = "no replay: the training loop ended before the failing batch could be run again"
        obs: Observation = refeed.observation
        self._conclude(replace(obs, replay_note=note), self._log.current)

    # ------------------------------------------------------------------ conclusion
    def _detected(self, step: int, where: Where) -> None:
        """A later non-finite event: recorded once per step."""
        assert self.diagnosis is not None
        seen = (self.diagnosis.first.step, *(d.step for d in self.detections.items[-1:]))
        if step not in seen:
            self.detections.add(Detection(step, where))

    def _conclude(self, obs: Observation, it: Iteration) -> None:
        clip = it.script_clip or self.script_clip
        if obs.script_clip is None and clip is not None:
            obs = replace(obs, script_clip=clip)  # the script clips after backward, where the trip was
        found = diagnose(obs)
        first = self.diagnosis is None
        if first:
            self.diagnosis = found
        else:
            self._detected(obs.step, obs.trigger)
        rec = self._recoverer
        rec.failed()
        cause_key = (found.cause.kind, found.cause.hyperparameter)
        self._causes[cause_key] += 1
        applied = it.done or obs.trigger == "parameters" or found.cause.kind == "nonfinite_parameters"
        snaps = rec.snapshots
        decision = self._policy.decide(
            Event(
                diagnosis=found,
                step=obs.step,
                applied=applied,
                consecutive=rec.consecutive,
                failures=rec.failures,
                steps=self._step(),
                snapshot=snaps is not None and snaps.best() is not None,
                first=first,
                repeats=self._causes[cause_key] - 1,
            )
        )
        self._act(decision, found, obs.step, it, first)

    def _act(self, decision: Decision, found: Diagnosis, step: int, it: Iteration, first: bool) -> None:
        """The one place where a decision of the policy is carried out."""
        rec = self._recoverer
        if decision.quarantine:
            self._quarantine(decision.quarantine, found, it, step)
        if decision.action is Action.STOP:
            if decision.reason:
                rec.give_up(step, decision.reason, gave_up=decision.gave_up)
            self.stopped = True
            report = self._report()
            if self._report_path:
                report_json.write(report, self._report_path)
            raise NonFiniteError(report)
        if decision.action is Action.SKIP:
            it.discard = True
            rec.skip(step, found.cause.kind, decision.reason)
        elif decision.action is Action.ROLLBACK:
            it.discard = True
            rec.schedule_rollback()
        if first or rec.failures % 10 == 0:
            action = {Action.SKIP: "step skipped", Action.ROLLBACK: "rolling back"}.get(decision.action)
            more = f" ({action}; {rec.failures} failed step(s) so far)" if action else ""
            text = self._report().headline() if first else f"non-finite {found.first.where} at step {step}"
            warnings.warn(text + more, NonFiniteWarning, stacklevel=user_stacklevel())

    def _quarantine(self, samples: tuple[int, ...], found: Diagnosis, it: Iteration, step: int) -> None:
        datasets = [d.dataset for d in it.batches if d.dataset is not None]
        if datasets:
            reason = f"{found.cause.kind} at step {step}: {found.cause.summary}"[:300]
            self._recoverer.quarantine_samples(datasets[-1], samples, reason, step, found.cause.kind)
