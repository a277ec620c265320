"""Adaptive gradient clipping from the run's own grad-norm history (the ZClip rule).

:class:`ZClip` is pure running statistics: exponential moving mean and variance of the global grad norm.
After ``warmup`` steps the threshold is ``mean + z * std``; a norm above it is clipped to it, and the clipped
value (not the outlier) enters the statistics. The watcher scales the gradients on the device.
"""

from __future__ import annotations

import math

from nanscope.recover.policy import ClipOptions

__all__ = ["ZClip"]


class ZClip:
    def __init__(self, options: ClipOptions) -> None:
        self.options = options
        self._mean = 0.0
        self._var = 0.0
        self._seen = 0

    @property
    def threshold(self) -> float | None:
        """The norm above which gradients are clipped now (``None`` during warm-up)."""
        if self._seen < self.options.warmup:
            return None
        return self._mean + self.options.z * math.sqrt(self._var)

    def update(self, norm: float) -> bool:
        """Feed one step's (unclipped) global grad norm; returns whether it was above the threshold."""
        if not math.isfinite(norm):
            return False
        limit = self.threshold
        clipped = limit is not None and norm > limit
        value = limit if clipped and limit is not None else norm
        self._seen += 1
        if self._seen == 1:
            self._mean = value
            return clipped
        a = self.options.alpha
        delta = value - self._mean
        self._mean += (1 - a) * delta
        self._var = a * (self._var + (1 - a) * delta * delta)
        return clipped
