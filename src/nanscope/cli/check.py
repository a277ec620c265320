"""``nanscope check [options] script.py [args...]`` / ``nanscope check solver.prototxt``: the checks a long
run deserves, before it starts.

Runs the unmodified script for its first optimizer steps: learns its models, optimizers, DataLoaders, datasets,
LR schedulers and the loss's autograd graph; records the first iteration; then trains the model on the first
batch again and again with a reference optimizer (Adam, lr 1e-2) through the script's own forward and loss,
and stops the script (nothing it would do after that point is done). Then it checks the data (every sample, in
time bounds), the model, the loss and the schedule, prints the findings and writes ``nanscope.check/1``.
The probe trains the script's model on one batch: it is not a training run, and its weights are not saved.
A Caffe ``.prototxt`` (solver or net) is read instead: its LR policy and its Pooling layers are checked.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nanscope.cli._exit import EXIT_FAILED, EXIT_FINDINGS, EXIT_OK, usage_error
from nanscope.cli._script import add_target, launcher, probe_target, resolve
from nanscope.errors import UsageError

__all__ = ["add_parser", "execute"]

_EXAMPLES = """examples:
  nanscope check train.py --lr 0.1                   the script's arguments follow it
  nanscope check --json check.json -m mypkg.train     a module, as python -m mypkg.train
  nanscope check --steps 40 train.py                  a longer one-batch overfit
  nanscope check solver.prototxt                      a Caffe solver (lr_policy) or net (Pooling strides)

exit codes: 0 no finding is an error, 4 a finding is an error, 2 usage error, 1 the script made no optimizer
step (it raised: its traceback is printed; or it ended) and nothing found is an error (the data checks still run)
"""


def add_parser(sub: Any, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="check data, model, loss and schedule before a long run (runs the script's first steps)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="PATH", help="write the nanscope.check/1 JSON report to PATH")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML page to PATH")
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        metavar="N",
        help="one-batch overfit steps after the first recorded step (20); the script is stopped after them",
    )
    parser.add_argument(
        "--scan-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="read every dataset sample for NaN/Inf for at most S seconds (60); the coverage is reported",
    )
    parser.add_argument(
        "--schedule-steps",
        type=int,
        metavar="N",
        help="the run's planned optimizer steps, for the dry run of its LR schedulers (default: the "
        "scheduler's total_steps, else 1000)",
    )
    parser.add_argument(
        "--ignore-index", type=int, default=-100, metavar="I", help="class target that is ignored (-100)"
    )
    parser.add_argument("--quiet", action="store_true", help="print no report on stderr")
    add_target(parser)


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope.preflight.probe import Probe
    from nanscope.preflight.run import probed

    def usage(message: str) -> int:
        return usage_error(parser, "check", message)

    if args.steps < 6:
        return usage(
            f"--steps must be >= 6 (the overfit compares its last steps with its first), got {args.steps}"
        )
    if not args.scan_seconds >= 0:
        return usage(f"--scan-seconds must be >= 0, got {args.scan_seconds}")
    if args.target and args.target.endswith(".prototxt") and not args.module:
        from nanscope.preflight.caffe import check_file

        try:
            report = check_file(args.target)
        except UsageError as exc:
            return usage(str(exc))
        return _finish(report, args)
    if args.target and launcher(args.target, args.module):
        return usage("check one process: run `nanscope check train.py` without the launcher")
    problem = resolve(args, "check")
    if problem is not None:
        return usage(problem)
    probe = Probe(args.steps)
    probe_target(args, probe)
    try:
        report = probed(
            probe,
            schedule_steps=args.schedule_steps,
            ignore_index=args.ignore_index,
            scan_seconds=args.scan_seconds,
        )
    except UsageError as exc:
        return usage(str(exc))
    code = _finish(report, args)
    return EXIT_FAILED if code == EXIT_OK and probe.updates == 0 else code


def _finish(report: Any, args: argparse.Namespace) -> int:
    from nanscope._atomic import atomic_write_text
    from nanscope.preflight.render import check_page, print_check
    from nanscope.report import html

    if args.json:
        atomic_write_text(args.json, report.dumps())
    if args.html:
        html.write(check_page(report), args.html)
    if not args.quiet:
        print_check(report, sys.stderr)
        for path in (args.json, args.html):
            if path:
                print(f"nanscope: check report written to {path}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FINDINGS
