"""nanscope benchmarks: overhead on healthy runs, how it scales, memory, and time to diagnosis.

    python bench/run.py                     # CPU suite, writes docs/performance.md
    python bench/run.py --device cuda --out docs/performance-cuda.md   # on a GPU machine
    python bench/run.py --quick             # fewer repetitions, for a smoke run

Everything in the output file is written by this script from the numbers it measured in that one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diagnosis  # noqa: E402
import harness  # noqa: E402
import workloads  # noqa: E402

import recovery  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def machine(device: torch.device) -> list[str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    return lines


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


def overhead_rows(timings: list[harness.Timing], own: dict[tuple[str, str], float]) -> list[list[str]]:
    rows = []
    for t in timings:
        spent = own.get((t.workload, t.config))
        rows.append(
            [
                t.workload,
                f"{t.tensors}",
                f"{t.parameters / 1e6:.2f} M",
                t.config,
                f"{t.seconds * 1e3:.2f}",
                f"{t.ratio:.3f}",
                f"{t.ratio_min:.3f}-{t.ratio_max:.3f}",
                pct(t.ratio),
                "" if spent is None else f"{spent * 1e3:.2f} ({spent / t.seconds * 100:.1f} %)",
            ]
        )
    return rows


def peak_rss(workload: str, config: str, steps: int) -> float:
    """Peak resident memory (MiB) of a fresh process running ``steps`` steps under ``config``."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import harness, workloads, torch;"
        f"w = workloads.STANDARD[{workload!r}](torch.device('cpu'));"
        f"harness.time_block(w, harness.CONFIGS[{config!r}], {steps}, 2);"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def recovery_section(quick: bool) -> list[str]:
    cpu = torch.device("cpu")
    costs = [recovery.snapshot_cost(build(cpu)) for build in workloads.STANDARD.values()]
    cost_rows = [
        [
            c.workload,
            f"{c.step_seconds * 1e3:.1f}",
            f"{c.memory_seconds * 1e3:.1f} ({c.memory_seconds / c.step_seconds:.2f}x)",
            f"{c.disk_seconds * 1e3:.1f} ({c.disk_seconds / c.step_seconds:.2f}x)",
            f"{c.nbytes / 2**20:.1f}",
        ]
        for c in costs
    ]
    lead_rows = []
    for name in ("exploding_regression", "exploding_deep_mlp"):
        lead, first = recovery.lead_time(name)
        lead_rows.append([name, "-" if first is None else str(first), "none" if lead is None else str(lead)])
    healthy = recovery.healthy_scenarios()
    zoo = recovery.false_warnings_zoo(healthy)
    steps = 40 if quick else 150
    per_workload = [
        f"{name} {recovery.false_warnings_workload(build(cpu), steps)}"
        for name, build in workloads.STANDARD.items()
    ]
    runs = [
        recovery.recovery_run("dirty_classifier", "quarantine+rollback", "accuracy", {"clean": True}),
        recovery.recovery_run("lr_too_high", "rollback", "loss", {"factor": 0.75}),
        recovery.recovery_run("bad_batch_lm", "skip", "loss", {"clean": True}),
        recovery.recovery_run("bad_batch_lm", "rollback", "loss", {"clean": True}),
    ]
    run_rows = [
        [
            r.job,
            r.policy,
            r.metric,
            f"{r.plain:.4g}",
            f"{r.baseline:.4g}",
            f"{r.recovered:.4g}",
            f"{(r.recovered - r.baseline) / r.baseline * 100:+.2f} %",
            r.interventions,
            f"{r.seconds_lost:.3f}",
        ]
        for r in runs
    ]
    return [
        "## Recovery",
        "",
        recovery.__doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "Snapshot cost (one snapshot; ms, and as a multiple of the median step):",
        "",
        *table(["workload", "step (ms)", "in memory", "on disk", "size (MiB)"], cost_rows),
        "",
        "Early warning lead time (policy `warn`; steps from the first warning linked to the NaN, to the NaN):",
        "",
        *table(["scenario", "first non-finite step", "lead (steps)"], lead_rows),
        "",
        f"False early warnings on healthy runs: {zoo} over the zoo's {len(healthy)} healthy controls; "
        f"over {steps} steps of each benchmark workload: {', '.join(per_workload)}.",
        "",
        "Recovery runs (`tests/recovery`; `plain` is the run without nanscope, `baseline` the same run on clean "
        "data or, for `lr_too_high`, at half the rate; `lost` is the report's `seconds_lost`):",
        "",
        *table(
            [
                "job",
                "policy",
                "metric",
                "plain",
                "baseline",
                "recovered",
                "vs baseline",
                "actions",
                "lost (s)",
            ],
            run_rows,
        ),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    repeats, steps, warmup = (3, 5, 2) if args.quick else (15, 12, 2)
    started = time.time()
    out: list[str] = [
        "# Performance",
        "",
        f"Generated by `python bench/run.py{' --device ' + args.device if args.device != 'cpu' else ''}`"
        " (`make bench`); every number below was measured in that one run.",
        "",
        "## Machine",
        "",
        *machine(device),
        "",
    ]

    print("overhead on healthy runs ...", flush=True)
    standard = dict(workloads.STANDARD)
    if device.type == "cuda":
        standard["gpt2_small"] = workloads.gpt2_small
    timings: list[harness.Timing] = []
    own: dict[tuple[str, str], float] = {}
    for name, build in standard.items():
        workload = build(device)
        timings += harness.compare(workload, harness.CONFIGS, steps, warmup, repeats)
        for config in ("nanscope watch", "nanscope run"):
            own[name, config] = harness.self_time(workload, config, steps, warmup, max(3, repeats // 3))
        print(f"  {name} done", flush=True)
    out += [
        "## Overhead on healthy runs",
        "",
        f"Each configuration runs {steps} timed steps per block after {warmup} warm-up steps, blocks interleaved "
        f"in rotating order, {repeats} repetitions. `ratio` is the median over repetitions of the block's "
        "time over the bare block of the same repetition; `range` its min-max (on a shared machine the "
        "block-to-block noise is several percent, so single ratios below a few percent are within noise; the "
        "`in nanscope` column is not blurred by it). "
        "`nanscope run` is the zero-code "
        "machinery (optimizer discovery, global hooks, DataLoader patches) attached in-process. "
        "`in nanscope` is the time per step spent inside nanscope's hooks (timers around every entry point "
        "torch calls; median of separate blocks) and its share of the bare step: nanscope's own work, which "
        "the machine's noise does not blur (it leaves out indirect costs such as evicted caches).",
        "",
        *table(
            [
                "workload",
                "tensors",
                "params",
                "config",
                "ms/step",
                "ratio",
                "range",
                "overhead",
                "in nanscope",
            ],
            overhead_rows(timings, own),
        ),
        "",
    ]
    lines = []
    for name in standard:
        by = {t.config: t for t in timings if t.workload == name}
        watch, anomaly = by["nanscope watch"].ratio - 1, by["detect_anomaly"].ratio - 1
        versus = f"{anomaly / watch:.0f}x less" if watch > 0 else "not measurable (watch overhead <= 0)"
        lines.append(
            f"- {name}: detect_anomaly overhead {pct(by['detect_anomaly'].ratio)}, "
            f"nanscope watch {pct(by['nanscope watch'].ratio)} -> {versus}"
        )
    out += ["Overhead relative to `torch.autograd.detect_anomaly`:", "", *lines, ""]
    out += [
        "PyTorch Lightning's `Trainer(detect_anomaly=True)` runs its fit loop inside "
        "`torch.autograd.set_detect_anomaly(True)` (`Trainer._run_stage`), so its cost is the "
        "`detect_anomaly` row.",
        "",
    ]

    print("scaling ...", flush=True)
    sizes = [1e5, 1e6, 1e7] + ([1e8] if not args.quick else [])
    two = {k: harness.CONFIGS[k] for k in ("bare", "nanscope watch")}
    scale_rows = []
    for size in sizes:
        reps, n = (3, 3) if size >= 1e8 else (repeats, steps)
        t = harness.compare(workloads.scaled_mlp(device, size), two, n, 1, reps)[1]
        scale_rows.append(
            [
                f"{t.parameters:.2e}",
                f"{t.tensors}",
                f"{t.seconds * 1e3:.2f}",
                f"{t.ratio:.3f}",
                f"{t.ratio_min:.3f}-{t.ratio_max:.3f}",
            ]
        )
    tensor_rows = []
    for count in (10, 100, 1000):
        t = harness.compare(workloads.split_mlp(device, count), two, steps, warmup, repeats)[1]
        tensor_rows.append(
            [
                f"{t.tensors}",
                f"{t.parameters:.2e}",
                f"{t.seconds * 1e3:.2f}",
                f"{t.ratio:.3f}",
                f"{t.ratio_min:.3f}-{t.ratio_max:.3f}",
            ]
        )
    out += [
        "## Scaling",
        "",
        "Overhead of `nanscope watch` against parameter count (4 square layers, SGD):",
        "",
        *table(["params", "tensors", "ms/step (watched)", "ratio", "range"], scale_rows),
        "",
        "Overhead against the number of parameter tensors at about 1e6 parameters (deep narrow MLP, SGD):",
        "",
        *table(["tensors", "params", "ms/step (watched)", "ratio", "range"], tensor_rows),
        "",
    ]

    if device.type == "cpu":
        print("memory ...", flush=True)
        mem_rows = []
        for name in workloads.STANDARD:
            bare, watched = peak_rss(name, "bare", steps), peak_rss(name, "nanscope watch", steps)
            mem_rows.append([name, f"{bare:.0f}", f"{watched:.0f}", f"{watched - bare:+.0f}"])
        out += [
            "## Peak memory",
            "",
            f"Peak RSS (MiB) of a fresh process running {steps + 2} steps:",
            "",
            *table(["workload", "bare", "nanscope watch", "difference"], mem_rows),
            "",
        ]
    else:
        sync_rows = []
        for name, build in standard.items():
            bare = harness.sync_count(build(device), "bare", steps)
            watched = harness.sync_count(build(device), "nanscope watch", steps)
            sync_rows.append([name, f"{bare}", f"{watched}", f"{watched - bare:+d}"])
        out += [
            "## Host-device synchronization",
            "",
            f"Synchronizations reported by `torch.cuda.set_sync_debug_mode('warn')` over {steps} steps after "
            "warm-up (the bare loop's own, e.g. pageable host-to-device copies, appear in both columns):",
            "",
            *table(["workload", "bare", "nanscope watch", "added by nanscope"], sync_rows),
            "",
        ]
        mem_rows = []
        for name, build in standard.items():
            peaks = []
            for config in ("bare", "nanscope watch"):
                w = build(device)
                torch.cuda.reset_peak_memory_stats(device)
                harness.time_block(w, harness.CONFIGS[config], steps, warmup)
                peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
                del w
            mem_rows.append([name, f"{peaks[0]:.0f}", f"{peaks[1]:.0f}", f"{peaks[1] - peaks[0]:+.0f}"])
        out += [
            "## Peak GPU memory",
            "",
            "`torch.cuda.max_memory_allocated` (MiB) over the same steps:",
            "",
            *table(["workload", "bare", "nanscope watch", "difference"], mem_rows),
            "",
        ]

    if device.type == "cpu":
        print("time to diagnosis ...", flush=True)
        diag_rows = []
        for name in diagnosis.faulty_scenarios():
            d = diagnosis.measure(name, rounds=3 if args.quick else 5)
            diag_rows.append(
                [
                    name,
                    d.kind,
                    f"{d.step_seconds * 1e3:.3f}",
                    f"{d.diagnosis_seconds * 1e3:.3f}",
                    f"{d.ratio:.1f}",
                    "yes" if d.replayed else "no",
                    f"{d.peak_rise_mib:+.1f}",
                ]
            )
        out += [
            "## Time to diagnosis",
            "",
            diagnosis.__doc__.split("\n\n")[0].replace("\n", " "),
            "",
            diagnosis.__doc__.split("\n\n")[1].replace("\n", " "),
            "",
            *table(
                [
                    "scenario",
                    "kind",
                    "step (ms)",
                    "diagnosis (ms)",
                    "x step",
                    "replayed",
                    "peak RSS rise (MiB)",
                ],
                diag_rows,
            ),
            "",
        ]

    if device.type == "cpu":
        print("recovery ...", flush=True)
        out += recovery_section(args.quick)

    out += [
        f"Total benchmark time: {time.time() - started:.0f} s; peak RSS of the benchmark process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.",
        "",
    ]
    Path(args.out).write_text("\n".join(out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
