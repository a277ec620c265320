"""nanscope for the Hugging Face ``Trainer``: :func:`watch` (recommended) or ``NanscopeCallback``.

>>> trainer = Trainer(model=model, args=args, train_dataset=data)   # doctest: +SKIP
>>> nanscope.integrations.transformers.watch(trainer, policy="skip")  # doctest: +SKIP
>>> trainer.train()                                                  # doctest: +SKIP

The callback attaches nanscope's watcher at ``on_train_begin`` to the model and the torch optimizer inside
accelerate's ``AcceleratedOptimizer``. The watching is the engine's, as under ``nanscope run``: the loss of
every micro-batch as handed to ``backward()`` (before ``logging_nan_inf_filter`` replaces a NaN by the
running average), the gradients at the end of backward (before HF's clipping, which runs on every step and
would spread one NaN over every gradient), and the samples behind the batch through the DataLoader's
indices (HF's sampler, column pruning and prefetch included). A stop raises :class:`nanscope.NonFiniteError`
out of ``trainer.train()`` before the failing update, so HF saves and evaluates no non-finite weights.

A callback gets no event when ``train()`` raises; :func:`watch` also wraps ``trainer.train`` so the watcher is
closed (hooks removed, report written) however it ends. The recovery state (policy counters, LR back-off,
quarantined samples) is saved in HF checkpoints (``trainer_state.json``) and restored on resume when
``TrainingArguments(restore_callback_states_from_checkpoint=True)``. With ``report_to="tensorboard"``,
:func:`watch` writes nanscope's scalars and events into HF's own writer under ``nanscope/``.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from typing import Any

from nanscope.integrations._session import Session
from nanscope.report.model import Report

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "nanscope.integrations.transformers needs transformers: pip install transformers"
    ) from exc

__all__ = ["NanscopeCallback", "watch"]


class NanscopeCallback(TrainerCallback, ExportableState):  # type: ignore[misc]
    """Watch ``Trainer.train``; ``options`` are :func:`nanscope.watch`'s (``policy``, ``report_path``, ...)."""

    _made: weakref.WeakSet[NanscopeCallback] = weakref.WeakSet()
    options: dict[str, Any]
    _restored: bool

    def __init__(self, *, restored: bool = False, **options: Any) -> None:
        self.tensorboard: Any = None  # a lazy source of HF's TensorBoardCallback writer (set by watch())
        if restored:
            # HF's resume replaces the callback with ``type(cb)(**state["args"])``: take the options (and the
            # writer) of the one the user made in this run, not those saved with the checkpoint
            users = [cb for cb in NanscopeCallback._made if not cb._restored]
            if users:
                options, self.tensorboard = dict(users[-1].options), users[-1].tensorboard
        self.options = options
        self._restored = restored
        self.nanscope_state: dict[str, Any] | None = None  # restored by HF from a checkpoint
        self._session = Session(options)
        NanscopeCallback._made.add(self)

    @property
    def report(self) -> Report | None:
        """The final report once training ended (None under ``nanscope run``, which reports itself)."""
        return self._session.report

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._session.end()  # a train() that raised earlier left its watcher open
        if self.nanscope_state:
            self._session.load_state_dict(self.nanscope_state)
        if getattr(args, "deepspeed", None):
            warnings.warn(
                "nanscope: under DeepSpeed the optimizer step and clipping run inside DeepSpeed, past torch's "
                "optimizer.step(): nanscope sees the loss and backward only (no update checks, no skip or "
                "rollback)",
                UserWarning,
                stacklevel=2,
            )
        tensorboard = (
            self.tensorboard if state is None or getattr(state, "is_world_process_zero", True) else None
        )
        self._session.begin(kwargs.get("model"), kwargs.get("optimizer"), tensorboard=tensorboard)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._session.end()

    def end(self, exc: BaseException | None = None) -> None:
        self._session.end(exc)

    def state(self) -> dict[str, Any]:
        return {"args": {"restored": True}, "attributes": {"nanscope_state": self._session.state_dict()}}


def watch(trainer: Any, **options: Any) -> NanscopeCallback:
    """Add a :class:`NanscopeCallback` to ``trainer`` and make ``trainer.train`` close its watcher however it
    ends (a stop raises :class:`nanscope.NonFiniteError` out of ``train()``)."""
    callback = NanscopeCallback(**options)
    boards = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "TensorBoardCallback"]
    if boards:  # HF's writer exists from its on_train_begin, which runs before ours
        callback.tensorboard = lambda: getattr(boards[0], "tb_writer", None)
    trainer.add_callback(callback)
    train = trainer.train

    def ours() -> list[NanscopeCallback]:  # a resume may have replaced the callback by a restored one
        return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NanscopeCallback)]

    @functools.wraps(train)
    def watched_train(*args: Any, **kwargs: Any) -> Any:
        try:
            return train(*args, **kwargs)
        except BaseException as exc:
            for cb in ours():
                cb.end(exc)
            raise
        finally:
            for cb in ours():
                cb.end()

    trainer.train = watched_train
    return callback
