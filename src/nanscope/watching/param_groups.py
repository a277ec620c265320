"""Every number of every param group checked each step, at a cost that does not grow with the groups.

Schedulers write a learning rate into every group each step and a run may have dozens of groups (one per
layer); the always-on check reads every hyperparameter of every group before each update. Read group by group
and key by key, that is ~25 Python-level calls a group for AdamW's eleven entries. Here the values are gathered
column by column instead, ``operator.itemgetter`` mapped over the groups (C-level): a fixed number of calls.

:class:`Columns` knows which keys hold plain numbers, pairs of plain numbers (Adam's betas) and flags (booleans,
strings, None) in every group; it is made from the groups and made again when their keys or the kinds of their
values change. A key holding anything else (a tensor learning rate, a list, a key only some groups have) leaves
the groups to the element-wise scan of :func:`nanscope.detect.scan.nonfinite_hyperparameters` while it does,
as does a number that is not finite (the scan names it).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

__all__ = ["Columns", "GroupReader"]

_NUMBERS = frozenset({float, int})
_FLAGS = frozenset({bool, str, type(None)})

Groups = Sequence[Mapping[str, Any]]


def _row(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A group's values of ``keys``, as a tuple."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    return lambda group: tuple(group[k] for k in keys)  # (itemgetter of one key gives the bare value)


@dataclass(frozen=True, slots=True)
class Columns:
    """Which keys of the param groups hold what, the same in every group."""

    widths: tuple[int, ...]  # each group's number of keys, "params" included
    keys: tuple[str, ...]  # the keys holding numbers, then those holding pairs, then those holding flags
    numbers: int  # how many of ``keys`` hold numbers
    pairs: int  # ... and pairs
    others: tuple[str, ...]  # the keys holding anything else: the element-wise scan every step
    row: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # a group's values of ``keys``

    @staticmethod
    def of(groups: Groups) -> Columns:
        widths = tuple(map(len, groups))
        if any(g.keys() != groups[0].keys() for g in groups):  # groups with different keys: always scanned
            return Columns(widths, (), 0, 0, ("*",), _row(()))
        numbers, pairs, flags, others = [], [], [], []
        for key in groups[0] if groups else ():
            values = [g[key] for g in groups]
            kinds = set(map(type, values))
            if key == "params":
                continue
            if kinds <= _NUMBERS:
                numbers.append(key)
            elif kinds <= _FLAGS:
                flags.append(key)
            elif kinds == {tuple} and set(map(type, chain.from_iterable(values))) <= _NUMBERS:
                pairs.append(key)
            else:
                others.append(key)
        keys = (*numbers, *pairs, *flags)
        return Columns(widths, keys, len(numbers), len(pairs), tuple(others), _row(keys))

    def finite(self, groups: Groups) -> bool | None:
        """True: every number in the groups is finite; False: some value needs the element-wise scan (a
        non-finite number, a key holding something else); None: the groups no longer fit these columns."""
        if tuple(map(len, groups)) != self.widths:
            return None
        n, p = self.numbers, self.numbers + self.pairs
        try:
            columns = list(zip(*map(self.row, groups), strict=True))  # (C-level: a tuple per key)
            numbers = [
                *chain.from_iterable(columns[:n]),
                *chain.from_iterable(chain.from_iterable(columns[n:p])),
            ]
        except (KeyError, TypeError):  # a key replaced by another, a pair by a number
            return None
        if not (
            set(map(type, numbers)) <= _NUMBERS and set(map(type, chain.from_iterable(columns[p:]))) <= _FLAGS
        ):
            return None
        return not self.others and all(map(math.isfinite, numbers))


class GroupReader:
    """One optimizer's param groups, checked through :class:`Columns` made again when they no longer fit."""

    __slots__ = ("_columns",)

    def __init__(self) -> None:
        self._columns: Columns | None = None

    def finite(self, groups: Groups) -> bool:
        """Whether every number of every group is a finite host number (False: scan them element-wise)."""
        columns = self._columns
        # (columns with other values are made again each step: those groups pay for the scan anyway)
        verdict = columns.finite(groups) if columns is not None and not columns.others else None
        if verdict is None:
            self._columns = columns = Columns.of(groups)
            verdict = columns.finite(groups)
        return bool(verdict)
