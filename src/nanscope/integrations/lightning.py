"""``NanscopeCallback`` for PyTorch Lightning (``lightning.pytorch`` and the standalone ``pytorch_lightning``).

>>> trainer = L.Trainer(callbacks=[NanscopeCallback(policy="quarantine+rollback")])   # doctest: +SKIP

The callback attaches nanscope's watcher at ``on_fit_start`` to the LightningModule and the raw optimizers
(``trainer.optimizers``) and closes it when the fit ends or raises. The watching itself is the engine's, as
under ``nanscope run``: the step is checked inside Lightning's closure (forward, backward and clipping run
inside ``optimizer.step(closure)``), gradients before Lightning's clipping, and the DataLoader's indices name
the samples. A stop raises :class:`nanscope.NonFiniteError` out of ``Trainer.fit`` before the failing update,
so no checkpoint or validation of non-finite weights follows (Lightning's ``should_stop`` would be ignored
before ``min_steps`` and would save ``last.ckpt``). The recovery state (policy counters, LR back-off,
quarantined samples) is saved in Lightning checkpoints and restored on resume (``ckpt_path=``). With a
``TensorBoardLogger``, nanscope's scalars and events go into its writer under ``nanscope/``.

Under ``nanscope run`` the callback reuses that run's watcher (and its options) instead of adding a second.
"""

from __future__ import annotations

import warnings
from typing import Any

from nanscope.integrations._session import Session
from nanscope.report.model import Report

__all__ = ["NanscopeCallback"]


def _writer(trainer: Any) -> Any:
    """A lazy source of the run's TensorBoardLogger writer (``logger.experiment``), on global rank zero."""
    if not getattr(trainer, "is_global_zero", True):
        return None
    for logger in getattr(trainer, "loggers", ()):
        if type(logger).__name__ == "TensorBoardLogger":
            return lambda: logger.experiment
    return None


def _bases() -> tuple[type, ...]:
    bases: list[type] = []
    try:
        from lightning.pytorch import Callback

        bases.append(Callback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as PLCallback

        bases.append(PLCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError(
            "nanscope.integrations.lightning needs PyTorch Lightning: pip install lightning (or pytorch_lightning)"
        )
    return tuple(bases)


class NanscopeCallback(*_bases()):  # type: ignore[misc]  # a Callback of whichever Lightning is installed
    """Watch ``Trainer.fit``; ``options`` are :func:`nanscope.watch`'s (``policy``, ``report_path``, ...)."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._session = Session(options)

    @property
    def report(self) -> Report | None:
        """The final report once the fit ended (None under ``nanscope run``, which reports itself)."""
        return self._session.report

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        strategy = type(getattr(trainer, "strategy", None)).__name__
        if "DeepSpeed" in strategy:
            warnings.warn(
                f"nanscope: {strategy} runs the optimizer step and clipping inside DeepSpeed, past torch's "
                "optimizer.step(): nanscope sees the loss and backward only (no update checks, no skip or "
                "rollback)",
                UserWarning,
                stacklevel=2,
            )
        self._session.begin(pl_module, list(trainer.optimizers), tensorboard=_writer(trainer))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._session.end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._session.end(exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._session.end()

    def state_dict(self) -> dict[str, Any]:
        return self._session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._session.load_state_dict(state_dict)
