"""The processes a script under ``nanscope run`` launches itself, watched as the script's own process is.

Lightning's ``strategy="ddp"`` run with plain ``python`` starts ranks 1..N-1 as new processes of the same script
(``_SubprocessScriptLauncher``): they never pass through ``nanscope run``. ``nanscope run`` leaves its options in
the environment (``NANSCOPE_RUN``, inherited by every child) and Lightning calls the
``lightning.pytorch.callbacks_factory`` entry points in every process when it builds a ``Trainer``: in a
child, :func:`lightning_callbacks` starts watching with those options before ``fit`` begins. The child writes
no file (global rank 0 writes the report); at its end it prints one line, and exits 3 after an agreed stop.
Under ``torchrun -m nanscope run`` every rank has its own ``nanscope run`` and the factory does nothing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from nanscope.cli._exit import EXIT_NONFINITE
from nanscope.errors import NonFiniteError

__all__ = ["ENV", "Options", "lightning_callbacks", "rank_line"]

ENV = "NANSCOPE_RUN"


@dataclass(frozen=True)
class Options:
    """What a watched process needs of ``nanscope run``'s options (files are written by global rank 0 only)."""

    policy: str
    history: int
    eager: bool
    track_data: bool
    quarantine: str | None
    snapshot_every: int | None
    snapshot_dir: str | None
    quiet: bool
    pid: int  # the ``nanscope run`` process itself (which watches on its own)
    scan_seconds: float = 30.0

    @classmethod
    def of(cls, args: argparse.Namespace) -> Options:
        return cls(
            policy=args.policy,
            history=args.history,
            eager=args.eager,
            track_data=not args.no_data,
            quarantine=args.quarantine,
            snapshot_every=args.snapshot_every,
            snapshot_dir=args.snapshot_dir,
            quiet=args.quiet,
            pid=os.getpid(),
            scan_seconds=args.scan_seconds,
        )

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Options | None:
        text = os.environ.get(ENV)
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError):  # another nanscope version's options: not ours to read
            return None

    def watcher(self, tensorboard: str | None = None) -> Any:
        """A zero-code :class:`~nanscope.watching.watcher.Watcher` with these options (raises ``UsageError``)."""
        from nanscope.errors import UsageError
        from nanscope.recover.policy import RollbackOptions, make_policy
        from nanscope.watching.watcher import Watcher

        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise UsageError(f"--snapshot-every must be >= 1, got {self.snapshot_every}")
        policy = make_policy(
            self.policy, rollback=RollbackOptions(every=self.snapshot_every, directory=self.snapshot_dir)
        )
        return Watcher(
            None,
            None,
            policy=policy,
            history=self.history,
            track_data=self.track_data,
            eager=self.eager,
            quarantine=self.quarantine,
            tensorboard=tensorboard,
            scan_seconds=self.scan_seconds,
        )


def lightning_callbacks() -> list[Any]:
    """Lightning's ``callbacks_factory`` entry point: starts watching in a rank Lightning launched from a
    ``nanscope run`` process; adds no callback."""
    from nanscope.watching.watcher import open_watchers

    options = Options.from_env()
    if options is None or options.pid == os.getpid() or open_watchers():
        return []
    watcher = options.watcher()
    previous = sys.excepthook

    def stopped(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, NonFiniteError):
            previous(kind, exc, tb)
            return
        _finish(watcher, options)
        os._exit(EXIT_NONFINITE)  # every rank stopped at the same step: no teardown to wait for

    sys.excepthook = stopped
    atexit.register(_finish, watcher, options)
    return []


def _finish(watcher: Any, options: Options) -> None:
    if watcher.closed:
        return
    try:
        report = watcher.close()
    except NonFiniteError as exc:
        report = exc.report
    if not options.quiet:
        # the process's own stderr: the script may have replaced sys.stderr
        print(rank_line(report), file=sys.__stderr__ or sys.stderr, flush=True)


def rank_line(report: Any) -> str:
    """What a rank other than global rank 0 prints at its end (rank 0 prints the report)."""
    env = report.environment
    return f"nanscope (rank {env.get('rank')} of {env.get('world_size')}): {report.headline()}"
