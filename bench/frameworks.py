"""Healthy Lightning and HF Trainer runs (the test task of ``tests/frameworks``) with and without nanscope's
zero-code watcher, interleaved plain / watched in one process: wall-clock of the whole job (the framework's
own start-up included) and the time spent inside nanscope's hooks per optimizer step.

    python bench/frameworks.py [--epochs 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import runpy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from harness import timed_entry_points

from nanscope.watching.watcher import Watcher

JOBS = Path(__file__).resolve().parent.parent / "tests" / "frameworks"


def _job(name: str, epochs: int, watched: bool) -> tuple[float, float, int]:
    """(seconds, seconds inside nanscope, steps watched) of one run of the job."""
    sys.argv = [str(JOBS / name), "--epochs", str(epochs)]
    start = time.perf_counter()
    steps = 0
    with timed_entry_points() as spent, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if watched:
            watcher = Watcher(None, None)
            try:
                runpy.run_path(str(JOBS / name), run_name="__main__")
            finally:
                report = watcher.close()
            assert report.verdict == "healthy", report.headline()
            steps = report.watched_steps
        else:
            runpy.run_path(str(JOBS / name), run_name="__main__")
    return time.perf_counter() - start, spent.seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(JOBS))
    os.chdir(tempfile.mkdtemp(prefix="nanscope-bench-"))
    print("| job | steps | plain s | watched s | ratio (median, min-max) | in nanscope per step |")
    print("|---|---|---|---|---|---|")
    for name in ("lightning_job.py", "hf_job.py"):
        _job(name, 1, False)  # warm-up: imports, first-call costs
        plain, watched, ratios, inside, steps = [], [], [], [], 0
        for _ in range(args.repeats):
            p, _, _ = _job(name, args.epochs, False)
            w, spent, steps = _job(name, args.epochs, True)
            plain.append(p)
            watched.append(w)
            ratios.append(w / p)
            inside.append(spent / max(steps, 1))
        r = statistics.median(ratios)
        print(
            f"| {name} | {steps} | {statistics.median(plain):.2f} | {statistics.median(watched):.2f} | "
            f"x{r:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | {1e3 * statistics.median(inside):.3f} ms |"
        )


if __name__ == "__main__":
    main()
