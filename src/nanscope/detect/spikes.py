"""Early warning: a loss or grad-norm value far above its own recent level, before anything is non-finite.

:class:`SpikeDetector` keeps exponential moving statistics of ``log(value)``: its level (mean) and its
step-to-step noise (mean absolute change from one step to the next), O(1) per step, host floats only (the
watcher feeds it values it has already read, so there is no device sync). A value is a spike when it is at
least ``ratio`` times the running level *and* its distance from the level exceeds ``z`` times the noise; the
first ``warmup`` values only build the statistics. Measuring against the step-to-step noise (not the spread
around the level) makes a steady exponential blow-up stand out as clearly as a sudden jump: its level lags
behind it by many steps' worth of change. A spike enters the level clipped to the threshold, so one outlier
does not lift the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Spike", "SpikeDetector", "rising_layers"]


@dataclass(frozen=True, slots=True)
class Spike:
    value: float
    baseline: float
    score: float


class SpikeDetector:
    def __init__(
        self, ratio: float, z: float = 6.0, alpha: float = 0.95, warmup: int = 20, floor: float = 0.05
    ) -> None:
        self.ratio, self.z, self.alpha, self.warmup, self.floor = ratio, z, alpha, warmup, floor
        self._mean = 0.0
        self._last = 0.0
        self._dev = 0.0
        self._seen = 0

    def update(self, value: float | None) -> Spike | None:
        """Feed one step's value; returns the spike it is, if it is one. Non-positive, non-finite or
        missing values are ignored (the non-finite check reports those)."""
        if value is None or not math.isfinite(value) or value <= 0:
            return None
        x = math.log(value)
        self._seen += 1
        if self._seen == 1:
            self._mean = self._last = x
            return None
        dev = max(self._dev, self.floor)
        score = (x - self._mean) / dev
        spike = None
        if self._seen > self.warmup and score > self.z and x - self._mean >= math.log(self.ratio):
            spike = Spike(value, math.exp(self._mean), score)
        a = self.alpha
        self._dev = a * self._dev + (1 - a) * abs(x - self._last)
        self._last = x
        self._mean = a * self._mean + (1 - a) * (min(x, self._mean + self.z * dev) if spike else x)
        return spike


def rising_layers(
    names: Sequence[str], now: Sequence[float], before: Sequence[Sequence[float]], top: int = 3
) -> tuple[str, ...]:
    """The ``top`` names whose value now is the largest multiple of their median over ``before`` (earlier
    steps, aligned with ``names``), among those that rose at least 2x."""
    ranked = []
    for i, name in enumerate(names):
        past = sorted(v[i] for v in before if i < len(v) and math.isfinite(v[i]) and v[i] > 0)
        if not past or not math.isfinite(now[i]):
            continue
        median = past[len(past) // 2]
        if now[i] >= 2 * median:
            ranked.append((now[i] / median, name))
    ranked.sort(reverse=True)
    return tuple(name for _, name in ranked[:top])
