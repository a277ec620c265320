"""Every scenario of the zoo through the Python API: the report says what the scenario injected."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import nanscope
from conftest import FAULTY, HEALTHY, load


def expected_shuffled(expect: dict) -> tuple[int, list[int]]:
    """Independent oracle for shuffled loaders: a DataLoader over range(n) with the same seed yields the indices."""
    oracle = DataLoader(
        range(128),
        batch_size=expect["batch"],
        shuffle=True,
        generator=torch.Generator().manual_seed(expect["seed"]),
    )
    for step, indices in enumerate(oracle):
        hit = sorted(set(indices.tolist()) & set(expect["dirty"]))
        if hit:
            return step, hit
    raise AssertionError("no dirty sample in the first epoch")


def first_nonfinite_step(name: str) -> int:
    """Independent oracle: run the scenario plainly; the first iteration whose loss or gradients hold NaN/Inf."""
    model, optimizer, train = load(name).setup()
    steps: list[int] = []
    bad: list[int] = []
    plain_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        if not bad and not torch.isfinite(self).all():
            bad.append(len(steps))
        return plain_backward(self, *args, **kwargs)

    def pre(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not bad and not all(torch.isfinite(g).all() for g in grads):
            bad.append(len(steps))
        steps.append(1)

    handle = optimizer.register_step_pre_hook(pre)
    torch.Tensor.backward = backward
    try:
        train()
    finally:
        torch.Tensor.backward = plain_backward
        handle.remove()
    assert bad, "the scenario never produced a non-finite loss or gradient"
    return bad[0]


def check(report: nanscope.Report, expect: dict, name: str | None = None) -> None:
    """Kind, phase, where, step, op, module and samples exactly (op/module/samples default to None)."""
    assert report.verdict == "nonfinite"
    assert report.cause is not None and report.first_nonfinite is not None
    cause = report.cause
    assert cause.kind == expect["kind"]
    assert cause.phase == expect["phase"]
    assert report.first_nonfinite.where == expect["where"]
    samples = None if cause.samples is None else list(cause.samples)
    if "dirty" in expect:
        step, expected_samples = expected_shuffled(expect)
        assert report.first_nonfinite.step == step
        assert samples == expected_samples
    else:
        if expect["step"] == "oracle":
            assert name is not None
            assert report.first_nonfinite.step == first_nonfinite_step(name)
        else:
            assert report.first_nonfinite.step == expect["step"]
        if expect.get("samples") == "any":
            assert samples and all(i >= 0 for i in samples)
        else:
            assert samples == expect.get("samples")
    for key in ("op", "module", "parameter", "hyperparameter"):
        assert getattr(cause, key) == expect.get(key), key
    if "names" in expect:
        assert list(report.first_nonfinite.names) == expect["names"]
    assert report.suggestions, "a diagnosis always comes with fixes"
    assert cause.summary


@pytest.mark.parametrize("name", FAULTY)
def test_stop_policy_raises_with_the_right_diagnosis(name):
    scenario = load(name)
    model, optimizer, train = scenario.setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    check(info.value.report, scenario.EXPECT, name)


@pytest.mark.parametrize("name", FAULTY)
def test_stop_leaves_weights_as_before_the_failing_update(name):
    scenario = load(name)
    model, optimizer, train = scenario.setup()
    models = model.values() if isinstance(model, dict) else [model]
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    report = info.value.report
    if report.cause.kind in ("nonfinite_parameters", "optimizer_update"):
        return  # the weights themselves are the finding (before, or written by, the step)
    for m in models:
        for name_, p in m.named_parameters():
            assert torch.isfinite(p).all(), f"{name_} was updated with a non-finite value"


@pytest.mark.parametrize("name", FAULTY)
def test_warn_policy_reports_once_and_lets_training_finish(name):
    scenario = load(name)
    model, optimizer, train = scenario.setup()
    watcher = nanscope.watch(model, optimizer, policy="warn")
    with pytest.warns(nanscope.NonFiniteWarning), watcher:
        train()
    report = watcher.close()
    check(report, {**scenario.EXPECT, **getattr(scenario, "EXPECT_WARN", {})}, name)
    assert report.policy == "warn"
    assert report.steps > report.first_nonfinite.step, "training went on after the first NaN"


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_controls_come_out_healthy(name):
    scenario = load(name)
    model, optimizer, train = scenario.setup()
    with nanscope.watch(model, optimizer) as watcher:
        train()
    report = watcher.close()
    assert report.verdict == "healthy", report.headline()
    assert report.cause is None and report.first_nonfinite is None
    assert report.steps > 0
    assert len(report.history.loss) == report.steps
    assert all(v is not None for v in report.history.grad_norm)
