"""The watched script: finding it (a file, a directory with ``__main__.py``, or a module with ``-m``) and running
it in this process as plain ``python`` would (``sys.argv``, ``__name__ == "__main__"``, ``sys.path[0]``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["add_target", "launcher", "probe_target", "resolve", "run_target"]

_LAUNCHERS = {"torchrun", "accelerate", "deepspeed", "torch.distributed.run", "torch.distributed.launch"}


def launcher(target: str, module: bool) -> str | None:
    """The launcher ``target`` names (a command or a module that spawns the ranks), or None."""
    name = target if module else os.path.basename(target)
    if name in _LAUNCHERS or (module and name.split(".")[0] in ("accelerate", "deepspeed")):
        return f"`{target}`"
    return None


def resolve(args: argparse.Namespace, command: str) -> str | None:
    """Check ``args.target`` (with ``args.module``) and set ``args.script`` / ``args.module``; returns a usage
    error, or None. ``args.path`` is the script's absolute path (None for a module). ``command``: the
    subcommand, for the message."""
    if not args.target:
        return (
            f"give a script to run (nanscope {command} train.py [args]) or a module (nanscope {command} -m "
            "pkg.mod [args])"
        )
    args.script = None if args.module else args.target
    args.module = args.target if args.module else None
    args.path = None
    if args.script:
        path = Path(args.script)
        if not path.exists():
            return f"script not found: {args.script}"
        if path.is_dir() and not (path / "__main__.py").exists():
            return f"{args.script} is a directory without __main__.py"
        args.path = os.path.abspath(path if path.is_file() else path / "__main__.py")
    if args.module:
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(args.module) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            return f"no module named {args.module!r}"
    return None


def run_target(args: argparse.Namespace) -> None:
    """Run the resolved script or module; its exceptions (``SystemExit`` included) propagate. ``sys.argv`` and
    ``sys.path[0]`` are put back."""
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    try:
        if args.module:
            sys.argv = [args.module, *args.args]
            sys.path[0] = os.getcwd()
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [args.script, *args.args]
            sys.path[0] = (
                os.path.dirname(args.path) if os.path.isfile(args.script) else os.path.abspath(args.script)
            )
            runpy.run_path(args.script, run_name="__main__")
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0


def add_target(parser: argparse.ArgumentParser) -> None:
    """The script (or module), its own arguments after it, and ``-m``; ``parser`` kept for usage errors."""
    parser.add_argument(
        "-m", "--module", action="store_true", help="TARGET is a module, run as python -m does"
    )
    parser.add_argument(
        "target", nargs="?", metavar="TARGET", help="the training script (or module, with -m)"
    )
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="the script's own arguments, passed as they are"
    )
    parser.set_defaults(parser=parser)


def probe_target(args: argparse.Namespace, listener: Any) -> None:
    """Run the resolved script with ``listener`` on the global patches until it raises
    :class:`~nanscope.preflight.probe.ProbeDone` (the probe has what it needs) or ends. The script's own exception is printed, not raised: the probe reports what it
    learned before it. The listener's ``close()`` removes its hooks."""
    from nanscope.preflight.probe import ProbeDone
    from nanscope.watching import patches

    patches.activate(listener)
    try:
        run_target(args)
    except (ProbeDone, SystemExit):
        pass
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    finally:
        patches.deactivate(listener)
        listener.close()
