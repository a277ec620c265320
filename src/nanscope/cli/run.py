"""``nanscope run [options] script.py [args...]`` / ``nanscope run [options] -m module [args...]``.

Runs an unmodified training script under watch: optimizers, the models they train and every DataLoader the
script iterates are discovered. The script sees the ``sys.argv``, ``__name__ == "__main__"``, ``sys.path[0]``
and exit code it would see under plain ``python``; nanscope writes only to stderr and the files you name
(``--json``, ``--html``, ``--quarantine``, ``--snapshot-dir``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from nanscope.errors import NonFiniteError, UsageError
from nanscope.recover.policy import HANDLERS, MEASURES

__all__ = ["add_parser", "execute", "main"]

_VALUED = {"--json", "--html", "--policy", "--history", "--quarantine", "--snapshot-every", "--snapshot-dir"}


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
        "--snapshot-every", type=int, default=50, metavar="N", help="rollback: snapshot every N steps (50)"
    )
    parser.add_argument(
        "--snapshot-dir", metavar="DIR", help="rollback: keep snapshots as files in DIR instead of memory"
    )
    parser.add_argument("--history", type=int, default=2048, metavar="N", help="steps of history kept (2048)")
    parser.add_argument("--eager", action="store_true", help="on CUDA, read checks at once (syncs each step)")
    parser.add_argument(
        "--no-data", action="store_true", help="do not map DataLoader batches to dataset indices"
    )
    parser.add_argument("--quiet", action="store_true", help="print no report on stderr")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m does")
    parser.add_argument("script", nargs="?", help="the training script (then its arguments)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def add_parser(sub: Any, name: str) -> None:
    _configure(
        sub.add_parser(
            name,
            help="run a training script under watch, with no code changes",
            description=__doc__.split("\n\n")[1] if __doc__ else None,
        )
    )


def _split(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options, then the target and its arguments (which are never parsed by nanscope)."""
    argv = list(args)
    ours: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "-m":
            return ours + argv[i : i + 2], list(argv[i + 2 :])
        if token in _VALUED:
            ours += argv[i : i + 2]
            i += 2
            continue
        if token.startswith("-") and token != "-":
            ours.append(token)
            i += 1
            continue
        return ours + [token], list(argv[i + 1 :])
    return ours, []


def main(argv: Sequence[str]) -> int:
    parser = _configure(argparse.ArgumentParser(prog="nanscope run", description=__doc__.split("\n\n")[1]))
    ours, rest = _split(list(argv))
    try:
        args = parser.parse_args(ours)
    except SystemExit as exc:
        return int(exc.code or 0)
    args.args = rest
    return execute(args, parser)


def _script_frames(tb: TracebackType | None, target: str | None) -> TracebackType | None:
    """Drop nanscope's and runpy's frames in front of the script's, as plain ``python`` shows it."""
    start = tb
    while start is not None and target is not None:
        if os.path.abspath(start.tb_frame.f_code.co_filename) == target:
            return start
        start = start.tb_next
    return tb


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope.cli import EXIT_NONFINITE, EXIT_USAGE
    from nanscope.report.json import write
    from nanscope.report.text import print_report
    from nanscope.watching.watcher import Watcher

    def usage(message: str) -> int:
        if parser is not None:
            parser.print_usage(sys.stderr)
        print(f"nanscope run: error: {message}", file=sys.stderr)
        return EXIT_USAGE

    if args.module and args.script:
        args.args = [args.script, *args.args]
    if not args.module and not args.script:
        return usage(
            "give a script to run (nanscope run train.py [args]) or a module (nanscope run -m pkg.mod)"
        )
    target: str | None = None
    if args.script:
        path = Path(args.script)
        if not path.exists():
            return usage(f"script not found: {args.script}")
        if path.is_dir() and not (path / "__main__.py").exists():
            return usage(f"{args.script} is a directory without __main__.py")
        target = os.path.abspath(path if path.is_file() else path / "__main__.py")
    if args.module:
        import importlib.util

        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(args.module) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            return usage(f"no module named {args.module!r}")
    if args.history < 1:
        return usage(f"--history must be >= 1, got {args.history}")

    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    code = 0
    try:
        from nanscope.recover.policy import RollbackOptions, make_policy

        if args.snapshot_every < 1:
            raise UsageError(f"--snapshot-every must be >= 1, got {args.snapshot_every}")
        policy = make_policy(
            args.policy, rollback=RollbackOptions(every=args.snapshot_every, directory=args.snapshot_dir)
        )
        watcher = Watcher(
            None,
            None,
            policy=policy,
            history=args.history,
            track_data=not args.no_data,
            eager=args.eager,
            quarantine=args.quarantine,
        )
    except UsageError as exc:
        return usage(str(exc))
    try:
        if args.module:
            sys.argv = [args.module, *args.args]
            sys.path[0] = os.getcwd()
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            assert target is not None
            sys.argv = [args.script, *args.args]
            sys.path[0] = (
                os.path.dirname(target) if os.path.isfile(args.script) else os.path.abspath(args.script)
            )
            runpy.run_path(args.script, run_name="__main__")
    except NonFiniteError:
        code = EXIT_NONFINITE
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException as exc:
        _print_script_error(exc, target)
        code = 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    try:
        report = watcher.close()
    except NonFiniteError as exc:  # a lazily read device value tripped while closing
        report = exc.report
    if watcher.stopped:
        code = EXIT_NONFINITE
    if args.json:
        write(report, args.json)
    if args.html:
        from nanscope.report import html

        try:
            html.write(html.run_page(report), args.html)
        except UsageError as exc:
            print(f"nanscope run: {exc}", file=sys.stderr)
    if not args.quiet:
        print_report(report, sys.stderr)
        for path in (args.json, args.html):
            if path:
                print(f"nanscope: report written to {path}", file=sys.stderr)
    return code


def _print_script_error(exc: BaseException, target: str | None) -> None:
    tb = _script_frames(exc.__traceback__, target)
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
