"""Where a warning should point: the user's line that called into torch, not nanscope's hook."""

from __future__ import annotations

import os
import sys
from types import FrameType

import torch

__all__ = ["user_stacklevel"]

_SKIP = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # nanscope
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,  # torch (hooks, optimizer.step, backward)
)


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called right here that names the first frame outside
    nanscope and torch (the training loop's line), counted from the caller of this function."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back
        level += 1
    return level
