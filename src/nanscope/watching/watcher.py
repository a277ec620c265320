"""The watcher: the public face of the engine — validation, lifecycle, and the hooks that produce its events.

A :class:`Watcher` attaches to a training run (module forward hooks, optimizer step hooks, the global patches
of :mod:`nanscope.watching.patches`), turns what they see into :class:`~nanscope.watching.events.Events` for
the :class:`~nanscope.watching.engine.Engine`, and detaches everything on :meth:`Watcher.close`. Every event
passes through one guard: an internal error becomes an :class:`~nanscope.errors.InternalErrorWarning` and the
watcher stops watching (state ``BROKEN``); training goes on.

Lifecycle: ``OPEN`` (hooks attached) -> ``CLOSED`` (everything detached, final report built); ``BROKEN`` is an
open watcher that stopped watching after an internal error. A closed watcher cannot be reopened.
"""

from __future__ import annotations

import contextlib
import enum
import os
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nanscope._rank import is_rank_zero
from nanscope.errors import InternalErrorWarning, NonFiniteError, UsageError
from nanscope.recover.policy import Policy, make_policy
from nanscope.report import json as report_json
from nanscope.report.model import Report
from nanscope.report.tensorboard import TensorBoardSink, own_writer
from nanscope.watching import patches
from nanscope.watching.discovery import normalize_models
from nanscope.watching.engine import Engine
from nanscope.watching.events import MISSING
from nanscope.watching.hooks import Hooks, unwrap_optimizer

__all__ = ["Watcher", "WatcherState", "watch"]


class WatcherState(enum.Enum):
    OPEN = "open"
    BROKEN = "broken"  # open, but stopped watching after an internal error
    CLOSED = "closed"


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    single = isinstance(optimizer, torch.optim.Optimizer) or hasattr(optimizer, "param_groups")
    items = [unwrap_optimizer(o) for o in ([optimizer] if single else list(optimizer))]
    wrong = [type(o).__name__ for o in items if not isinstance(o, torch.optim.Optimizer)]
    if wrong:
        raise UsageError(
            f"optimizer must be a torch.optim.Optimizer (or a framework wrapper of one) or a list of them; got "
            f"{', '.join(wrong)}. Pass the optimizer(s) you call .step() on."
        )
    return items


def _event(name: str, default: Any = None) -> Callable[..., Any]:
    """The engine's event ``name`` behind the watcher's guard (:meth:`Watcher._guard`, inlined: one Python
    frame between torch and the engine on the hot path instead of two)."""

    def guarded(self: _Guarded, *args: Any) -> Any:
        w = self._w
        if w._state is not WatcherState.OPEN or w._engine.triage.reruns.replaying:  # (Watcher._live, inlined)
            return default
        try:
            return getattr(w._engine, name)(*args)
        except NonFiniteError:
            raise
        except Exception as exc:  # an internal failure must never kill training
            w._broke(exc)
            return default

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


class _Guarded:
    """The engine's events behind the watcher's guard: what the patches and hooks call."""

    def __init__(self, watcher: Watcher) -> None:
        self._w = watcher

    optimizer_created = _event("optimizer_created")
    batch_drawn = _event("batch_drawn")
    batch_to_replay = _event("batch_to_replay", MISSING)
    excluded_indices = _event("excluded_indices", frozenset())
    forward_started = _event("forward_started")
    forward_ended = _event("forward_ended")
    backward_started = _event("backward_started")
    backward_ended = _event("backward_ended")
    clipped = _event("clipped")
    before_update = _event("before_update")
    after_update = _event("after_update")
    update_skipped = _event("update_skipped")


