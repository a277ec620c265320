"""``nanscope run [options] script.py [args...]`` / ``nanscope run [options] -m module [args...]``.

Runs an unmodified training script under watch: optimizers, the models they train and every DataLoader the
script iterates are discovered. The script sees the ``sys.argv``, ``__name__ == "__main__"``, ``sys.path[0]``
and exit code it would see under plain ``python``; nanscope writes only to stderr and the files you name
(``--json``, ``--html``, ``--quarantine``, ``--snapshot-dir``, ``--tensorboard``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from nanscope._rank import distributed_rank
from nanscope.cli._exit import EPILOG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NONFINITE, usage_error
from nanscope.cli._script import add_target, launcher, resolve, run_target
from nanscope.errors import NonFiniteError, UsageError
from nanscope.recover.policy import HANDLERS, MEASURES

__all__ = ["add_parser", "execute", "main"]

_EXIT_WATCHDOG_S = 20.0  # after an agreed distributed stop, the longest a hanging teardown may hold the exit


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", metavar="PATH", help="write the nanscope.report/1 JSON report to PATH")
    parser.add_argument(
        "--html", metavar="PATH", help="write a self-contained HTML report to PATH (needs matplotlib)"
    )
    parser.add_argument(
        "--policy",
        default="stop",
        metavar="SPEC",
        help=f"on a NaN/Inf: one of {', '.join(HANDLERS)}, optionally with measures joined by + "
        f"({', '.join(MEASURES)}), e.g. quarantine+rollback. stop: exit 3, weights left pre-step; warn: report "
        "and keep training; skip: discard the failing update and go on; rollback: restore the last good "
        "snapshot, halve the LR for a while and go on; quarantine: exclude the culprit samples from later "
        "batches; clip: adaptive gradient clipping (default: stop)",
    )
    parser.add_argument(
        "--quarantine",
        metavar="FILE",
        help="quarantine file: samples listed there are excluded from the start, new culprits are added",
    )
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write nanscope's per-step scalars and events (nanscope/loss before any filter, nanscope/grad_norm "
        "before clipping, nanscope/lr, failed and skipped step counts, the first non-finite, interventions) "
        "to a TensorBoard log in DIR (DIR/nanscope when DIR already holds a run's event files); under the "
        "Lightning and HF callbacks the framework's own writer is used instead",
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        metavar="N",
        help="rollback: snapshot every N steps (default: adaptive, a quarter of the steps run so far, "
        "between every 10 and every 50)",
    )
    parser.add_argument(
        "--snapshot-dir", metavar="DIR", help="rollback: keep snapshots as files in DIR instead of memory"
    )
    parser.add_argument(
        "--scan-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="after a NaN/Inf in the data, read the whole dataset for at most S seconds and name every dirty "
        "sample (quarantine takes them all); 0 turns the scan off (30)",
    )
    parser.add_argument("--history", type=int, default=2048, metavar="N", help="steps of history kept (2048)")
    parser.add_argument("--eager", action="store_true", help="on CUDA, read checks at once (syncs each step)")
    parser.add_argument(
        "--no-data", action="store_true", help="do not map DataLoader batches to dataset indices"
    )
    parser.add_argument("--quiet", action="store_true", help="print no report on stderr")
    add_target(parser)
    return parser


_EXAMPLES = """examples:
  nanscope run train.py --lr 0.1                     the script's arguments follow it
  nanscope run --json report.json -m mypkg.train     a module, as python -m mypkg.train
  nanscope run --policy quarantine+rollback train.py keep the run alive, drop dirty samples
  torchrun --nproc_per_node 8 -m nanscope run train.py
                                                     every rank watched; one report, from rank 0

"""


def add_parser(sub: Any, name: str) -> None:
    _configure(
        sub.add_parser(
            name,
            help="run a training script under watch, with no code changes",
            description=__doc__.split("\n\n")[1] if __doc__ else None,
            epilog=_EXAMPLES + EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def main(argv: Sequence[str]) -> int:
    """``nanscope run ARGV`` in-process (the demo uses it)."""
    from nanscope.cli import main as cli_main

    return cli_main(["run", *argv])


def _script_frames(tb: TracebackType | None, target: str | None) -> TracebackType | None:
    """Drop nanscope's and runpy's frames in front of the script's, as plain ``python`` shows it."""
    start = tb
    while start is not None and target is not None:
        if os.path.abspath(start.tb_frame.f_code.co_filename) == target:
            return start
        start = start.tb_next
    return tb


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope.cli import relaunch

    def usage(message: str) -> int:
        return usage_error(parser, "run", message)

    if args.target:
        where = launcher(args.target, args.module)
        if where is not None:
            return usage(
                f"{where} starts the training processes itself, so nanscope would watch only the launcher: put "
                f"nanscope inside it, e.g. `torchrun --nproc_per_node N -m nanscope run [options] train.py [args]`, "
                "`torchrun --no-python nanscope run [options] train.py`, or `accelerate launch -m nanscope run "
                "[options] train.py`"
            )
    problem = resolve(args, "run")
    if problem is not None:
        return usage(problem)
    target = args.path
    if args.history < 1:
        return usage(f"--history must be >= 1, got {args.history}")

    code = 0
    options = relaunch.Options.of(args)
    try:
        watcher = options.watcher(tensorboard=args.tensorboard)
    except UsageError as exc:
        return usage(str(exc))
    saved_env = os.environ.get(relaunch.ENV)
    os.environ[relaunch.ENV] = options.to_env()  # ranks the script launches itself are watched too
    try:
        run_target(args)
    except NonFiniteError:
        code = EXIT_NONFINITE
        if distributed_rank() is not None:
            _finish_before_terminating()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = EXIT_FAILED
    except KeyboardInterrupt as exc:
        traceback.print_exc()
        watcher.ended_by(exc)
        code = EXIT_INTERRUPTED
    except BaseException as exc:
        _print_script_error(exc, target)
        watcher.ended_by(exc)
        code = EXIT_FAILED
    finally:
        if saved_env is None:
            os.environ.pop(relaunch.ENV, None)
        else:
            os.environ[relaunch.ENV] = saved_env
    try:
        report = watcher.close()
    except NonFiniteError as exc:  # a lazily read device value tripped while closing
        report = exc.report
    if watcher.stopped:
        code = EXIT_NONFINITE
    rank, world = report.environment.get("rank", 0), report.environment.get("world_size", 1)
    together = world > 1 and watcher.stopped
    if together:
        _leave_together(report, rank)
    _publish(report, args, rank)
    if together:
        _exit_process(code)
    return code


