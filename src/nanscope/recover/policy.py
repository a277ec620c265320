"""Policies decide what happens after a non-finite step; the watcher carries the decision out.

A policy is one *handler* for the failing step plus optional *measures*:

=============  ====================================================================================
``stop``       diagnose, report, raise :class:`nanscope.NonFiniteError` before the failing update
``warn``       diagnose the first event, warn, let every update through (the run is not protected)
``skip``       discard the failing step's update entirely (weights, optimizer state and step counts,
               weight decay) and go on; give up after too many failures. A failure whose replay is
               finite (``not_reproducible``) is retried: the replay's update is applied instead
``rollback``   restore the newest snapshot confirmed good, back the learning rate off for a while,
               and go on with the next batches (a failure the batch alone explains, such as dirty
               inputs or log(0), is only skipped); give up after too many failures
``quarantine`` (measure) keep the culprit samples a diagnosis names out of every later batch and in a
               file a later run applies again; alone it means ``quarantine+skip``
``clip``       (measure) adaptive gradient clipping from the run's own grad-norm history; alone it
               means ``clip+stop``
=============  ====================================================================================

Specs combine handlers and measures with ``+`` (``"quarantine+rollback"``). :meth:`Policy.decide` is pure:
the watcher describes the event (:class:`Event`) and receives a :class:`Decision`.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from nanscope.detect.diagnose import Diagnosis
from nanscope.errors import UsageError

__all__ = [
    "HANDLERS",
    "MEASURES",
    "Action",
    "ClipOptions",
    "Decision",
    "Event",
    "GiveUp",
    "Policy",
    "RollbackOptions",
    "make_policy",
    "step_growth",
]

HANDLERS = ("stop", "warn", "skip", "rollback")
MEASURES = ("quarantine", "clip")

#: Kinds whose culprit samples are worth excluding: the samples themselves produce the NaN.
_SAMPLE_KINDS = ("nonfinite_input", "domain_error", "overflow", "singular_gradient")
#: Kinds the failing batch alone explains: under ``rollback`` such a step is only skipped (the state before it
#: is intact), while explosions, bad updates, weights or hyperparameters, and unexplained failures roll back.
_BATCH_KINDS = ("nonfinite_input", "domain_error", "singular_gradient")


class Action(enum.Enum):
    STOP = "stop"  # raise NonFiniteError (before the failing update where it has not been applied)
    CONTINUE = "continue"  # record, warn, let the step run
    SKIP = "skip"  # the failing update is not applied
    RETRY = "retry"  # the failure did not reproduce: the replayed step's finite update is applied instead
    ROLLBACK = "rollback"  # restore a good snapshot and go on


@dataclass(frozen=True, slots=True)
class GiveUp:
    """When a recovering run stops anyway: ``consecutive`` failed steps in a row, or failed steps above
    ``fraction`` of all steps (counted once ``min_steps`` steps have run)."""

    consecutive: int = 5
    fraction: float = 0.1
    min_steps: int = 50


@dataclass(frozen=True, slots=True)
class RollbackOptions:
    """Snapshots every ``every`` steps (``None``: adaptive, see below), at most ``keep`` of them (in memory,
    or as files in ``directory``); one counts as good once ``confirm`` later steps stayed finite.

    Adaptive spacing (``every=None``): a quarter of the steps run so far, at least ``confirm`` and at most
    ``max_every`` (every 10 steps up to step 40, then wider up to every 50 from step 200): a short run is not
    rolled back to its start each time, a long one keeps the cost low. It depends on the step only, so a
    run is reproducible and every rank of a distributed run snapshots at the same steps.

    Each rollback restores the newest good snapshot taken before the first early warning (loss or grad-norm
    spike) of the episode that failed, and multiplies the learning rate by a back-off: ``backoff``, or, when
    the grad norm grew steadily before the failure, one over its measured per-step growth (between
    ``backoff ** 2`` and ``backoff``): the rate was too high by about that much. Every ``cooldown`` steps
    without a failure the multiplier doubles back, never up to one that failed: a steady divergence makes the
    rate it happened at a ceiling, and so does a failure right after a doubling (which halves it again).
    ``cooldown=None`` keeps the multiplier for the rest of the run."""

    every: int | None = None
    max_every: int = 50
    keep: int = 2
    confirm: int = 10
    backoff: float = 0.5
    cooldown: int | None = 100
    directory: str | None = None


@dataclass(frozen=True, slots=True)
class ClipOptions:
    """Adaptive clipping (as in ZClip): the grad norm is clipped to ``mean + z * std`` of its exponential
    moving statistics (decay ``alpha``), after ``warmup`` steps that only collect them."""

    z: float = 2.5
    alpha: float = 0.97
    warmup: int = 25


@dataclass(frozen=True, slots=True)
class Event:
    """What the watcher knows when a step fails (measured values only)."""

    diagnosis: Diagnosis
    step: int
    applied: bool  # the failing update has already changed the weights (it cannot be skipped)
    consecutive: int  # failed steps in a row, this one included
    failures: int  # failed steps so far, this one included
    steps: int  # optimizer steps completed
    snapshot: bool  # a snapshot is available to roll back to
    first: bool  # the run's first event
    repeats: int = 0  # earlier failed steps with the same cause kind (and hyperparameter)
    retryable: bool = False  # the loop is replaying the failing step now: its finite update can be applied
    # the origin op re-run with the same weights on the last good batch: True, it fails there too (the weights
    # are the cause); False, finite there (the batch explains it); None, not measured
    last_good_fails: bool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    quarantine: tuple[int, ...] = ()  # dataset indices to exclude from now on
    reason: str = ""  # why, in words, for the report (give-up and fallbacks especially)
    gave_up: bool = False  # a recovering policy reached its limits and stops the run


@dataclass(frozen=True, slots=True)
class Policy:
    handler: str = "stop"
    quarantine: bool = False
    clip: ClipOptions | None = None
    give_up: GiveUp = field(default_factory=GiveUp)
    rollback: RollbackOptions = field(default_factory=RollbackOptions)
    quarantine_file: str | None = None  # where quarantined samples are kept (and read from at start)

    def __post_init__(self) -> None:
        problems = []
        if self.handler not in HANDLERS:
            problems.append(f"unknown handler {self.handler!r}; choose one of {', '.join(HANDLERS)}")
        if self.quarantine and self.handler == "warn":
            problems.append(
                "'quarantine+warn' cannot work: warn lets the failing update through, so the weights are "
                "already non-finite when the samples are excluded; use quarantine+skip or quarantine+rollback"
            )
        r, g = self.rollback, self.give_up
        if (
            (r.every is not None and r.every < 1)
            or r.max_every < 1
            or r.keep < 1
            or r.confirm < 0
            or (r.cooldown is not None and r.cooldown < 1)
        ):
            problems.append(
                "rollback needs every >= 1 (or None: adaptive), max_every >= 1, keep >= 1, confirm >= 0 and "
                "cooldown >= 1 (or None)"
            )
        if not 0 < r.backoff <= 1:
            problems.append(f"rollback backoff must be in (0, 1]; got {r.backoff}")
        if g.consecutive < 1 or not 0 < g.fraction <= 1 or g.min_steps < 0:
            problems.append("give_up needs consecutive >= 1 and 0 < fraction <= 1")
        if self.clip is not None and (
            self.clip.z <= 0 or not 0 < self.clip.alpha < 1 or self.clip.warmup < 2
        ):
            problems.append("clip needs z > 0, 0 < alpha < 1 and warmup >= 2")
        if problems:
            raise UsageError("policy: " + "; ".join(problems))

    @property
    def name(self) -> str:
        measures = [m for m, on in (("quarantine", self.quarantine), ("clip", self.clip is not None)) if on]
        return "+".join([*measures, self.handler])

    @property
    def recovers(self) -> bool:
        """Whether the run goes on after a failure with the failing update undone."""
        return self.handler in ("skip", "rollback")

    @property
    def replays_in_loop(self) -> bool:
        """Whether a failing step may be run again by the script's own loop (``warn`` lets every update
        through, so a replay would change the run)."""
        return self.handler != "warn"

    @property
    def takes_snapshots(self) -> bool:
        return self.handler == "rollback"

    @property
    def reads_each_step(self) -> bool:
        """Whether each step's verdict is needed before its update (``skip``: a host sync per step on CUDA)."""
        return self.handler == "skip"

    @property
    def diagnoses_every_event(self) -> bool:
        """Whether every failing step is diagnosed (recovering runs), not only the first."""
        return self.recovers

    @property
    def acts(self) -> bool:
        """Whether the policy does anything beyond watching: recovers, quarantines or clips."""
        return self.recovers or self.quarantine or self.clip is not None

    def decide(self, event: Event) -> Decision:
        cause = event.diagnosis.cause
        samples = (
            tuple(cause.samples) if self.quarantine and cause.samples and cause.kind in _SAMPLE_KINDS else ()
        )
        if self.handler == "stop":
            return Decision(Action.STOP, samples)
        if self.handler == "warn":
            return Decision(Action.CONTINUE)
        limit = "" if samples else self._limit(event)  # a failure whose samples are excluded is progress
        if not limit and cause.kind == "invalid_hyperparameter" and event.repeats:
            limit = (
                f"{cause.hyperparameter or 'a hyperparameter'} broke the run again after recovery: the schedule "
                "sets it again whatever the weights, so rolling back or skipping cannot fix it"
            )
        if limit:
            return Decision(Action.STOP, samples, f"gave up: {limit}", gave_up=True)
        if cause.kind == "not_reproducible" and not event.applied:
            if event.retryable:
                return Decision(Action.RETRY, (), "the failure did not reproduce: the step was run again")
            return Decision(Action.SKIP, (), "the failure did not reproduce; the step was skipped")
        if self.handler == "rollback":
            # the batch explains it: skipped, unless op failures repeat step after step (the weights drift)
            repeated = cause.kind != "nonfinite_input" and event.consecutive >= 2
            weights = cause.kind != "nonfinite_input" and event.last_good_fails is True
            if (
                not event.applied
                and cause.kind in _BATCH_KINDS
                and not ((repeated or weights) and event.snapshot)
            ):
                reason = "the batch explains it and the weights before it are intact: no rollback"
                return Decision(Action.SKIP, samples, reason)
            if event.snapshot:
                return Decision(Action.ROLLBACK, samples)
            if not event.applied:
                return Decision(Action.SKIP, samples, "no snapshot to roll back to yet: the step was skipped")
            return Decision(Action.STOP, samples, "the update was already applied and no snapshot exists")
        if event.applied:
            return Decision(
                Action.STOP,
                samples,
                "the failing update was already applied (weights written non-finite by optimizer.step()), "
                "so skipping cannot undo it; use rollback",
            )
        return Decision(Action.SKIP, samples)

    def _limit(self, event: Event) -> str:
        g = self.give_up
        if event.consecutive > g.consecutive:
            return f"{event.consecutive} failed steps in a row (limit {g.consecutive})"
        steps = max(event.steps, 1)
        if event.steps >= g.min_steps and event.failures > g.fraction * steps:
            return f"{event.failures} failed steps out of {steps} (limit {g.fraction:.0%})"
        return ""


