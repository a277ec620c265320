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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

__all__ = ["Columns", "GroupReader"]

_NUMBERS = frozenset({float, int})
_FLAGS = frozenset({bool, str, type(None)})

Groups = Sequence[Mapping[str, Any]]


def _getter(keys: tuple[str, ...]) -> Callable[[Groups], Iterable[Any]]:
    """The values of ``keys`` in every group, in one flat iterable (C-level maps)."""
    if not keys:
        return lambda groups: ()
    if len(keys) == 1:
        return lambda groups: map(operator.itemgetter(keys[0]), groups)
    get = operator.itemgetter(*keys)  # (a tuple per group)
    return lambda groups: chain.from_iterable(map(get, groups))


@dataclass(frozen=True, slots=True)
class Columns:
    """Which keys of the param groups hold what, the same in every group."""

    widths: tuple[int, ...]  # each group's number of keys, "params" included
    numbers: tuple[str, ...]
    pairs: tuple[str, ...]
    flags: tuple[str, ...]
    others: tuple[str, ...]  # anything else: the element-wise scan every step
    _numbers: Callable[[Groups], Iterable[Any]]
    _pairs: Callable[[Groups], Iterable[Any]]
    _flags: Callable[[Groups], Iterable[Any]]

    @staticmethod
    def of(groups: Groups) -> Columns:
        widths = tuple(map(len, groups))
        keys = [k for k in (groups[0] if groups else ()) if k != "params"]
        if any(g.keys() != groups[0].keys() for g in groups):  # groups with different keys: always scanned
            return Columns(widths, (), (), (), ("*",), _getter(()), _getter(()), _getter(()))
        numbers, pairs, flags, others = [], [], [], []
        for key in keys:
            values = [g[key] for g in groups]
            kinds = set(map(type, values))
            if kinds <= _NUMBERS:
                numbers.append(key)
            elif kinds <= _FLAGS:
                flags.append(key)
            elif kinds == {tuple} and set(map(type, chain.from_iterable(values))) <= _NUMBERS:
                pairs.append(key)
            else:
                others.append(key)
        return Columns(
            widths,
            tuple(numbers),
            tuple(pairs),
            tuple(flags),
            tuple(others),
            _getter(tuple(numbers)),
            _getter(tuple(pairs)),
            _getter(tuple(flags)),
        )

    def finite(self, groups: Groups) -> bool | None:
        """True: every number in the groups is finite; False: some value needs the element-wise scan (a
        non-finite number, a key holding something else); None: the groups no longer fit these columns."""
        if tuple(map(len, groups)) != self.widths:
            return None
        try:
            numbers = list(chain(self._numbers(groups), chain.from_iterable(self._pairs(groups))))
            kinds, flags = set(map(type, numbers)), set(map(type, self._flags(groups)))
        except (KeyError, TypeError):  # a key replaced by another, a pair by a number
            return None
        if not (kinds <= _NUMBERS and flags <= _FLAGS):
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
