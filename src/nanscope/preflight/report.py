"""The pre-flight report as data: ``nanscope.check/1`` findings, what was checked, and its JSON form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nanscope.report.json import to_plain

__all__ = ["CODES_FOR_CAUSE", "SCHEMA", "CheckReport", "Finding"]

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
