"""``nanscope lr-find [options] script.py [args...]``: a NaN-safe learning-rate range test through the script's
own loop.

Runs the unmodified script with the learning rate of its first optimizer swept exponentially, one value per
optimizer step (every param group, keeping their ratios; the script's own scheduler is overridden), stops at
divergence (a NaN/Inf loss, or a smoothed loss over 4x its best) or after --steps, then stops the script (nothing
it would do after that point is done; the run was a probe). Prints the seed's advice in words ("start at X;
divergence from Y") and writes ``nanscope.lrfind/1``. Suggestion: the LR at the smoothed loss's minimum / 10.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nanscope.cli._exit import EXIT_FAILED, EXIT_OK, usage_error
from nanscope.cli._script import add_target, launcher, probe_target, resolve
from nanscope.errors import UsageError

__all__ = ["add_parser", "execute"]

_EXAMPLES = """examples:
  nanscope lr-find train.py                           sweep 1e-7 .. 10 over 100 steps
  nanscope lr-find --start 1e-5 --end 1 --steps 60 --html lr.html train.py --batch-size 64

exit codes: 0 a sweep ran (with or without a suggestion), 2 usage error, 1 the script raised or made no
optimizer step
"""


def add_parser(sub: Any, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="find a learning rate: sweep it through the script's first steps, stop at NaN/divergence",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", metavar="PATH", help="write the nanscope.lrfind/1 JSON result to PATH")
    parser.add_argument("--html", metavar="PATH", help="write an HTML page with the loss-vs-LR plot to PATH")
    parser.add_argument("--start", type=float, default=1e-7, metavar="LR", help="first LR (1e-7)")
    parser.add_argument("--end", type=float, default=10.0, metavar="LR", help="last LR (10)")
    parser.add_argument(
        "--steps", type=int, default=100, metavar="N", help="optimizer steps of the sweep (100)"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on stderr but errors")
    add_target(parser)


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope._atomic import atomic_write_text
    from nanscope.preflight.lr_find import Sweep, SweepProbe

    def usage(message: str) -> int:
        return usage_error(parser, "lr-find", message)

    try:
        sweep = Sweep(args.start, args.end, args.steps)
    except UsageError as exc:
        return usage(str(exc))
    if args.target and launcher(args.target, args.module):
        return usage("sweep one process: run `nanscope lr-find train.py` without the launcher")
    problem = resolve(args, "lr-find")
    if problem is not None:
        return usage(problem)
    probe_target(args, SweepProbe(sweep))
    if not sweep.points:
        print(
            "nanscope lr-find: the script made no optimizer step with a scalar loss: nothing was swept",
            file=sys.stderr,
        )
        return EXIT_FAILED
    result = sweep.result()
    if args.json:
        atomic_write_text(args.json, result.dumps())
    if args.html:
        from nanscope.preflight.render import lr_find_page
        from nanscope.report import html

        try:
            html.write(lr_find_page(result), args.html)
        except UsageError as exc:
            print(f"nanscope lr-find: {exc}", file=sys.stderr)
    if not args.quiet:
        low = f"{result.min_loss_lr:.3g}" if result.min_loss_lr is not None else "-"
        print(
            f"nanscope lr-find: {len(result.points)} steps from {result.points[0][0]:.3g} to "
            f"{result.points[-1][0]:.3g} (stopped: {result.stop}); lowest smoothed loss at {low}",
            file=sys.stderr,
        )
        print(f"nanscope lr-find: {result.advice()}", file=sys.stderr)
    return EXIT_OK  # the sweep ran (a script that raised part-way is shown above; its sweep is reported)
