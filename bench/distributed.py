"""torch.distributed under nanscope, 2 gloo ranks on CPU (the job of ``tests/distributed/ddp_job.py``).

1. Healthy DDP run, plain and under nanscope's zero-code watcher, launches interleaved: the median step time
   of rank 0 (from the job's per-step time stamps, start-up excluded) and the time spent inside nanscope's
   hooks per step (its entry points timed on each rank; the per-step agreement all-reduce included).
2. Each fault of the test suite under ``nanscope run --json``: verdict, culprit rank, samples, every rank's exit
   code and the seconds from the last step a rank began to the launcher's exit.

    python bench/distributed.py [--epochs 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests" / "distributed" / "ddp_job.py"
FAULTS = [
    ("dirty sample (DDP)", ["--fault", "dirty", "--seed", "2"]),
    ("dirty sample (FSDP2)", ["--fault", "dirty", "--seed", "2", "--fsdp"]),
    ("log(0) on one rank", ["--fault", "log_zero"]),
    ("sqrt'(0), no_sync accumulation", ["--fault", "sqrt", "--accumulate", "2"]),
    ("learning-rate jump on every rank", ["--fault", "lr"]),
]


def _rank_job(watched: bool, args: list[str]) -> None:
    """Inside one rank: the job, optionally watched, with nanscope's entry points timed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import timed_entry_points

    from nanscope.watching.watcher import Watcher

    sys.argv = [str(JOB), *args]
    with timed_entry_points() as spent, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = Watcher(None, None) if watched else None
        try:
            runpy.run_path(str(JOB), run_name="__main__")
        finally:
            report = watcher.close() if watcher is not None else None
    if report is not None:
        assert report.verdict == "healthy", report.headline()
        print(f"nanscope seconds {spent.seconds:.6f} steps {report.watched_steps}", flush=True)


def _launch(cmd: list[str], cwd: str) -> tuple[int, str, float]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    return result.returncode, result.stdout + result.stderr, time.time()


def _torchrun(*rest: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--tee", "3", *rest]


def _step_seconds(out: str, rank: int = 0) -> float:
    stamps = [float(t) for t in re.findall(rf"\[default{rank}\]:step \d+ at (\d+\.\d+)", out)]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def overhead(epochs: int, repeats: int, cwd: str) -> None:
    plain, watched, inside = [], [], []
    for _ in range(repeats):
        for mode in ("plain", "watched"):
            cmd = _torchrun(__file__, "--rank-job", mode, "--", "--epochs", str(epochs))
            rc, out, _ = _launch(cmd, cwd)
            assert rc == 0, out[-2000:]
            (plain if mode == "plain" else watched).append(_step_seconds(out))
            for seconds, steps in re.findall(r"nanscope seconds (\S+) steps (\d+)", out):
                inside.append(float(seconds) / int(steps))
    ratios = [w / p for p, w in zip(plain, watched, strict=True)]
    print(f"healthy DDP, 2 ranks, {epochs} epochs x 12 steps, {repeats} interleaved launches each:")
    print(
        "| plain ms/step | watched ms/step | ratio (median, min-max) | in nanscope per step (median over ranks) |"
    )
    print("|---|---|---|---|")
    print(
        f"| {1e3 * statistics.median(plain):.2f} | {1e3 * statistics.median(watched):.2f} | "
        f"x{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
        f"{1e3 * statistics.median(inside):.3f} ms |"
    )


def faults(cwd: str) -> None:
    print(
        "\n| case | verdict | kind | culprit rank | samples | step | exit codes | s from last step to exit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, args in FAULTS:
        report_path = Path(cwd) / "r.json"
        report_path.unlink(missing_ok=True)
        rc, out, ended = _launch(_torchrun("-m", "nanscope", "run", "--json", "r.json", str(JOB), *args), cwd)
        codes = dict.fromkeys(range(2), 0)
        for rank, code in re.findall(r"rank\s+: (\d+) \(local_rank: \d+\)\n\s+exitcode\s+: (-?\d+)", out):
            codes[int(rank)] = int(code)
        stamps = [float(t) for t in re.findall(r"step \d+ at (\d+\.\d+)", out)]
        report = json.loads(report_path.read_text())
        cause = report["cause"] or {}
        first = report["first_nonfinite"] or {}
        print(
            f"| {name} | {report['verdict']} | {cause.get('kind')} | {cause.get('rank')} | "
            f"{cause.get('samples')} | {first.get('step')} | {codes} | {ended - max(stamps):.1f} |"
        )


def main() -> None:
    if "--rank-job" in sys.argv:
        at = sys.argv.index("--rank-job")
        _rank_job(sys.argv[at + 1] == "watched", sys.argv[sys.argv.index("--") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cwd = tempfile.mkdtemp(prefix="nanscope-bench-")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    overhead(args.epochs, args.repeats, cwd)
    faults(cwd)


if __name__ == "__main__":
    main()
