"""What a log holds, as data: named series of (step, value) points, and the format they were read from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Curves", "Series"]


@dataclass(frozen=True, slots=True)
class Series:
    """One logged quantity. ``axis`` tells what ``steps`` count: optimizer steps or epochs."""

    name: str
    steps: tuple[float, ...]
    values: tuple[float, ...]
    axis: str = "step"

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class Curves:
    """Everything read from one log. ``notes`` say what was skipped (a truncated last line, say)."""

    format: str
    source: str
    series: tuple[Series, ...]
    notes: tuple[str, ...] = ()

    def get(self, name: str) -> Series | None:
        return next((s for s in self.series if s.name == name), None)
