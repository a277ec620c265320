"""Transient or reproducible (issue 13 item 7): a failure whose replay is finite is `not_reproducible`, and
the recovering policies retry the step instead of skipping or rolling it back."""

from __future__ import annotations

import warnings

import pytest
import torch

import nanscope
from conftest import load


def _run(policy: str | None, fault_at: int, **options):
    model, optimizer, train = load("transient_fault").setup(fault_at=fault_at)
    if policy is None:
        train()
        return model, None
    watcher = nanscope.watch(model, optimizer, policy=policy, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with watcher:
            train()
    return model, watcher.close()


@pytest.mark.parametrize("policy", ["skip", "rollback", "quarantine+rollback"])
def test_a_transient_fault_is_retried_and_the_run_ends_as_if_it_never_happened(policy):
    clean, _ = _run(None, fault_at=0)
    kept, report = _run(policy, fault_at=3)
    assert report.cause is not None and report.cause.kind == "not_reproducible"
    assert report.first_nonfinite.step == 2
    assert [i.kind for i in report.interventions] == ["retry"]
    assert report.outcome.failed_steps == 1 and report.outcome.skipped_steps == 0
    assert report.outcome.rollbacks == 0
    # the replayed step's update is the one the clean run made: the weights are bitwise the clean run's
    for (name, a), b in zip(kept.named_parameters(), clean.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_plain_run_with_the_fault_dies():
    model, _ = _run(None, fault_at=3)
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_with_a_step_function_the_replay_is_immediate_and_the_step_is_skipped():
    model, optimizer, train = load("transient_fault").setup()

    def step_fn(batch):
        x, y = batch
        torch.nn.functional.mse_loss(model(x), y).backward()

    watcher = nanscope.watch(model, optimizer, policy="skip", step_fn=step_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with watcher:
            train()
    report = watcher.close()
    assert report.cause.kind == "not_reproducible"
    assert [i.kind for i in report.interventions] == ["skip"]
    assert "did not reproduce" in report.interventions[0].detail


def test_stop_reports_not_reproducible_with_its_advice():
    model, optimizer, train = load("transient_fault").setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    report = info.value.report
    assert report.cause.kind == "not_reproducible"
    assert any(e.label == "replay" and e.data == {"reproduced": False} for e in report.cause.evidence)
    assert any("retries" in s for s in report.suggestions)
