"""Policies decide what the watcher does once a non-finite value is diagnosed; the watcher acts.

This release has ``stop`` and ``warn``. Recovery policies (skip, rollback, quarantine, clip) plug into the
same :class:`Policy` protocol: they receive the diagnosis and return an :class:`Action`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nanscope.detect.diagnose import Diagnosis
from nanscope.errors import UsageError

__all__ = ["POLICIES", "Action", "Policy", "Stop", "Warn", "make_policy"]


class Action(enum.Enum):
    STOP = "stop"  # raise NonFiniteError before the failing update is applied
    CONTINUE = "continue"  # record, warn, let the step run


@dataclass(frozen=True, slots=True)
class Policy:
    name: str = "policy"

    def decide(self, diagnosis: Diagnosis, first: bool) -> Action:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Stop(Policy):
    """Diagnose, write the report, raise :class:`nanscope.NonFiniteError` (weights are still pre-step)."""

    name: str = "stop"

    def decide(self, diagnosis: Diagnosis, first: bool) -> Action:
        return Action.STOP


@dataclass(frozen=True, slots=True)
class Warn(Policy):
    """Diagnose the first occurrence, warn, and let training go on; later occurrences are counted."""

    name: str = "warn"

    def decide(self, diagnosis: Diagnosis, first: bool) -> Action:
        return Action.CONTINUE


POLICIES: dict[str, type[Policy]] = {"stop": Stop, "warn": Warn}


def make_policy(spec: str | Policy) -> Policy:
    if isinstance(spec, Policy):
        return spec
    cls = POLICIES.get(spec) if isinstance(spec, str) else None
    if cls is None:
        raise UsageError(f"unknown policy {spec!r}; available: {', '.join(sorted(POLICIES))}")
    return cls()