def _publish(report: Any, args: argparse.Namespace, rank: int) -> None:
    """Global rank 0 writes the run's files and prints the report; the other ranks a line each."""
    from nanscope.cli import relaunch
    from nanscope.report.json import write
    from nanscope.report.text import print_report

    if rank != 0:
        if not args.quiet:
            print(relaunch.rank_line(report), file=sys.stderr)
        return
    if args.json:
        write(report, args.json)
    if args.html:
        from nanscope.report import html

        try:
            html.write(html.run_page(report), args.html)
        except UsageError as exc:
            print(f"nanscope run: {exc}", file=sys.stderr)
    if report.verdict == "unwatched":
        print(
            "nanscope run: warning: nothing was watched: the script ran no optimizer step and no backward() "
            "of a floating-point loss (is it a training script? does it train in a subprocess?)",
            file=sys.stderr,
        )
    if not args.quiet:
        print_report(report, sys.stderr)
        for path in (args.json, args.html):
            if path:
                print(f"nanscope: report written to {path}", file=sys.stderr)
        hint = _check_hint(report, args)
        if hint:
            print(hint, file=sys.stderr)


def _exit_process(code: int) -> None:
    """After an agreed distributed stop: the script's atexit handlers run, then the process exits without the
    interpreter's teardown, where process-group threads of a stopped run can abort it ("terminate called
    without an active exception", 1 run in 20 under load), as Lightning's ranks after an agreed stop do."""
    import atexit

    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_hint(report: Any, args: argparse.Namespace) -> str | None:
    """One line pointing to ``nanscope check`` when a pre-flight code would have caught this diagnosis."""
    from nanscope.preflight.report import CODES_FOR_CAUSE

    codes = CODES_FOR_CAUSE.get(report.cause.kind) if report.cause is not None else None
    if not codes:
        return None
    target = f"-m {args.module}" if args.module else args.script
    return (
        f"nanscope: before the next run, `nanscope check {target}` checks for this ({', '.join(codes)}"
        f"{': every dataset sample at once' if codes == ('nonfinite_samples',) else ''})"
    )


def _leave_together(report: Any, rank: int) -> None:
    """Every rank stopped at the same agreed step and exits 3. Its error record (``$TORCHELASTIC_ERROR_FILE``,
    as ``@record`` writes it) carries nanscope's message, the culprit rank's one a second earlier, so that the
    agent's "Root Cause" is the culprit. A watchdog exits if teardown hangs (an ``atexit``
    ``destroy_process_group`` waiting on a peer, as under NCCL)."""
    import json
    import threading
    import time

    def exit_now() -> None:
        sys.stderr.flush()
        os._exit(EXIT_NONFINITE)

    _finish_before_terminating()
    watchdog = threading.Timer(_EXIT_WATCHDOG_S, exit_now)
    watchdog.daemon = True
    watchdog.start()
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        culprit = report.cause is not None and report.cause.rank == rank
        record = {
            "message": {
                "message": f"NonFiniteError: {report.headline()}",
                "extraInfo": {
                    "py_callstack": f"NonFiniteError: {report.headline()}\n(nanscope stopped every rank at "
                    "this step; the report is on rank 0)",
                    "timestamp": str(int(time.time()) - (1 if culprit else 0)),
                },
            }
        }
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(record))


def _finish_before_terminating() -> None:
    """After an agreed stop, torchrun's agent terminates the other ranks as soon as the first one exits: from
    now on SIGTERM is ignored, so that each rank writes its report and exits 3 itself (the agent's SIGKILL
    after its grace period, and the watchdog of :func:`_leave_together`, still bound the wait)."""
    import signal

    with contextlib.suppress(ValueError):  # not the main thread: no handler
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _print_script_error(exc: BaseException, target: str | None) -> None:
    tb = _script_frames(exc.__traceback__, target)
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