class Watcher:
    """Watches one training run; :func:`nanscope.watch` is the same call.

    ``policy``: ``"stop"`` raises :class:`nanscope.NonFiniteError` (with ``.report``) before the failing update;
    ``"warn"`` warns once and lets training go on; ``skip``/``rollback`` (+``quarantine``, ``clip``) recover.
    ``optimizer=None`` discovers optimizers as they are created or step (and, with none at all, watches by
    ``backward()`` calls). ``track_data`` maps DataLoader batches to dataset indices. ``eager`` reads device
    values at once (a host sync per step on CUDA) instead of a few steps later. ``report_path`` writes the
    JSON report there. ``step_fn(batch)`` runs forward, loss and backward for one batch (no optimizer step):
    with it, a NaN whose cause is not in the data, weights or hyperparameters is localized by replaying the
    failing step under op tracing at once; without it, the script's own loop replays it (one more iteration).
    ``quarantine`` is a file of samples to exclude (and where new culprits are added). ``tensorboard`` (a log
    directory, or the framework's ``SummaryWriter``) receives nanscope's per-step scalars and events under
    ``nanscope/`` (:mod:`nanscope.report.tensorboard`). ``scan_seconds`` bounds the scan of the whole dataset
    after a ``nonfinite_input`` diagnosis (every dirty sample is named; 0 turns it off).
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
        optimizer: Any = None,
        *,
        policy: str | Policy = "stop",
        history: int = 2048,
        report_path: str | None = None,
        track_data: bool = True,
        eager: bool = False,
        step_fn: Callable[[Any], object] | None = None,
        quarantine: str | None = None,
        tensorboard: Any = None,
        scan_seconds: float = 30.0,
    ) -> None:
        problems = []
        chosen: Policy | None = None
        try:
            chosen = make_policy(policy)
        except UsageError as exc:
            problems.append(str(exc))
        try:
            optimizers = _optimizers(optimizer)
        except UsageError as exc:
            problems.append(str(exc))
            optimizers = []
        if step_fn is not None and not callable(step_fn):
            problems.append(f"step_fn must be callable as step_fn(batch); got {type(step_fn).__name__}")
        if (
            isinstance(scan_seconds, bool)
            or not isinstance(scan_seconds, (int, float))
            or not scan_seconds >= 0
        ):
            problems.append(
                f"scan_seconds must be a number of seconds >= 0 (0: no dataset scan); got {scan_seconds!r}"
            )
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            problems.append(f"history must be a positive int (steps kept); got {history!r}")
        models: dict[str, nn.Module] = {}
        try:
            models = normalize_models(model)
            if any(not isinstance(m, nn.Module) for m in models.values()):
                problems.append("model must be an nn.Module, a list of them or a dict name -> nn.Module")
        except TypeError:
            problems.append(
                f"model must be an nn.Module, a list of them or a dict; got {type(model).__name__}"
            )
        sink: TensorBoardSink | None = None
        try:
            sink = _sink(tensorboard)
        except UsageError as exc:
            problems.append(str(exc))
        if problems or chosen is None:
            raise UsageError("nanscope.watch(): " + "; ".join(problems))
        self._state = WatcherState.OPEN
        self._discover = optimizer is None
        self._report_path = report_path
        self._final: Report | None = None
        self._events = _Guarded(self)
        self._hooks = Hooks(self._events, self._live)
        self._engine = Engine(
            models=models,
            policy=chosen,
            history=history,
            report_path=report_path,
            track_data=track_data,
            eager=eager,
            step_fn=step_fn,
            quarantine=quarantine,
            discover=self._discover,
            on_new_models=self._hooks.models,
            on_unseen_forward=self._hooks.deepen,
            scan_seconds=float(scan_seconds),
        )
        self._engine.tensorboard = sink
        patches.activate(self._events)
        _OPEN.append(self)
        try:
            self._hooks.models(list(models.values()))
            for opt in optimizers:
                if self._engine.track(opt)[1]:
                    self._hooks.optimizer(opt)
            if self._discover:
                self._hooks.every_optimizer()
        except BaseException:
            self._detach()
            raise

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Watcher:
        if self._state is WatcherState.CLOSED:
            raise UsageError(
                "this watcher is closed; a closed watcher cannot be reopened: call nanscope.watch(...) again"
            )
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None and not isinstance(exc, NonFiniteError):
            self.ended_by(exc)
        self.close()

    @property
    def state(self) -> WatcherState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is WatcherState.CLOSED

    @property
    def stopped(self) -> bool:
        """True once the ``stop`` policy raised :class:`NonFiniteError` (even if the script caught it)."""
        return self._engine.verdicts.stopped

    def ended_by(self, exc: BaseException) -> None:
        """Record that the run ended in the script's own exception (or an interrupt) for the report."""
        self._engine.verdicts.ended_by(exc)

    def close(self) -> Report:
        """Detach everything, read any pending device values, and return the final report."""
        if self._final is not None:
            return self._final
        engine = self._engine
        try:
            if self._state is WatcherState.OPEN:
                with contextlib.suppress(NonFiniteError):  # closing reports; it does not raise for the policy
                    engine.verdicts.abandon_refeed()
                self._guard(engine.reader.flush)
                with contextlib.suppress(NonFiniteError):
                    engine.verdicts.conclude_alone()
                self._guard(engine.close_log)
        finally:
            self._detach()
            self._state = WatcherState.CLOSED
            self._final = engine.report()
            engine.drop_references()
            engine.recoverer.close()
            if self._report_path and is_rank_zero():
                report_json.write(self._final, self._report_path)
        return self._final

    def log_to(self, tensorboard: Any) -> None:
        """Write nanscope's scalars and events to TensorBoard from now on (see :class:`Watcher`'s
        ``tensorboard``); a writer already in use is kept."""
        if self._engine.tensorboard is None:
            self._engine.tensorboard = _sink(tensorboard)

    def _detach(self) -> None:
        sink, self._engine.tensorboard = self._engine.tensorboard, None
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.close()
        self._hooks.remove()
        patches.deactivate(self._events)
        if self in _OPEN:
            _OPEN.remove(self)

    def _live(self) -> bool:
        return self._state is WatcherState.OPEN and not self._engine.triage.reruns.replaying

    def _guard(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """``fn(*args)``, or ``default`` when not watching (closed, broken, replaying) or when it failed."""
        if not self._live():
            return default
        try:
            return fn(*args)
        except NonFiniteError:
            raise
        except Exception as exc:  # an internal failure must never kill training
            self._broke(exc)
            return default

    def _broke(self, exc: Exception) -> None:
        """Stop watching after an internal error: a warning, and training goes on."""
        self._state = WatcherState.BROKEN
        detail = "".join(traceback.format_exception(exc)) if os.environ.get("NANSCOPE_DEBUG") else repr(exc)
        warnings.warn(
            f"nanscope stopped watching after an internal error ({detail}); training continues unwatched. "
            "Set NANSCOPE_DEBUG=1 for the full traceback and please report it.",
            InternalErrorWarning,
            stacklevel=3,
        )

    # ---------------------------------------------------------------- public helpers
    def observe_batch(self, batch: Any, indices: Sequence[int] | None = None, source: str = "batch") -> None:
        """Tell the watcher about a batch that did not come from a DataLoader (custom loops).

        ``indices`` are the dataset indices of the batch rows, so a report can name the culprit samples.
        """
        self._guard(self._engine.observe_batch, batch, indices, source)

    def state_dict(self) -> dict[str, Any]:
        """The recovery state a resumed run needs (policy counters, LR back-off, quarantined samples), as
        JSON-safe values: store it in your checkpoint and hand it to :meth:`load_state_dict` on resume. The
        framework callbacks do this for you."""
        return {"schema": STATE_SCHEMA, "recovery": self._engine.recoverer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("schema") != STATE_SCHEMA:
            got = state.get("schema") if isinstance(state, Mapping) else type(state).__name__
            raise UsageError(
                f"load_state_dict() needs a {STATE_SCHEMA} dict from Watcher.state_dict(); got {got!r}. "
                "Nothing was changed."
            )
        try:
            self._engine.recoverer.load_state_dict(dict(state["recovery"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"load_state_dict(): the saved nanscope state is damaged ({exc!r})") from exc

    @property
    def step(self) -> int:
        """Index of the current iteration: ``optimizer.step()`` calls completed (the minimum over optimizers)."""
        return self._engine.step()

    def report(self) -> Report:
        """The report as of now (healthy so far, or the diagnosis of the first non-finite value)."""
        return self._final if self._final is not None else self._engine.report()


def _sink(tensorboard: Any) -> TensorBoardSink | None:
    """A writer object (``add_scalar``/``add_text``: the framework's) is used as it is; a directory gets
    nanscope's own writer. Off on every rank but global rank zero."""
    if tensorboard is None or not is_rank_zero():
        return None
    if hasattr(tensorboard, "add_scalar") and hasattr(tensorboard, "add_text"):
        return TensorBoardSink(lambda: tensorboard, owned=False)
    if callable(tensorboard):  # a lazy source of the framework's writer (it may not exist yet)
        return TensorBoardSink(tensorboard, owned=False)
    if isinstance(tensorboard, (str, os.PathLike)):
        return TensorBoardSink(own_writer(tensorboard), owned=True)
    raise UsageError(
        f"tensorboard must be a log directory or a SummaryWriter-like object; got {type(tensorboard).__name__}"
    )


STATE_SCHEMA = "nanscope.state/1"
_OPEN: list[Watcher] = []  # watchers attached now, oldest first (``nanscope run``'s is the first)


def open_watchers() -> tuple[Watcher, ...]:
    """The watchers attached now: an integration uses ``nanscope run``'s instead of attaching a second."""
    return tuple(_OPEN)


def watch(
    model: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None,
    optimizer: Any,
    **options: Any,
) -> Watcher:
    """Watch a training run; use as a context manager or call ``.close()``. Same arguments as :class:`Watcher`.

    >>> with nanscope.watch(model, optimizer) as w:        # doctest: +SKIP
    ...     for x, y in loader:
    ...         loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
    """
    return Watcher(model, optimizer, **options)
