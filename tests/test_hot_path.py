"""The always-on path's work per step, counted (not timed): the torch ops and Python calls nanscope makes
inside its hooks do not grow with the number of parameter tensors or param groups (bench/hot_path.py measures
the rest)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import hot_path  # noqa: E402
import workloads  # noqa: E402


def test_ops_and_python_calls_per_step_are_flat_in_the_tensor_count():
    """Measured (``bench/hot_path.py``): 16 and 8 ops, 233.5 and 222.5 calls per step at 10 and at 1000 tensors
    (the counter's own frames left out); with the per-tensor generator of the gradient norms' sum of squares
    that this test caught, 1,364 calls at 1000 tensors against 396 at 10 (counted with those frames)."""
    cpu = torch.device("cpu")
    few_ops, few_calls = hot_path.counts(workloads.split_mlp(cpu, 10), steps=4, warmup=2)
    many_ops, many_calls = hot_path.counts(workloads.split_mlp(cpu, 1000), steps=4, warmup=2)
    assert many_ops <= few_ops + 2, (few_ops, many_ops)
    assert many_calls <= 1.1 * few_calls, (few_calls, many_calls)


def test_ops_and_python_calls_per_step_are_flat_in_the_param_group_count():
    """Measured (``bench/hot_path.py``'s counter, ``workloads.grouped_mlp``): AdamW with a learning rate per
    group and every other group without weight decay, 7 ops per step, 244.5 calls at 2 and at 32 groups (227.5
    at 1: the bound of the proof is computed once per distinct set of the other hyperparameters, here two);
    read group by group (before), 294.5 and 1,704.5 calls (246.5 at 1)."""
    cpu = torch.device("cpu")
    few_ops, few_calls = hot_path.counts(workloads.grouped_mlp(cpu, 2), steps=4, warmup=2)
    many_ops, many_calls = hot_path.counts(workloads.grouped_mlp(cpu, 32), steps=4, warmup=2)
    assert many_ops == few_ops, (few_ops, many_ops)
    assert many_calls <= 1.02 * few_calls, (few_calls, many_calls)
