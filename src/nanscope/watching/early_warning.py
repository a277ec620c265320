"""Warnings before the NaN: loss and grad-norm spikes against their running level, from values already read.

The detectors (:class:`~nanscope.detect.spikes.SpikeDetector`) are pure; this part keeps one per series,
records one :class:`~nanscope.report.model.EarlyWarning` per episode, names the layers whose gradient norm
rose fastest, and warns (``nanscope.SpikeWarning``) at most once per 50 steps and series.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from nanscope.detect.spikes import SpikeDetector, rising_layers
from nanscope.errors import SpikeWarning
from nanscope.report.model import EarlyWarning
from nanscope.watching.stack import user_stacklevel

__all__ = ["EarlyWarnings"]

_MAX_RECORDS = 100
_WARN_EVERY = 50  # steps between two spike warnings of the same series
_EPISODE = 10  # spikes of one series less than this many steps apart are one episode (one record)


class EarlyWarnings:
    def __init__(self, layer_norms: Callable[[], list[dict[str, float]]]) -> None:
        """``layer_norms()``: the last gradient reads as name -> norm, oldest first."""
        self._layer_norms = layer_norms
        self._spikes = {"loss": SpikeDetector(ratio=2.0), "grad_norm": SpikeDetector(ratio=4.0)}
        self._last_warned = {"loss": -_WARN_EVERY, "grad_norm": -_WARN_EVERY}
        self._episode: dict[str, int] = {}  # series -> step of its last spike
        self._records: list[EarlyWarning] = []

    def update(self, step: int, loss: float | None, norm: float | None) -> bool:
        """Feed one step's values; True when a spike began a new record."""
        recorded = len(self._records)
        for series, value in (("loss", loss), ("grad_norm", norm)):
            spike = self._spikes[series].update(value)
            if spike is not None:
                self._spiked(step, series, spike.value, spike.baseline, spike.score)
        return len(self._records) > recorded

    @property
    def items(self) -> Sequence[EarlyWarning]:
        """The spikes as recorded (no link to a non-finite step), without a copy."""
        return self._records

    def records(self, first_nonfinite: int | None) -> tuple[EarlyWarning, ...]:
        """The spikes, each linked to the first non-finite step when that followed within 1000 steps."""
        out = []
        for w in self._records:
            after = None
            if first_nonfinite is not None and 0 <= first_nonfinite - w.step <= 1000:
                after = first_nonfinite - w.step
            out.append(
                EarlyWarning(w.step, w.series, w.value, w.baseline, w.score, w.layers, nonfinite_after=after)
            )
        return tuple(out)

    def _spiked(self, step: int, series: Any, value: float, baseline: float, score: float) -> None:
        layers: tuple[str, ...] = ()
        reads = self._layer_norms()
        if len(reads) >= 2:
            now = reads[-1]
            before = [[norms.get(name, math.nan) for name in now] for norms in reads[:-1]]
            layers = rising_layers(list(now), list(now.values()), before)
        episode = self._episode.get(series)
        new_episode = episode is None or step - episode > _EPISODE  # not the next step of the last one
        if new_episode and len(self._records) < _MAX_RECORDS:
            self._records.append(EarlyWarning(step, series, value, baseline, score, layers))
        self._episode[series] = step
        if step - self._last_warned[series] >= _WARN_EVERY:
            self._last_warned[series] = step
            where = f"; rising fastest: {', '.join(layers)}" if layers else ""
            label = "loss" if series == "loss" else "grad norm"
            warnings.warn(
                f"nanscope: {label} spike at step {step}: {value:.4g} against a running level of "
                f"{baseline:.4g} (x{value / baseline:.3g}, score {score:.1f}){where}",
                SpikeWarning,
                stacklevel=user_stacklevel(),
            )
