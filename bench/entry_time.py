"""Time spent inside nanscope's hooks per step on the four CPU workloads, for a side-by-side A/B.

    python bench/entry_time.py                                              # this checkout
    PYTHONPATH=/tmp/before/src python bench/entry_time.py /tmp/before/bench   # another (with its harness)

Uses ``harness.self_time`` (timers around every entry point torch calls; median of 9 blocks of 12 steps).
Run old and new alternately, several rounds: the medians are comparable on one machine, single runs are not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# the harness times the entry points of the nanscope it was written for: another checkout's for A/B
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import workloads  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    for name in ("mlp", "cnn", "transformer", "many_tensors"):
        workload = getattr(workloads, name)(torch.device("cpu"))
        seconds = harness.self_time(workload, "nanscope watch", steps=12, warmup=2, repeats=9)
        print(f"{name} {seconds * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
