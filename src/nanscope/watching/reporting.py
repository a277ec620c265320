"""Assembling the :class:`~nanscope.report.model.Report` from the engine's parts (values only, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from nanscope.recover.actions import Recoverer
from nanscope.recover.policy import Policy
from nanscope.report.model import Report
from nanscope.watching.early_warning import EarlyWarnings
from nanscope.watching.environment import environment
from nanscope.watching.ranks import Ranks
from nanscope.watching.run_log import RunLog
from nanscope.watching.verdicts import Verdicts

__all__ = ["build_report"]


def build_report(
    *,
    verdicts: Verdicts,
    log: RunLog,
    recoverer: Recoverer,
    early: EarlyWarnings,
    models: Iterable[nn.Module],
    policy: Policy,
    steps: int,
    ranks: Ranks,
) -> Report:
    found = verdicts.diagnosis
    current = log.current
    # the failing iteration counts as watched once it is diagnosed, even if it never ended (stop)
    watched = log.watched + (1 if found is not None and not current.done and current.failed else 0)
    return Report(
        verdict="nonfinite" if found is not None else ("healthy" if watched else "unwatched"),
        first_nonfinite=None if found is None else found.first,
        cause=None if found is None else found.cause,
        suggestions=() if found is None else found.suggestions,
        history=log.history(),
        environment={**environment(models), "world_size": ranks.world, "rank": ranks.rank},
        policy=policy.name,
        steps=steps,
        detections=tuple(verdicts.detections.items),
        detections_dropped=verdicts.detections.dropped,
        interventions=tuple(recoverer.interventions),
        early_warnings=early.records(None if found is None else found.first.step),
        outcome=recoverer.outcome(steps, log.seconds_lost, log.median_step_seconds()),
        watched_steps=watched,
        scaler_skipped_steps=log.scaler_skipped,
        ending=verdicts.ending,
        ranks=verdicts.rank_summaries,
        dataset_scan=verdicts.dataset_scan,
    )
