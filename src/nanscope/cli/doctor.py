"""``nanscope doctor PATH``: read a training log (any supported tool's format) and say what the curves show.

PATH is a log file or a run directory; the format is detected and named. Nothing is re-run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "execute"]


def add_parser(sub: Any, name: str) -> None:
    from nanscope.curves.readers import FORMATS

    formats = "; ".join(f"{k} ({v})" for k, v in FORMATS.items())
    parser = sub.add_parser(
        name,
        help="diagnose training curves from a log file or run directory (no re-run)",
        description="Read a training log (a file or a run directory; the format is detected and named) and say "
        f"what the curves show, without re-running anything. Formats: {formats}.",
        epilog="examples:\n  nanscope doctor lightning_logs/version_0\n  nanscope doctor trainer_state.json "
        "--json curves.json --html curves.html\n\nexit codes: 0 read and diagnosed, 2 unreadable input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="a log file or a run directory")
    parser.add_argument("--json", metavar="OUT", help="write the nanscope.curves/1 JSON report to OUT")
    parser.add_argument(
        "--html",
        metavar="OUT",
        help="write a self-contained HTML page with the curves to OUT (needs matplotlib)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing on stdout")
    parser.set_defaults(parser=parser)


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope._atomic import atomic_write_text
    from nanscope.cli._exit import EXIT_OK, EXIT_USAGE
    from nanscope.curves.readers import read
    from nanscope.detect.curves import report as curves_report
    from nanscope.errors import UsageError
    from nanscope.report.curves import dumps, render_text

    try:
        curves = read(args.path)
    except UsageError as exc:
        print(f"nanscope doctor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = curves_report(curves)
    if args.html:
        from nanscope.report.html import curves_page, write

        try:
            write(curves_page(report, curves), args.html)
        except UsageError as exc:
            print(f"nanscope doctor: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        atomic_write_text(args.json, dumps(report))
    if not args.quiet:
        sys.stdout.write(render_text(report))
    return EXIT_OK
