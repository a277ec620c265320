"""Culprit samples by counterfactual re-runs: which rows of the failing batch make the failure appear.

The op tracer names the rows of the origin op's output that went bad, which works while that output keeps
the batch as its first dimension. When a reshape merged the batch with heads or time, or when the failure is
a property of several samples together, the rows say nothing. Re-running the failing computation on parts of
the batch does: a sample is a culprit when the failure appears with it and vanishes without it.

:func:`find_culprits` is the search, over an oracle ``fails(rows) -> bool | None`` that re-runs the
computation on those batch rows (``None``: that part could not be run, e.g. a shape the model rejects). It
bisects: a part that fails is halved and both halves are tried, down to single rows; then it confirms that
the culprits alone reproduce the failure and that the batch without them is finite. It stops when the rows
re-run would exceed ``budget`` (in rows; 4x the batch: a single culprit costs 2x the batch to find and 1x to
confirm, two culprits about 3.5x). When the whole batch fails but no half of it does, the failure needs the samples together
(statistics over the batch), and that is the finding. :func:`take_rows` cuts a batch (tensors, nested in
tuples, lists and dicts) to some of its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Counterfactual", "find_culprits", "take_rows"]


@dataclass(frozen=True, slots=True)
class Counterfactual:
    """What the re-runs on parts of the batch showed.

    ``culprits``: batch rows (positions) whose presence makes the failure appear; ``together``: the failure
    needs several rows at once (no part of the batch fails alone); ``confirmed``: the culprits alone fail and
    the batch without them is finite; ``complete``: the search ran to its end within the budget.
    """

    culprits: tuple[int, ...]
    together: bool
    confirmed: bool
    complete: bool
    runs: int
    rows_run: int
    size: int

    def text(self, names: Sequence[int] | None = None) -> str:
        """The finding in words; ``names`` maps rows to dataset indices."""
        label = "sample" if names is not None else "batch row"
        shown = [names[r] if names is not None else r for r in self.culprits[:20]]
        cost = f"({self.runs} re-runs of {self.rows_run} rows in all, batch of {self.size})"
        if self.together:
            return f"no part of the batch fails alone; the failure needs the samples together {cost}"
        if not self.culprits:
            return f"the re-runs on parts of the batch did not isolate a culprit {cost}"
        several = len(self.culprits) > 1
        who = f"{label}s {', '.join(map(str, shown))}" if several else f"{label} {shown[0]}"
        if len(self.culprits) == self.size:
            return f"every sample of the batch fails on its own {cost}"
        if self.confirmed:
            alone = "alone reproduce" if several else "alone reproduces"
            return (
                f"{who} {alone} the failure; the batch without {'them' if several else 'it'} is finite {cost}"
            )
        limit = "" if self.complete else "; the search stopped at its budget"
        return f"{who} {'fail' if several else 'fails'} without the rest of the batch{limit} {cost}"


def find_culprits(
    fails: Callable[[list[int]], bool | None], size: int, budget: int | None = None
) -> Counterfactual | None:
    """Bisect the ``size`` rows of a batch that is known to fail; ``None`` when a re-run could not be made."""
    if size < 2:
        return None
    budget = 4 * size if budget is None else budget
    runs = rows_run = 0
    culprits: list[int] = []
    exhausted = False
    broken = False
    together = False

    def ask(rows: list[int]) -> bool | None:
        nonlocal runs, rows_run, exhausted, broken
        if rows_run + len(rows) > budget:
            exhausted = True
            return None
        runs += 1
        rows_run += len(rows)
        answer = fails(rows)
        if answer is None:
            broken = True
        return answer

    def search(rows: list[int]) -> None:
        nonlocal together
        if len(rows) == 1:
            culprits.append(rows[0])
            return
        half = len(rows) // 2
        parts = [rows[:half], rows[half:]]
        answers = [ask(part) for part in parts]
        if broken or exhausted:
            return
        for part, failed in zip(parts, answers, strict=True):
            if failed:
                search(part)
        if not any(answers):  # it fails, no half of it does: these rows fail only together
            if len(rows) == size:
                together = True
            else:
                culprits.extend(rows)

    search(list(range(size)))
    if broken:
        return None
    culprits.sort()
    confirmed = False
    if culprits and not exhausted and len(culprits) < size:
        rest = [r for r in range(size) if r not in set(culprits)]
        alone, without = ask(culprits), ask(rest)
        confirmed = bool(alone) and without is False
        if broken:
            return None
    return Counterfactual(
        culprits=tuple(culprits),
        together=together,
        confirmed=confirmed,
        complete=not exhausted,
        runs=runs,
        rows_run=rows_run,
        size=size,
    )


def take_rows(batch: Any, rows: Sequence[int], size: int) -> Any:
    """``batch`` cut to ``rows``: every tensor whose first dimension is the batch (``size``) is indexed;
    everything else is kept as it is."""
    index: torch.Tensor | None = None

    def cut(value: Any, depth: int = 0) -> Any:
        nonlocal index
        if isinstance(value, torch.Tensor):
            if value.dim() >= 1 and value.shape[0] == size:
                if index is None or index.device != value.device:
                    index = torch.tensor(list(rows), dtype=torch.long, device=value.device)
                return value.index_select(0, index)
            return value
        if depth > 6:
            return value
        if isinstance(value, Mapping):
            items = {k: cut(v, depth + 1) for k, v in value.items()}
            try:
                return type(value)(items)  # type: ignore[call-arg]
            except TypeError:
                return items
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(cut(v, depth + 1) for v in value))
        if isinstance(value, (list, tuple)):
            return type(value)(cut(v, depth + 1) for v in value)
        return value

    return cut(batch)
