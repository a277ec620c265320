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
    UsageError,
)
from nanscope.report.model import Cause, Evidence, FirstNonFinite, History, Report

__version__ = "0.1.0"

from nanscope.watching.watcher import Watcher, watch  # noqa: E402  (needs __version__ for reports)

__all__ = [
    "Cause",
    "Evidence",
    "FirstNonFinite",
    "History",
    "InternalErrorWarning",
    "NanscopeError",
    "NanscopeWarning",
    "NonFiniteError",
    "NonFiniteWarning",
    "Report",
    "UsageError",
    "Watcher",
    "__version__",
    "watch",
]
