"""Samples kept out of training: which dataset indices, why, and the file that carries them to later runs.

Samples are tied to a dataset by its type name and length (a file cannot hold the Python object), so a later
``nanscope run --quarantine FILE`` excludes them from every DataLoader over a dataset of the same type and
size; loaders over other datasets (validation sets, say) are left alone. The file is JSON
(``nanscope.quarantine/1``) and written atomically (temporary file + rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanscope._atomic import atomic_write_text
from nanscope._rank import is_rank_zero
from nanscope.errors import UsageError

__all__ = ["Quarantine", "QuarantinedSample"]

SCHEMA = "nanscope.quarantine/1"


@dataclass(frozen=True, slots=True)
class QuarantinedSample:
    index: int
    reason: str
    step: int | None = None


def _key(dataset: Any) -> tuple[str, int | None]:
    try:
        length: int | None = len(dataset)
    except TypeError:
        length = None
    return type(dataset).__name__, length


class Quarantine:
    """The excluded samples of one run, per dataset; optionally persisted to ``path`` (loaded if it exists)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._samples: dict[tuple[str, int | None], dict[int, QuarantinedSample]] = {}
        self._cache: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            self.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"cannot read the quarantine file {path}: {exc}. It must be a {SCHEMA} file written by "
                "nanscope; fix or remove it (nothing was changed)."
            ) from exc

    def excluded(self, dataset: Any) -> frozenset[int]:
        """The indices to keep out of batches drawn from ``dataset``."""
        try:
            return self._cache[dataset]
        except (KeyError, TypeError):
            pass
        found = frozenset(self._samples.get(_key(dataset), {}))
        with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed each time
            self._cache[dataset] = found
        return found

    def add(self, dataset: Any, indices: tuple[int, ...], reason: str, step: int) -> tuple[int, ...]:
        """Exclude ``indices`` of ``dataset`` from now on; returns those that were not excluded yet."""
        known = self._samples.setdefault(_key(dataset), {})
        new = tuple(i for i in indices if i not in known)
        for i in new:
            known[i] = QuarantinedSample(i, reason, step)
        if new:
            self._cache = weakref.WeakKeyDictionary()
            if self.path is not None and is_rank_zero():  # the ranks quarantine together: rank 0 writes
                self.save(self.path)
        return new

    def samples(self) -> tuple[QuarantinedSample, ...]:
        return tuple(s for per in self._samples.values() for s in sorted(per.values(), key=lambda s: s.index))

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Add the samples of a :meth:`state_dict` (a quarantine file's content) to those excluded."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        for entry in data["datasets"]:
            key = (str(entry["dataset"]), entry.get("length"))
            for s in entry["samples"]:
                self._samples.setdefault(key, {})[int(s["index"])] = QuarantinedSample(
                    int(s["index"]), str(s.get("reason", "")), s.get("step")
                )
        self._cache = weakref.WeakKeyDictionary()

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.state_dict(), indent=1))

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "datasets": [
                {
                    "dataset": name,
                    "length": length,
                    "samples": [
                        {"index": s.index, "reason": s.reason, "step": s.step}
                        for s in sorted(per.values(), key=lambda s: s.index)
                    ],
                }
                for (name, length), per in self._samples.items()
            ],
        }
