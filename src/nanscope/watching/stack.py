"""Where a warning should point: the user's line that called into torch or a framework (Lightning,
transformers, accelerate), not nanscope's hook or the framework's internals."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import FrameType

import torch

__all__ = ["user_stacklevel"]

_FRAMEWORKS = ("lightning", "pytorch_lightning", "lightning_fabric", "transformers", "accelerate")
_skip: tuple[str, ...] | None = None


def _skipped() -> tuple[str, ...]:
    """nanscope's, torch's and the installed frameworks' directories (found without importing them)."""
    global _skip
    if _skip is None:
        dirs = [
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # nanscope
            os.path.dirname(os.path.abspath(torch.__file__)),  # torch (hooks, optimizer.step, backward)
        ]
        for name in _FRAMEWORKS:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                continue
            dirs += [os.path.abspath(d) for d in (spec.submodule_search_locations or ())] if spec else []
        _skip = tuple(d + os.sep for d in dirs)
    return _skip


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called right here that names the first frame outside
    nanscope, torch and the frameworks (the training loop's line, or the user's ``trainer.fit(...)``),
    counted from the caller of this function."""
    skip = _skipped()
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
        level += 1
    return level
