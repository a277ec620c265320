"""What nanscope itself does per step on the always-on path: time, CPU time, torch ops and Python calls.

Only the work inside nanscope's entry points is counted (the methods through which torch calls into it:
``harness._ENTRY_POINTS``), so the machine's noise does not blur it: wall time (``perf_counter``) and CPU
time (``thread_time``) inside the hooks, the aten ops issued there (a counting ``TorchDispatchMode`` pushed for
the duration of each entry) and, in a separate pass, the Python-level calls made there (``sys.setprofile``
``call`` and ``c_call`` events). Of the wall time, the part spent in the probes' reads of the tensors
(``Plan.probe``: the kernels over the gradient, weight and buffer bytes, which the memory bandwidth bounds) is
shown apart from the rest (the host's bookkeeping), with the bytes those reads cover per step. Each block
counts 20 steps after 3 warm-up steps, in a watcher of its own: the read of the weights at every 100th update
that proven updates leave (``nanscope/watching/proof.py``) falls outside them (amortized, a hundredth of one
weight read per step). One row per workload: the four CPU benchmark workloads, the 1e5 / 1e6-parameter
scaling rows, 10 / 100 / 1000 parameter tensors at 1e6 parameters and 1 / 32 AdamW param groups (64 tensors,
a learning rate per group, every other group without weight decay).

With ``--device cuda`` (on a GPU machine: ``python bench/hot_path.py --device cuda --out
docs/performance-hot-path-cuda.md``) the times are the host's (kernel launches included; the GPU's work runs
beside them), the rows are the four workloads, the scaling rows and a GPT-2-small-sized step, and a last
column counts the host-device synchronizations nanscope adds per step (torch's sync debug mode, watched minus
bare).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import harness
import torch
import workloads
from torch.utils._python_dispatch import TorchDispatchMode

from nanscope.watching.probes import Plan


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


@dataclass
class _Counts:
    wall: float = 0.0
    cpu: float = 0.0
    ops: int = 0
    calls: int = 0
    reads: float = 0.0  # seconds inside Plan.probe, within timed()
    bytes: int = 0  # the bytes of the tensors Plan.probe read, within timed()
    inside: bool = False

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.thread_time()
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            self.wall += time.perf_counter() - start
            self.cpu += time.thread_time() - cpu

    @contextlib.contextmanager
    def counted_ops(self) -> Iterator[None]:
        mode = _Ops()
        try:
            with mode:
                yield
        finally:
            self.ops += mode.count

    @contextlib.contextmanager
    def probes_timed(self) -> Iterator[None]:
        """Time (and size) the ``Plan.probe`` calls made inside :meth:`timed` blocks: the reads of the tensors."""
        probe = Plan.probe
        sizes: dict[int, tuple[Plan, int]] = {}  # a plan's bytes, summed once (not inside the timed blocks)

        def timed(plan: Plan, tensors, squares):  # type: ignore[no-untyped-def]
            known = sizes.get(id(plan))
            if known is None:
                sizes[id(plan)] = known = (plan, sum(t.numel() * t.element_size() for t in tensors))
            if not self.inside:
                return probe(plan, tensors, squares)
            start = time.perf_counter()
            try:
                return probe(plan, tensors, squares)
            finally:
                self.reads += time.perf_counter() - start
                self.bytes += known[1]

        Plan.probe = timed  # type: ignore[method-assign]
        try:
            yield
        finally:
            Plan.probe = probe  # type: ignore[method-assign]

    @contextlib.contextmanager
    def counted_calls(self) -> Iterator[None]:
        def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
            # nanscope's calls only: not the counter's own frames around them
            if event in ("call", "c_call") and frame.f_code.co_filename not in _OWN:
                self.calls += 1

        sys.setprofile(tracer)
        try:
            yield
        finally:
            sys.setprofile(None)


_OWN = {__file__, harness.__file__, contextlib.__file__}


@dataclass(frozen=True)
class Row:
    workload: str
    tensors: int
    parameters: int
    bare_ms: float  # median bare step
    wall_us: float  # in nanscope, per step (median of blocks, timed without the profiler)
    cpu_us: float
    ops: float  # per step (profiled blocks)
    calls: float
    reads_us: float  # of wall_us: inside Plan.probe (the reads of the tensors)
    read_mb: float  # the bytes those reads cover, per step
    syncs: float | None = None  # host-device synchronizations added per step (CUDA)

    @property
    def share(self) -> float:
        return self.wall_us / 1e3 / self.bare_ms


def measure(workload: workloads.Workload, steps: int = 20, warmup: int = 3, repeats: int = 5) -> Row:
    walls, cpus, reads = [], [], []
    bares = [harness.time_block(workload, harness.CONFIGS["bare"], steps, warmup)]
    for _ in range(repeats):
        timed = _Counts()
        with timed.probes_timed():
            harness.in_entry_points(workload, "nanscope watch", steps, warmup, timed.timed)
        walls.append(timed.wall / steps)
        cpus.append(timed.cpu / steps)
        reads.append(timed.reads / steps)
        read_mb = timed.bytes / steps / 1e6
        bares.append(harness.time_block(workload, harness.CONFIGS["bare"], steps, warmup))
    ops, calls = counts(workload, steps, warmup)
    syncs = None
    if workload.device.type == "cuda":
        added = harness.sync_count(workload, "nanscope watch", steps) - harness.sync_count(
            workload, "bare", steps
        )
        syncs = added / steps
    return Row(
        workload.name,
        workload.tensors,
        workload.parameters,
        statistics.median(bares) * 1e3,
        statistics.median(walls) * 1e6,
        statistics.median(cpus) * 1e6,
        ops,
        calls,
        statistics.median(reads) * 1e6,
        read_mb,
        syncs,
    )


def counts(workload: workloads.Workload, steps: int = 20, warmup: int = 3) -> tuple[float, float]:
    """``(torch ops, Python calls)`` per step inside nanscope: deterministic, whatever the machine's load; each
    counted in a run of its own, so that neither counts the other's work."""
    ops, calls = _Counts(), _Counts()
    harness.in_entry_points(workload, "nanscope watch", steps, warmup, ops.counted_ops)
    harness.in_entry_points(workload, "nanscope watch", steps, warmup, calls.counted_calls)
    return ops.ops / steps, calls.calls / steps


