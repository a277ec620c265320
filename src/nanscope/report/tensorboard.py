"""nanscope's per-step values and events in a TensorBoard log, under the ``nanscope/`` prefix.

Scalars per completed step: ``nanscope/loss`` (the mean of the losses handed to ``backward()``, as they were:
before any filter such as HF's ``logging_nan_inf_filter``; NaN/Inf are written as they are),
``nanscope/grad_norm`` (before the script's or the framework's clipping), ``nanscope/lr``,
``nanscope/failed_steps`` and ``nanscope/skipped_steps`` (running counts). Events as text:
``nanscope/first_nonfinite`` (the report's headline), ``nanscope/interventions`` and
``nanscope/early_warnings``.

The writer is the framework's when there is one (Lightning's ``TensorBoardLogger.experiment``, HF's
``TensorBoardCallback.tb_writer``): one file per run directory, as TensorBoard expects. Otherwise nanscope
opens its own in the directory given, or in ``<dir>/nanscope`` when that directory already holds event files
(a second live writer in one run directory freezes the first one's updates in TensorBoard). Only global rank
zero writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nanscope.errors import UsageError
from nanscope.report.model import EarlyWarning, Intervention
from nanscope.report.text import early_warning_line, intervention_line

__all__ = ["TensorBoardSink", "own_writer"]


def _check_writer_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "writing TensorBoard logs needs the tensorboard package: pip install 'nanscope[tensorboard]'"
        ) from exc


def own_writer(directory: str | os.PathLike[str]) -> Callable[[], Any]:
    """A factory for nanscope's own writer in ``directory`` (or its ``nanscope`` child when the directory
    already holds a run's event files). Checked now; the directory is created at the first write."""
    _check_writer_available()
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--tensorboard {path}: exists and is not a directory; give a log directory")

    def make() -> Any:
        from torch.utils.tensorboard import SummaryWriter

        target = path / "nanscope" if path.is_dir() and any(path.glob("events.out.tfevents.*")) else path
        return SummaryWriter(log_dir=str(target))

    return make


class TensorBoardSink:
    """Writes through ``writer()`` (called at the first write); ``owned``: nanscope closes it at the end."""

    def __init__(self, writer: Callable[[], Any], *, owned: bool) -> None:
        self._factory = writer
        self._owned = owned
        self._writer: Any = None
        self._events = {"nanscope/interventions": 0, "nanscope/early_warnings": 0}
        self._first = False

    @property
    def wrote_first(self) -> bool:
        return self._first

    def _get(self) -> Any:
        if self._writer is None:
            self._writer = self._factory()
        return self._writer

    def step(self, step: int, values: dict[str, float | None]) -> None:
        writer = self._get()
        if writer is None:
            return
        for name, value in values.items():
            if value is not None:
                writer.add_scalar(f"nanscope/{name}", float(value), step)

    def events(
        self,
        step: int,
        *,
        first: str | None,
        interventions: Sequence[Intervention],
        warnings: Sequence[EarlyWarning],
    ) -> None:
        """The run's events so far (each sequence whole, as the run keeps it); only those not written yet are
        written. ``first``: the headline of the first non-finite, written once."""
        writer = self._get()
        if writer is None:
            return
        if first is not None and not self._first:
            self._first = True
            writer.add_text("nanscope/first_nonfinite", first, step)
        done = self._events
        for i in interventions[done["nanscope/interventions"] :]:
            writer.add_text("nanscope/interventions", intervention_line(i), step)
        for w in warnings[done["nanscope/early_warnings"] :]:
            writer.add_text("nanscope/early_warnings", early_warning_line(w), step)
        done["nanscope/interventions"] = max(done["nanscope/interventions"], len(interventions))
        done["nanscope/early_warnings"] = max(done["nanscope/early_warnings"], len(warnings))

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._owned:
            writer.close()
        else:
            writer.flush()