def step_growth(grad_norms: Sequence[float | None], window: int = 10) -> float | None:
    """The grad norm's growth per iteration just before a failure: a least-squares fit of log(norm) over the
    last ``window`` finite iterations in a row (non-finite ones at the end are left out). ``None`` with fewer
    than 4 such iterations. Iterations are taken by position, not by step number, which repeats after a
    rollback."""
    values = list(grad_norms)
    while values and (values[-1] is None or not math.isfinite(values[-1])):
        values.pop()
    run: list[float] = []
    for v in reversed(values):
        if v is None or not math.isfinite(v) or v <= 0 or len(run) == window:
            break
        run.append(math.log(v))
    if len(run) < 4:
        return None
    run.reverse()
    slope, _ = statistics.linear_regression(range(len(run)), run)
    return math.exp(slope)


def make_policy(spec: str | Policy, **options: object) -> Policy:
    """A policy from a spec such as ``"quarantine+rollback"`` (or a :class:`Policy`, returned as is).

    ``options`` are :class:`Policy` fields (``quarantine_file=``, ``rollback=RollbackOptions(...)``, ...).
    """
    if isinstance(spec, Policy):
        return replace(spec, **options) if options else spec  # type: ignore[arg-type]
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"policy must be a string such as 'stop' or 'quarantine+rollback'; got {spec!r}")
    parts = [p.strip() for p in spec.split("+")]
    unknown = [p for p in parts if p not in HANDLERS + MEASURES]
    if unknown:
        raise UsageError(
            f"unknown policy part(s) {', '.join(map(repr, unknown))} in {spec!r}; handlers: "
            f"{', '.join(HANDLERS)}; measures (combine with +): {', '.join(MEASURES)}"
        )
    if len(set(parts)) != len(parts):
        raise UsageError(f"policy {spec!r} names a part twice")
    handlers = [p for p in parts if p in HANDLERS]
    if len(handlers) > 1:
        raise UsageError(
            f"policy {spec!r} combines {' and '.join(handlers)}: choose one way to handle a failing step "
            f"({', '.join(HANDLERS)})"
        )
    quarantine = "quarantine" in parts
    handler = handlers[0] if handlers else ("skip" if quarantine else "stop")
    return Policy(
        handler=handler,
        quarantine=quarantine,
        clip=ClipOptions() if "clip" in parts else None,
        **options,  # type: ignore[arg-type]
    )