def rows(device: torch.device) -> Iterator[Row]:
    for build in workloads.STANDARD.values():
        yield measure(build(device))
    for p in (1e5, 1e6):
        yield measure(workloads.scaled_mlp(device, p))
    if device.type == "cpu":
        for n in (10, 100, 1000):
            yield measure(workloads.split_mlp(device, n))
        for g in (1, 32):
            yield measure(workloads.grouped_mlp(device, g))
    else:
        yield measure(workloads.gpt2_small(device))


def main() -> None:
    import argparse
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", help="write the table (with the machine and this script's doc) to this file")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    lines = [
        "| workload | tensors | params | bare step (ms) | in nanscope (us/step) | share | CPU in nanscope (us/step) "
        "| torch ops/step | Python calls/step | reading tensors (us/step) | MB read/step | rest (us/step) |"
        + (" syncs added/step |" if cuda else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    print("\n".join(lines))
    for r in rows(device):
        lines.append(
            f"| {r.workload} | {r.tensors} | {r.parameters:.2g} | {r.bare_ms:.2f} | {r.wall_us:.0f} | "
            f"{r.share * 100:.2f} % | {r.cpu_us:.0f} | {r.ops:.1f} | {r.calls:.0f} | {r.reads_us:.0f} | "
            f"{r.read_mb:.1f} | {r.wall_us - r.reads_us:.0f} |" + (f" {r.syncs:g} |" if cuda else "")
        )
        print(lines[-1])
        sys.stdout.flush()
    if args.out:
        doc = " ".join((__doc__ or "").split("\n\n")[:2]).replace("\n", " ")
        head = [
            "# Performance: the always-on path, counted",
            "",
            f"Generated by `python bench/hot_path.py --out {args.out}` (`make bench`). {doc}",
            "",
            f"- Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch "
            f"threads, {platform.platform()}" + (f", {torch.cuda.get_device_name(device)}" if cuda else ""),
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
