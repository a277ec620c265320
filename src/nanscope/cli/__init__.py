"""The ``nanscope`` command line: ``main(argv) -> exit code``, one module per subcommand.

Exit codes: 0 healthy / done (or recovered under a recovering policy); 2 usage error; 3 a non-finite value
stopped the run (``stop``, or a recovering policy that gave up); 4 ``nanscope check`` found an error;
otherwise the watched script's own exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nanscope.cli import check, demo, doctor, lr_find, run
from nanscope.cli._exit import EPILOG, EXIT_NONFINITE, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "entry", "main"]

_COMMANDS = {"run": run, "check": check, "lr-find": lr_find, "demo": demo, "doctor": doctor}


def _parser() -> argparse.ArgumentParser:
    from nanscope import __version__

    parser = argparse.ArgumentParser(
        prog="nanscope",
        description="Find out why a PyTorch training loss became NaN: watch a run, stop at the first NaN/Inf, "
        "name the step, the tensors, the cause and the dataset samples.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"nanscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(args_in)
    except SystemExit as exc:  # argparse: --help / --version exit 0, usage errors 2
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(_COMMANDS[args.command].execute(args, args.parser))


def entry() -> None:
    sys.exit(main())
