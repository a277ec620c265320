"""Culprit samples by counterfactual re-runs (issue 13 item 6): the search over parts of the batch, and the
re-runs through step_fn, the model alone and the in-loop replay."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nanscope
from nanscope.localize.counterfactual import find_culprits, take_rows


def _oracle(bad: set[int], together: int = 1):
    calls: list[list[int]] = []

    def fails(rows: list[int]) -> bool:
        calls.append(rows)
        return len(bad & set(rows)) >= together

    return fails, calls


def test_one_culprit_is_found_and_confirmed_within_three_batches_of_rows():
    fails, calls = _oracle({5})
    found = find_culprits(fails, 16)
    assert found is not None and found.culprits == (5,) and found.confirmed and found.complete
    assert not found.together and found.rows_run <= 3 * 16
    assert calls[-2:] == [[5], [r for r in range(16) if r != 5]]  # alone fails, without it finite
    assert "batch row 5 alone reproduces the failure; the batch without it is finite" in found.text()
    assert "sample 1005 alone" in found.text(list(range(1000, 1016)))


def test_two_culprits_in_a_batch_of_eight_fit_the_budget():
    found = find_culprits(_oracle({2, 5})[0], 8)
    assert found.culprits == (2, 5) and found.confirmed and found.rows_run <= 4 * 8


def test_a_failure_that_needs_the_samples_together_is_said_so():
    found = find_culprits(_oracle(set(range(8)), together=8)[0], 8)  # statistics over the whole batch
    assert found.together and found.culprits == ()
    assert "needs the samples together" in found.text()


def test_every_sample_failing_alone_names_them_all():
    found = find_culprits(_oracle(set(range(4)))[0], 4)
    assert found.culprits == (0, 1, 2, 3) and "every sample of the batch fails on its own" in found.text()


def test_the_search_stops_at_its_budget_and_a_part_that_cannot_run_gives_up():
    found = find_culprits(_oracle({1, 6, 9, 14})[0], 16, budget=20)
    assert found is not None and not found.complete and not found.confirmed and found.rows_run <= 20
    assert find_culprits(lambda rows: None, 8) is None
    assert find_culprits(_oracle({0})[0], 1) is None  # one row: nothing to compare


def test_take_rows_cuts_every_batch_tensor_and_keeps_the_rest():
    Pair = namedtuple("Pair", "x y")
    batch = {"x": torch.arange(12).reshape(4, 3), "pair": Pair(torch.arange(4), torch.ones(2)), "n": 4}
    cut = take_rows(batch, [1, 3], 4)
    assert cut["x"].tolist() == [[3, 4, 5], [9, 10, 11]] and cut["pair"].x.tolist() == [1, 3]
    assert cut["pair"].y.shape == (2,) and cut["n"] == 4 and isinstance(cut["pair"], Pair)


def _ignored_targets_job():
    """A batch whose every target is the ignore_index: nll_loss averages over zero targets (0/0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    y[8:16] = -100  # the second batch: nothing to learn from
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return model, optimizer, loader


def test_with_a_step_function_a_loss_property_of_every_sample_names_them_all():
    model, optimizer, loader = _ignored_targets_job()

    def step_fn(batch):
        x, y = batch
        nn.functional.cross_entropy(model(x), y).backward()

    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer, step_fn=step_fn):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    cause = info.value.report.cause
    assert cause.kind == "domain_error" and cause.op.startswith("nll_loss")
    assert cause.samples == tuple(range(8, 16))  # each sample fails on its own: all of them are named
    (evidence,) = [e for e in cause.evidence if e.label == "counterfactual"]
    assert evidence.data["samples"] == list(range(8, 16))


def test_a_batch_statistic_is_reported_as_needing_the_samples_together():
    """Shares of a batch total inside the model: x / x.sum(0) divides by zero when the batch's values cancel
    out, which no part of the batch does on its own."""
    torch.manual_seed(0)

    class Shares(nn.Module):
        def forward(self, x):
            return x / x.sum(0)

    model = nn.Sequential(Shares(), nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(8, 2) + 0.5
    x[4:8, 0] = torch.tensor([3.0, -1.0, -1.0, -1.0])  # the second batch's column sums to exactly 0
    loader = DataLoader(TensorDataset(x, torch.randn(8, 1)), batch_size=4)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
    report = info.value.report
    cause = report.cause
    assert report.first_nonfinite.step == 1
    assert (cause.kind, cause.op, cause.module) == ("domain_error", "div", "0")
    (evidence,) = [e for e in cause.evidence if e.label == "counterfactual"]
    assert evidence.data["together"] and "needs the samples together" in evidence.detail
    assert cause.samples is None  # no sample is to blame
    # the re-runs stopped by OriginFound left no global module hook or dispatch mode behind
    from torch.nn.modules import module as module_globals
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    assert not module_globals._global_forward_pre_hooks and not module_globals._global_forward_hooks
    assert _get_current_dispatch_mode() is None
