"""``nanscope demo``: run the built-in job (dirty sensor data, see :mod:`nanscope.demo.job`) under watch.

It is ``nanscope run --json nanscope-report.json -m nanscope.demo.job`` with the job's own options; it exits 0
when the watcher diagnosed the blow-up (that is the point of the demo) and 1 when it did not.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "execute"]


def add_parser(sub: Any, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="run the built-in demo job that blows up on dirty data, and diagnose it",
        epilog="example:\n  nanscope demo --html demo.html     the report also as a page\n\n"
        "exit codes: 0 the blow-up was diagnosed, 1 it was not, 2 usage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", metavar="PATH", default="nanscope-report.json", help="report path (%(default)s)"
    )
    parser.add_argument(
        "--html", metavar="PATH", help="also write a self-contained HTML report (needs matplotlib)"
    )
    parser.add_argument("--policy", default="stop", choices=["stop", "warn"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0)")
    parser.add_argument("--dead", type=int, default=6, help="flat recordings in the dataset (6)")
    parser.set_defaults(parser=parser)


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from nanscope.cli import run

    job_args = ["--workers", str(args.workers), "--dead", str(args.dead)]
    html = ["--html", args.html] if args.html else []
    code = run.main(
        ["--json", args.json, *html, "--policy", args.policy, "-m", "nanscope.demo.job", *job_args]
    )
    from nanscope.report.json import loads

    with open(args.json, encoding="utf-8") as fh:
        report = loads(fh.read())
    if code not in (0, 3):
        return code
    return 0 if report.verdict == "nonfinite" or args.dead == 0 else 1
