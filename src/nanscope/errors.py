"""The exceptions and warnings nanscope raises.

    NanscopeError                  base of everything nanscope raises on purpose
    ├── NonFiniteError             a NaN/Inf was diagnosed under the ``stop`` policy; carries ``.report``
    └── UsageError                 nanscope was called wrongly (bad policy name, missing script, ...)

    NanscopeWarning (UserWarning)  base of nanscope's warnings
    ├── NonFiniteWarning           a NaN/Inf was diagnosed and the policy kept training (warn, skip, rollback)
    ├── SpikeWarning               early warning: the loss or grad norm jumped far above its running level
    └── InternalErrorWarning       nanscope itself failed; it detached the failing check and training goes on

A user's own exception is never wrapped: it propagates unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nanscope.report.model import Report

__all__ = [
    "InternalErrorWarning",
    "NanscopeError",
    "NanscopeWarning",
    "NonFiniteError",
    "NonFiniteWarning",
    "SpikeWarning",
    "UsageError",
]


class NanscopeError(Exception):
    """Base class of the errors nanscope raises on purpose."""


class NonFiniteError(NanscopeError):
    """A non-finite value was diagnosed and the policy says stop.

    The weights are still those from before the failing ``optimizer.step()``; ``report`` holds the diagnosis.
    """

    def __init__(self, report: Report) -> None:
        self.report = report
        super().__init__(report.headline())


class UsageError(NanscopeError):
    """nanscope was called with arguments it cannot work with; the message says what to change."""


class NanscopeWarning(UserWarning):
    """Base class of nanscope's warnings."""


class NonFiniteWarning(NanscopeWarning):
    """A non-finite value was diagnosed and the policy says keep going."""


class SpikeWarning(NanscopeWarning):
    """The loss or the gradient norm jumped far above its running level: often the step before a NaN."""


class InternalErrorWarning(NanscopeWarning):
    """nanscope failed internally; the failing check is switched off and training continues."""
