"""The exit codes of every ``nanscope`` subcommand, in one place."""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "EXIT_FAILED",
    "EXIT_FINDINGS",
    "EXIT_INTERRUPTED",
    "EXIT_NONFINITE",
    "EXIT_OK",
    "EXIT_USAGE",
    "EPILOG",
]

EXIT_OK = 0  # healthy, recovered, or done
EXIT_FAILED = 1  # the watched script raised (its traceback is printed as python would)
EXIT_USAGE = 2  # bad command line or input
EXIT_NONFINITE = 3  # a non-finite value stopped the run (policy stop, or a recovering policy gave up)
EXIT_FINDINGS = 4  # nanscope check: a finding is an error
EXIT_INTERRUPTED = 130  # Ctrl-C in the watched script

EPILOG = (
    "exit codes: 0 healthy or recovered, 2 usage error, 3 a non-finite value stopped the run (policy stop, or "
    "a recovering policy gave up), 4 nanscope check found an error, otherwise the script's own exit code (1 "
    "when it raised, 130 on Ctrl-C)"
)


def usage_error(parser: Any, command: str, message: str) -> int:
    """Print ``parser``'s usage line and ``nanscope COMMAND: error: MESSAGE``, as argparse does; exit code 2."""
    if parser is not None:
        parser.print_usage(sys.stderr)
    print(f"nanscope {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE
