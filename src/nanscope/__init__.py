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
from nanscope.preflight.lr_find import LRFindResult, lr_find
from nanscope.preflight.report import CheckReport, Finding
from nanscope.preflight.run import check
from nanscope.recover.policy import ClipOptions, GiveUp, Policy, RollbackOptions, make_policy
from nanscope.report.model import (
    Cause,
    Detection,
    EarlyWarning,
    Ending,
    Evidence,
    FirstNonFinite,
    History,
    Intervention,
    Outcome,
    Report,
)
from nanscope.watching.watcher import Watcher, WatcherState, watch

__version__ = "0.1.0"

__all__ = [
    "Cause",
    "CheckReport",
    "ClipOptions",
    "Detection",
    "EarlyWarning",
    "Ending",
    "Evidence",
    "Finding",
    "FirstNonFinite",
    "GiveUp",
    "History",
    "InternalErrorWarning",
    "Intervention",
    "LRFindResult",
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
    "WatcherState",
    "__version__",
    "check",
    "lr_find",
    "make_policy",
    "watch",
]
