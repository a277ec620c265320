"""The report as data: frozen values that the text, JSON and HTML renderers read.

A :class:`Report` is what nanscope knows at the end of a watched run, or at the moment it stopped one. It is
built from measurements only; a field that nanscope could not measure is ``None`` and the ``cause.summary``
says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA = "nanscope.report/1"

Where = Literal["loss", "gradients", "parameters", "hyperparameters", "inputs", "optimizer_state"]
Phase = Literal["data", "forward", "loss", "backward", "optimizer", "schedule"]

#: Cause kinds, in the vocabulary of ``docs/report.md``. ``undetermined`` is the honest answer where the
#: evidence measured so far does not single out one of the others.
KINDS = (
    "nonfinite_input",
    "nonfinite_parameters",
    "invalid_hyperparameter",
    "optimizer_update",
    "gradient_explosion",
    "overflow",
    "domain_error",
    "singular_gradient",
    "not_reproducible",
    "undetermined",
)
WHERES = ("loss", "gradients", "parameters", "hyperparameters", "inputs", "optimizer_state")
PHASES = ("data", "forward", "loss", "backward", "optimizer", "schedule")


@dataclass(frozen=True, slots=True)
class Evidence:
    """One measured fact behind a diagnosis, e.g. "batch[0] rows 3, 7 hold NaN"."""

    label: str
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FirstNonFinite:
    """Where the first non-finite value was seen.

    ``step`` is the 0-based training iteration: the number of ``optimizer.step()`` calls completed before it.
    """

    step: int
    where: Where
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.where not in WHERES:
            raise ValueError(f"where={self.where!r}; expected one of {', '.join(WHERES)}")


@dataclass(frozen=True, slots=True)
class Cause:
    """Why it happened, as far as the evidence goes."""

    kind: str
    phase: Phase
    summary: str
    module: str | None = None
    op: str | None = None
    parameter: str | None = None
    hyperparameter: str | None = None
    samples: tuple[int, ...] | None = None
    evidence: tuple[Evidence, ...] = ()
    # distributed: the culprit rank (the first, if several); None when global, or not distributed
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.phase not in PHASES:
            raise ValueError(f"phase={self.phase!r}; expected one of {', '.join(PHASES)}")


@dataclass(frozen=True, slots=True)
class History:
    """The last steps of the run (bounded): one entry per completed iteration, aligned by position.

    ``loss`` is the mean of the finite-or-not scalar losses handed to ``backward()`` in that iteration (``None``
    where no scalar loss was seen); ``grad_norm`` is the global L2 norm of all gradients before the step;
    ``lr`` the learning rate of the first param group of the first optimizer.
    """

    step: tuple[int, ...] = ()
    loss: tuple[float | None, ...] = ()
    grad_norm: tuple[float | None, ...] = ()
    lr: tuple[float | None, ...] = ()
    dropped: int = 0

    def last(self, name: str) -> float | None:
        values: tuple[float | None, ...] = getattr(self, name)
        for value in reversed(values):
            if value is not None and math.isfinite(value):
                return value
        return None


@dataclass(frozen=True, slots=True)
class Detection:
    """A later non-finite event under a policy that kept training (``warn``)."""

    step: int
    where: Where


@dataclass(frozen=True, slots=True)
class Intervention:
    """One thing a recovery policy did to the run.

    ``kind``: ``skip`` (the step's update was discarded), ``retry`` (the failure did not reproduce: the
    replayed step's finite update was applied in its place), ``rollback`` (weights, buffers, optimizer, scheduler,
    RNG and scaler restored to snapshot ``data["to_step"]``), ``quarantine`` (samples excluded from later
    batches), ``give_up`` (the policy's limits were reached and the run was stopped).
    """

    step: int
    kind: Literal["skip", "retry", "rollback", "quarantine", "give_up"]
    detail: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EarlyWarning:
    """A loss or grad-norm spike: ``value`` against its running ``baseline`` (robust z-score ``score``).

    ``layers`` are the parameters whose gradient norm grew the most against their own recent values;
    ``nonfinite_after`` is the number of steps until the first non-finite value, when one followed.
    """

    step: int
    series: Literal["loss", "grad_norm"]
    value: float
    baseline: float
    score: float
    layers: tuple[str, ...] = ()
    nonfinite_after: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What recovery cost and achieved (present under the recovering policies and ``clip``)."""

    failed_steps: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    steps_undone: int = 0  # completed steps whose effect rollbacks threw away
    quarantined: tuple[int, ...] = ()
    clipped_steps: int = 0
    clip_rate: float = 0.0  # clipped steps / steps watched
    snapshots: int = 0
    snapshot_seconds: float = 0.0  # total time spent taking snapshots
    snapshot_bytes: int = 0  # size of one snapshot
    recovery_seconds: float = 0.0  # time spent restoring snapshots
    seconds_lost: float = 0.0  # wall time of discarded iterations + undone steps (at the median step time)
    gave_up: bool = False


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run that did not end normally ended: the script's own exception, or an interrupt."""

    kind: Literal["exception", "interrupted"]
    exception: str  # the exception's type name, e.g. "ValueError" or "KeyboardInterrupt"
    message: str
    step: int  # the iteration it happened in
    nonfinite_seen: bool  # whether any NaN/Inf had been seen before it

    def text(self) -> str:
        seen = "after a NaN/Inf was seen" if self.nonfinite_seen else "no NaN/Inf seen before it"
        what = "was interrupted" if self.kind == "interrupted" else f"raised {self.exception}"
        message = f" ({self.message[:120]})" if self.message else ""
        return f"the script {what}{message} at step {self.step}; {seen}"


@dataclass(frozen=True, slots=True)
class DatasetScan:
    """The whole dataset read after a ``nonfinite_input`` diagnosis: every sample holding NaN/Inf.

    ``dirty`` are dataset indices (those the diagnosis named, plus every one the scan found); ``scanned`` of
    ``total`` samples were read in ``seconds`` (the scan is bounded in time); ``failed`` counts samples whose
    ``__getitem__`` raised.
    """

    dataset: str
    total: int
    scanned: int
    dirty: tuple[int, ...]
    seconds: float
    failed: int = 0

    @property
    def complete(self) -> bool:
        return self.scanned >= self.total

    def text(self) -> str:
        shown = ", ".join(map(str, self.dirty[:20])) + (
            f", ... ({len(self.dirty)} in all)" if len(self.dirty) > 20 else ""
        )
        coverage = "all" if self.complete else f"{self.scanned} of"
        failed = f"; {self.failed} raised in __getitem__" if self.failed else ""
        return (
            f"{len(self.dirty)} sample(s) of {self.dataset} hold NaN/Inf: {shown} (read {coverage} {self.total} "
            f"samples in {self.seconds:.1f} s{failed})"
        )


@dataclass(frozen=True, slots=True)
class RankSummary:
    """One rank of a distributed run, as the ranks agreed on the failure.

    ``culprit``: its own loss, batch, weights or unreduced gradients showed the fault while some other rank's
    did not. ``step`` / ``where``: what its own checks saw first (``None``: nothing). ``kind`` and ``samples``
    (dataset indices) come from its own evidence, where that evidence is its own (not received through the
    gradient reduction).
    """

    rank: int
    culprit: bool
    step: int | None
    where: Where | None
    loss_finite: bool | None
    kind: str | None = None
    samples: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Everything nanscope concluded about one watched run."""

    verdict: Literal["healthy", "nonfinite", "unwatched"]
    first_nonfinite: FirstNonFinite | None
    cause: Cause | None
    suggestions: tuple[str, ...]
    history: History
    environment: Mapping[str, Any]
    policy: str = "stop"
    steps: int = 0
    detections: tuple[Detection, ...] = ()
    detections_dropped: int = 0
    interventions: tuple[Intervention, ...] = ()
    early_warnings: tuple[EarlyWarning, ...] = ()
    outcome: Outcome | None = None
    watched_steps: int = 0  # iterations nanscope watched to their end
    scaler_skipped_steps: int = 0  # iterations a GradScaler ended without an update (Inf/NaN gradients)
    ending: Ending | None = None  # the script's own exception or an interrupt, when the run ended in one
    ranks: tuple[RankSummary, ...] = ()  # distributed runs with a failure: every rank's part
    dataset_scan: DatasetScan | None = None  # after a nonfinite_input diagnosis: every dirty sample
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if (self.verdict != "nonfinite") != (self.first_nonfinite is None):
            raise ValueError("only a nonfinite report has a first_nonfinite, and it must have one")

    def headline(self) -> str:
        """One line for an exception message or a log."""
        if self.first_nonfinite is None:
            end = f"; {self.ending.text()}" if self.ending else ""
            if self.verdict == "unwatched":
                return (
                    "nothing watched: no training step was seen (no optimizer step or backward() of a "
                    f"floating-point loss){end}"
                )
            return f"healthy: {self.watched_steps} steps watched, no NaN/Inf{end}"
        first = self.first_nonfinite
        kind = f" ({self.cause.kind})" if self.cause else ""
        if self.cause is not None and self.cause.rank is not None:
            kind = f" on rank {self.cause.rank}{kind}"
        elif self.ranks:
            kind = f" on every rank of {len(self.ranks)}{kind}"
        summary = f": {self.cause.summary}" if self.cause else ""
        return f"non-finite {first.where} at step {first.step}{kind}{summary}"
