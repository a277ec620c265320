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

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

__all__ = ["Columns", "GroupReader"]

_NUMBERS = frozenset({float, int})
_FLAGS = frozenset({bool, str, type(None)})

Groups = Sequence[Mapping[str, Any]]


def _getter(keys: list[str]) -> Callable[[Mapping[str, Any]], Any]:
    """A group's values of ``keys``: a tuple for several keys, the bare value for one (``len`` for none: never
    called, the groups are not read for it)."""
    return operator.itemgetter(*keys) if keys else len


@dataclass(frozen=True, slots=True)
class Columns:
    """Which keys of the param groups hold what, the same in every group."""

    widths: tuple[int, ...]  # each group's number of keys, "params" included
    numbers: tuple[str, ...]
    pairs: tuple[str, ...]
    flags: tuple[str, ...]
    others: tuple[str, ...]  # anything else: the element-wise scan every step
    _get: tuple[Callable[[Mapping[str, Any]], Any], ...]  # the getters of numbers, pairs and flags
    _many: tuple[bool, ...]  # whether each getter gives a tuple (several keys)

    @staticmethod
    def of(groups: Groups) -> Columns:
        widths = tuple(map(len, groups))
        if any(g.keys() != groups[0].keys() for g in groups):  # groups with different keys: always scanned
            return Columns(widths, (), (), (), ("*",), (len, len, len), (False, False, False))
        numbers, pairs, flags, others = [], [], [], []
        for key in groups[0] if groups else ():
            if key == "params":
                continue
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
        kept = (numbers, pairs, flags)
        return Columns(
            widths,
            tuple(numbers),
            tuple(pairs),
            tuple(flags),
            tuple(others),
            tuple(map(_getter, kept)),
            tuple(len(keys) > 1 for keys in kept),
        )

    def finite(self, groups: Groups) -> bool | None:
        """True: every number in the groups is finite; False: some value needs the element-wise scan (a
        non-finite number, a key holding something else); None: the groups no longer fit these columns."""
        if tuple(map(len, groups)) != self.widths:
            return None
        (get_numbers, get_pairs, get_flags), (many_numbers, many_pairs, many_flags) = self._get, self._many
        try:  # (C-level maps over the groups, written out: a helper would be a Python call each)
            numbers: Iterator[Any] = map(get_numbers, groups if self.numbers else ())
            if many_numbers:
                numbers = chain.from_iterable(numbers)
            elements = chain.from_iterable(map(get_pairs, groups if self.pairs else ()))
            if many_pairs:
                elements = chain.from_iterable(elements)
            flags: Iterator[Any] = map(get_flags, groups if self.flags else ())
            if many_flags:
                flags = chain.from_iterable(flags)
            # one sum over every number: NaN or Inf anywhere makes it non-finite (and so does an overflow of
            # finite numbers near 1e308, which only sends the groups to the scan)
            total = sum(chain(numbers, elements), 0.0)
            kinds = set(map(type, flags))
        except (KeyError, TypeError):  # a key replaced by another, a number by a string, a pair by a number
            return None
        if type(total) is not float or not kinds <= _FLAGS:  # (a tensor in a column of numbers: the scan)
            return None
        return not self.others and total - total == 0.0  # (inf - inf and nan - nan are nan)


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
