"""The pre-flight report as data: ``nanscope.check/1`` findings, what was checked, and its JSON form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nanscope.report.json import to_plain

__all__ = ["CODES_FOR_CAUSE", "SCHEMA", "CheckReport", "Finding", "Results"]

SCHEMA = "nanscope.check/1"
Severity = Literal["error", "warning", "info"]

#: the pre-flight codes that would have caught a run's diagnosis kind before the run (``nanscope run``'s hint)
CODES_FOR_CAUSE = {
    "nonfinite_input": ("nonfinite_samples",),
    "invalid_hyperparameter": ("lr_schedule_nonfinite", "eps_zero"),
    "gradient_explosion": ("exploding_gradients", "init_scale", "unnormalized_inputs"),
    "overflow": ("unnormalized_inputs", "init_scale", "initial_loss"),
    "domain_error": ("log_of_softmax", "sigmoid_bce", "label_out_of_range"),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found before training: ``code`` from a fixed vocabulary (docs/check.md), where it is, what
    was measured, and the fix."""

    code: str
    severity: Severity
    where: str
    message: str
    fix: str
    samples: tuple[int, ...] | None = None  # dataset indices, for data findings
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The findings of :func:`nanscope.check`, and the codes that were checked and passed."""

    findings: tuple[Finding, ...]
    checked: tuple[str, ...]
    environment: Mapping[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def ok(self) -> bool:
        """No finding is an error."""
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "findings": [to_plain(f) for f in self.findings],
            "checked": list(self.checked),
            "environment": to_plain(self.environment),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


class Results:
    """What a :class:`CheckReport` is built from, gathered check by check: the findings, the codes checked and
    passed, and the codes that could not be checked (and why)."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.checked: list[str] = []
        self.not_checked: dict[str, str] = {}

    def run(self, code: str, found: list[Finding]) -> None:
        """The outcome of check ``code``: its findings, or none (checked and passed)."""
        self.findings.extend(found)
        if not found:
            self.checked.append(code)

    def add(self, found: list[Finding], passed: list[str]) -> None:
        """The outcome of several checks at once (findings, and the codes that passed)."""
        self.findings.extend(found)
        self.checked.extend(passed)

    def maybe(self, code: str, found: list[Finding], why_not: str | None) -> None:
        """A check that may not have been able to judge: ``why_not`` says why (then it found nothing)."""
        if why_not is not None:
            self.not_checked[code] = why_not
        else:
            self.run(code, found)

    def report(self, environment: Mapping[str, Any]) -> CheckReport:
        """Findings in order without repeats; ``checked``: each passing code once, none that has a finding."""
        unique: dict[tuple[str, str, str], Finding] = {}
        for f in self.findings:
            unique.setdefault((f.code, f.where, f.message), f)
        codes = {f.code for f in unique.values()}
        return CheckReport(
            findings=tuple(unique.values()),
            checked=tuple(dict.fromkeys(c for c in self.checked if c not in codes)),
            environment={**environment, "not_checked": dict(self.not_checked)},
        )
