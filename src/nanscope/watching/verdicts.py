"""From a tripped check to a verdict, and the one place where the policy's decision is carried out.

:class:`Verdicts` owns what the run has concluded so far: the first diagnosis, later detections, the parked
in-loop replay, whether the run was stopped, and how it ended. A trip goes to :class:`~nanscope.watching.
triage.Triage` for an :class:`~nanscope.detect.diagnose.Observation`; the observation is either parked for
the in-loop replay or diagnosed at once; :meth:`Policy.decide <nanscope.recover.policy.Policy.decide>` (pure)
decides; :meth:`Verdicts._act` carries the decision out.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from torch import nn

from nanscope._rank import is_rank_zero
from nanscope.detect.advice import suggestions_for
from nanscope.detect.diagnose import Diagnosis, Observation, diagnose
from nanscope.errors import NonFiniteError, NonFiniteWarning
from nanscope.localize.dataset_scan import scan_dataset
from nanscope.localize.refeed import Refeed, Stage
from nanscope.recover.actions import Recoverer
from nanscope.recover.policy import Action, Decision, Event, Policy
from nanscope.report import json as report_json
from nanscope.report.model import DatasetScan, Detection, Ending, Evidence, RankSummary, Report, Where
from nanscope.watching.batches import Drawn
from nanscope.watching.checks import Trip
from nanscope.watching.ranks import RankNote, Ranks, Settlement, settle
from nanscope.watching.run_log import Capped, RunLog
from nanscope.watching.stack import user_stacklevel
from nanscope.watching.state import Iteration
from nanscope.watching.triage import Triage

__all__ = ["Verdicts"]


@dataclass(frozen=True, slots=True)
class Pending:
    """A trip of this rank waiting for the step's agreement (distributed)."""

    iteration: Iteration
    observation: Observation | None
    replay: bool  # the run still replays to find ops (no diagnosis yet, or the policy diagnoses every event)
    drawn: Drawn | None  # the failing micro-batch's batch (later micro-batches of the step come after it)
    unsynced: bool  # gradient synchronisation was off (no_sync): the gradients it saw are this rank's own


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
        ranks: Ranks,
        agreeing: Callable[[], bool],
        models: Callable[[], Iterable[nn.Module]],
        scan_seconds: float = 30.0,
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
        # distributed (see nanscope.watching.ranks): trips wait for the step's agreement
        self._ranks = ranks
        self._agreeing = agreeing
        self._models = models
        self.pending: Pending | None = None
        self._replaying: list[RankNote] | None = None  # the notes that sent every rank into a replay
        self.rank_summaries: tuple[RankSummary, ...] = ()
        # after a nonfinite_input diagnosis, the whole dataset is read once (see localize.dataset_scan)
        self._scan_seconds = scan_seconds
        self._scans: list[tuple[object, DatasetScan | None]] = []  # (dataset, its scan), one per dataset

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
        replay = self._replays()
        obs = self._triage.observe(it, trip, current=it is self._log.current, replay=replay)
        if self._agreeing():  # acted on at the step's agreement, by every rank together
            if self.pending is None:
                local = self._ranks.gradients_unsynced(self._models())
                self.pending = Pending(it, obs, replay, it.batches[-1] if it.batches else None, local)
            return
        if replay and self._triage.can_refeed(it, obs):
            self.refeed = self._triage.plan_refeed(it, obs)
            return
        self._conclude(obs, it)

    def finish_refeed(self) -> None:
        refeed, self.refeed = self.refeed, None
        assert refeed is not None
        obs = self._triage.finish_refeed(refeed)
        notes, self._replaying = self._replaying, None
        if notes is None:
            self._conclude(obs, self._log.current, retryable=True)
            return
        self._ranks.resync()
        mine = replace(notes[self._ranks.rank], observation=obs, replay_found=obs.op is not None)
        notes = self._ranks.gather(mine)
        self._agreed(notes, settle(notes, replayed=True), self._log.current)

    # ------------------------------------------------------------------ distributed agreement
    def agree(self, current: Iteration) -> None:
        """Some rank saw a non-finite value (the step's agreement said so, on every rank at the same point):
        all of them settle it together (see :mod:`nanscope.watching.ranks`)."""
        pending = self.pending or Pending(current, None, self._replays(), None, False)
        self.pending = None
        it, obs = pending.iteration, pending.observation
        notes = self._ranks.gather(self._note(pending, current))
        settlement = settle(notes)
        if settlement.replay:  # every rank runs its own failing micro-batch again, gradients kept local
            lead = notes[settlement.lead].observation
            base = obs if obs is not None else lead
            assert base is not None
            self.refeed = self._triage.plan_refeed(it, base, pending.drawn)
            self._replaying = notes
            self._ranks.unsync(self._models())
            current.failed = True
            return
        self._agreed(notes, settlement, current)

    def _replays(self) -> bool:
        """A failure is still replayed to find its op: none was diagnosed yet, or the policy diagnoses each."""
        return self.diagnosis is None or self._policy.diagnoses_every_event

    def conclude_alone(self) -> None:
        """A trip no agreement settled because the run ended first (a value read at close): concluded on this
        rank alone, without naming a culprit rank."""
        pending, self.pending = self.pending, None
        if pending is not None and pending.observation is not None:
            self._conclude(pending.observation, pending.iteration)

    def _note(self, pending: Pending, current: Iteration) -> RankNote:
        it, obs, replay = pending.iteration, pending.observation, pending.replay
        losses = it.losses
        return RankNote(
            rank=self._ranks.rank,
            tripped=obs is not None,
            observation=obs,
            local=obs is not None and (pending.unsynced or _rank_local(obs)),
            loss_finite=all(math.isfinite(v) for v in losses) if losses else None,
            wants_replay=obs is not None and replay and self._triage.can_refeed(it, obs),
            can_replay=replay and self._triage.can_replay_in_loop(it, it is current),
            applied=it.done or (obs is not None and obs.trigger == "parameters"),
        )

    def _agreed(self, notes: list[RankNote], settlement: Settlement, current: Iteration) -> None:
        lead = notes[settlement.lead]
        assert lead.observation is not None
        self.rank_summaries = _summaries(notes, settlement)
        self._conclude(lead.observation, current, done=lead.applied, settlement=settlement)

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

    def _conclude(
        self,
        obs: Observation,
        it: Iteration,
        *,
        done: bool | None = None,
        settlement: Settlement | None = None,
        retryable: bool = False,
    ) -> None:
        clip = it.script_clip or self.script_clip
        if obs.script_clip is None and clip is not None:
            obs = replace(obs, script_clip=clip)  # the script clips after backward, where the trip was
        found = diagnose(obs)
        if settlement is not None:
            found = _attributed(found, settlement, self._ranks.world)
        found = self._scan_dataset(found, obs, it)
        first = self.diagnosis is None
        if first:
            self.diagnosis = found
        else:
            self._detected(obs.step, obs.trigger)
        rec = self._recoverer
        rec.failed()
        cause_key = (found.cause.kind, found.cause.hyperparameter)
        self._causes[cause_key] += 1
        applied = (it.done if done is None else done) or obs.trigger == "parameters"
        applied = applied or found.cause.kind == "nonfinite_parameters"
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
                retryable=retryable,
                last_good_fails=obs.last_good_fails,
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
            if self._report_path and is_rank_zero():
                report_json.write(report, self._report_path)
            raise NonFiniteError(report)
        if decision.action is Action.SKIP:
            it.discard = True
            rec.skip(step, found.cause.kind, decision.reason)
        elif decision.action is Action.RETRY:  # the replaying iteration's update goes through
            rec.retry(step, decision.reason)
        elif decision.action is Action.ROLLBACK:
            it.discard = True
            rec.schedule_rollback()
        if first or rec.failures % 10 == 0:
            action = {
                Action.SKIP: "step skipped",
                Action.ROLLBACK: "rolling back",
                Action.RETRY: "step retried",
            }.get(decision.action)
            more = f" ({action}; {rec.failures} failed step(s) so far)" if action else ""
            text = self._report().headline() if first else f"non-finite {found.first.where} at step {step}"
            warnings.warn(text + more, NonFiniteWarning, stacklevel=user_stacklevel())

    def _quarantine(self, samples: tuple[int, ...], found: Diagnosis, it: Iteration, step: int) -> None:
        datasets = [d.dataset for d in it.batches if d.dataset is not None]
        if datasets:
            scan = next((scan for d, scan in self._scans if d is datasets[-1]), None)
            if scan is not None and found.cause.kind == "nonfinite_input":
                samples = tuple(sorted({*samples, *scan.dirty}))  # every dirty sample at once
            reason = f"{found.cause.kind} at step {step}: {found.cause.summary}"[:300]
            self._recoverer.quarantine_samples(datasets[-1], samples, reason, step, found.cause.kind)

    @property
    def dataset_scan(self) -> DatasetScan | None:
        """The first dataset scan, for the report."""
        return next((scan for _, scan in self._scans if scan is not None), None)

    def _scan_dataset(self, found: Diagnosis, obs: Observation, it: Iteration) -> Diagnosis:
        """After a ``nonfinite_input`` diagnosis, every dirty sample of the batch's dataset (read once per
        dataset, bounded by ``scan_seconds``; not in distributed runs, whose ranks must act alike)."""
        datasets = [d.dataset for d in it.batches if d.dataset is not None]
        if (
            found.cause.kind != "nonfinite_input"
            or self._scan_seconds <= 0
            or self._ranks.active
            or not datasets
            or any(d is datasets[-1] for d, _ in self._scans)
        ):
            return found
        scan = scan_dataset(datasets[-1], known=found.cause.samples or (), seconds=self._scan_seconds)
        self._scans.append((datasets[-1], scan))
        if scan is None:
            return found
        data = {"samples": list(scan.dirty), "scanned": scan.scanned, "total": scan.total}
        cause = replace(
            found.cause, evidence=(*found.cause.evidence, Evidence("dataset scan", scan.text(), data))
        )
        return replace(
            found, cause=cause, suggestions=suggestions_for(cause, obs.history, obs.script_clip, scan)
        )


