"""nanscope: find out why a training loss became NaN, at the step it happens.

>>> import nanscope
>>> with nanscope.watch(model, optimizer):      # doctest: +SKIP
...     train()

Or without touching the script: ``nanscope run train.py``.
"""

from nanscope.errors import (
    InternalErrorWarning,
    NanscopeError,
    NanscopeWarning,
    NonFiniteError,
    NonFiniteWarning,
    SpikeWarning,
    UsageError,
)
from nanscope.recover.policy import ClipOptions, GiveUp, Policy, RollbackOptions, make_policy
from nanscope.report.model import (
    Cause,
    EarlyWarning,
    Evidence,
    FirstNonFinite,
    History,
    Intervention,
    Outcome,
    Report,
)

__version__ = "0.1.0"

from nanscope.watching.watcher import Watcher, watch  # noqa: E402  (needs __version__ for reports)

__all__ = [
    "Cause",
    "ClipOptions",
    "EarlyWarning",
    "Evidence",
    "FirstNonFinite",
    "GiveUp",
    "History",
    "InternalErrorWarning",
    "Intervention",
    "NanscopeError",
    "NanscopeWarning",
    "NonFiniteError",
    "NonFiniteWarning",
    "Outcome",
    "Policy",
    "Report",
    "RollbackOptions",
    "SpikeWarning",
    "UsageError",
    "Watcher",
    "__version__",
    "make_policy",
    "watch",
]