def _rank_local(obs: Observation) -> bool:
    """Whether a rank's observation is its own: the loss (never reduced), its batch, weights, hyperparameters.
    Gradients are not: after DDP's all-reduce every rank holds the same ones."""
    own_state = bool(obs.hyperparameters or obs.parameters_before)
    dirty = any(not scan.clean for scan in obs.batches)
    return obs.trigger != "gradients" or own_state or dirty


def _attributed(found: Diagnosis, settlement: Settlement, world: int) -> Diagnosis:
    culprits = settlement.culprits
    if culprits is None:
        detail = (
            f"every rank of {world} showed it on its own state: a fault of the whole job, not of one rank"
        )
        cause = replace(found.cause, rank=None, evidence=(*found.cause.evidence, Evidence("ranks", detail)))
        return replace(found, cause=cause)
    named = ", ".join(str(r) for r in culprits)
    others = [r for r in range(world) if r not in culprits]
    detail = (
        f"rank(s) {named} of {world} saw it on their own loss, batch or gradients before the reduction"
        + (f"; rank(s) {', '.join(map(str, others))} only through it" if others else "")
    )
    evidence = (*found.cause.evidence, Evidence("ranks", detail, {"culprits": list(culprits)}))
    return replace(found, cause=replace(found.cause, rank=culprits[0], evidence=evidence))


def _summaries(notes: list[RankNote], settlement: Settlement) -> tuple[RankSummary, ...]:
    culprits = settlement.culprits or ()
    out = []
    for n in notes:
        obs = n.observation if n.tripped else None
        own = diagnose(obs) if obs is not None and (n.local or n.rank in culprits) else None
        out.append(
            RankSummary(
                rank=n.rank,
                culprit=n.rank in culprits,
                step=None if obs is None else obs.step,
                where=None if obs is None else obs.trigger,
                loss_finite=n.loss_finite,
                kind=None if own is None else own.cause.kind,
                samples=None if own is None else own.cause.samples,
            )
        )
    return tuple(out)
