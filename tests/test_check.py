"""Pre-flight checks (issue 14, first slice): nanscope.check on a model, its data, optimizer and schedule.
Each planted problem is first shown to break plain PyTorch training (or to be a real fault); healthy setups
of several kinds give no error and no warning."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import nanscope


class Flat(Dataset):
    """Readings standardized per sample in __getitem__: 0/0 on a flat reading (with a random jitter)."""

    def __init__(self, flat=(4, 61)):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(128, 6, generator=g)
        self.x[list(flat)] = 1.0
        self.y = torch.randint(0, 3, (128,), generator=g)

    def __len__(self):
        return 128

    def __getitem__(self, i):
        x = (self.x[i] - self.x[i].mean()) / self.x[i].std()
        return x + 1e-6 * torch.rand(()), self.y[i]


def _classifier(outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, outputs))


def _codes(report: nanscope.CheckReport) -> dict[str, nanscope.Finding]:
    return {f.code: f for f in report.findings}


def test_dirty_samples_are_all_found_and_the_run_would_die_on_them():
    model, data = _classifier(), Flat()
    loss = nn.functional.cross_entropy(model(torch.stack([data[4][0]])), data[4][1][None])
    assert math.isnan(float(loss.detach()))  # plain PyTorch: the first batch holding one is a NaN loss
    report = nanscope.check(model, DataLoader(data, batch_size=8))
    found = _codes(report)["nonfinite_samples"]
    assert found.severity == "error" and found.samples == (4, 61) and not report.ok
    assert found.evidence["scanned"] == 128


def test_class_targets_outside_the_outputs_are_errors():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    y[[7, 30]] = 3  # a fourth class the 3-output model does not have
    y[9] = -100  # ignored: allowed
    model = _classifier(3)
    with pytest.raises(IndexError):  # plain PyTorch on CPU: the loss cannot index class 3
        nn.functional.cross_entropy(model(x[[7]]), y[[7]])
    found = _codes(nanscope.check(model, TensorDataset(x, y)))["label_out_of_range"]
    assert (
        found.samples == (7, 30) and found.evidence["targets"] == [3] and found.evidence["num_outputs"] == 3
    )


def test_eps_zero_in_the_optimizer_and_in_a_normalization_layer():
    model = _classifier()
    model[1].eps = 0.0
    opt = torch.optim.Adam(model.parameters(), eps=0.0)
    found = [f for f in nanscope.check(model, Flat(flat=()), optimizer=opt).findings if f.code == "eps_zero"]
    assert sorted(f.where for f in found) == ["Adam (optimizer 0) param_groups[0]", "module 1"]
    assert all(f.severity == "warning" for f in found)


def test_a_schedule_that_turns_nan_is_found_by_a_dry_run_that_changes_nothing():
    model = _classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # a warm-up written as 1 / (1 - step / 50): inf at step 50, negative after
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 - s / 50) if s != 50 else math.inf)
    before = (opt.param_groups[0]["lr"], sched.state_dict()["last_epoch"])
    report = nanscope.check(model, Flat(flat=()), optimizer=opt, scheduler=sched, schedule_steps=200)
    found = _codes(report)["lr_schedule_nonfinite"]
    assert found.evidence["step"] == 50 and math.isinf(found.evidence["lr"])
    assert (opt.param_groups[0]["lr"], sched.state_dict()["last_epoch"]) == before


@pytest.mark.parametrize("kind", ["classifier", "regression", "cnn", "adamw_onecycle"])
def test_healthy_setups_give_no_error_and_no_warning(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sched = None
    if kind == "classifier":
        model, data = _classifier(), Flat(flat=())
        opt = torch.optim.Adam(model.parameters())
    elif kind == "regression":
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        data = TensorDataset(torch.randn(50, 5, generator=g), torch.randn(50, 1, generator=g))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 30, 0.1)
    elif kind == "cnn":
        model = nn.Sequential(
            nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(24, 5)
        )
        data = TensorDataset(torch.randn(40, 1, 8, generator=g), torch.randint(0, 5, (40,), generator=g))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 100)
    else:
        model = _classifier()
        data = Flat(flat=())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300)
    loss_fn = nn.functional.mse_loss if kind == "regression" else nn.functional.cross_entropy
    report = nanscope.check(model, data, optimizer=opt, scheduler=sched, loss_fn=loss_fn)
    assert report.ok and report.findings == (), report.findings
    assert "nonfinite_samples" in report.checked and "eps_zero" in report.checked
    data_out = json.loads(report.dumps())
    assert data_out["schema"] == "nanscope.check/1" and data_out["findings"] == []


def test_unnormalized_inputs_are_found_and_plain_sgd_diverges_on_them():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    raw = x * torch.tensor([1.0, 1000.0, 1.0, 1.0])  # one feature in raw units
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(20):  # plain PyTorch: the learning rate that suits standardized inputs blows up
        opt.zero_grad()
        nn.functional.mse_loss(model(raw), y).backward()
        opt.step()
    assert not torch.isfinite(nn.functional.mse_loss(model(raw), y))
    found = _codes(nanscope.check(nn.Linear(4, 1), TensorDataset(raw, y)))["unnormalized_inputs"]
    assert found.severity == "warning" and 900 < found.evidence["max_std"] < 1100
    assert "unnormalized_inputs" in nanscope.check(nn.Linear(4, 1), TensorDataset(x, y)).checked


def test_a_constant_feature_is_reported_as_information():
    x = torch.randn(64, 5)
    x[:, 3] = 0.7
    report = nanscope.check(nn.Linear(5, 1), TensorDataset(x, torch.randn(64, 1)))
    found = _codes(report)["constant_features"]
    assert found.severity == "info" and found.evidence["features"] == [3] and report.ok


def test_a_first_loss_far_above_log_c_is_a_warning():
    model = _classifier(3)
    with torch.no_grad():
        model[3].weight.mul_(300.0)  # a last layer initialized far too large
    data = Flat(flat=())
    x, y = torch.stack([data[i][0] for i in range(64)]), torch.stack([data[i][1] for i in range(64)])
    first = float(nn.functional.cross_entropy(model(x), y).detach())
    assert first > 3 * math.log(3)  # plain PyTorch: the initial loss is far above uniform guessing
    found = _codes(nanscope.check(model, data, loss_fn=nn.functional.cross_entropy))["initial_loss"]
    assert found.evidence["loss"] == pytest.approx(first, rel=1e-4)
    healthy = nanscope.check(_classifier(3), data, loss_fn=nn.functional.cross_entropy)
    assert "initial_loss" in healthy.checked and healthy.findings == ()


def test_check_leaves_the_random_streams_and_the_model_as_they_were():
    model, data = _classifier(), Flat()
    model.train()
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    weights = [p.detach().clone() for p in model.parameters()]
    nanscope.check(model, data)
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert model.training and all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_bad_arguments_are_refused_with_the_reason():
    with pytest.raises(nanscope.UsageError, match="model must be an nn.Module"):
        nanscope.check("model", Flat())
    with pytest.raises(nanscope.UsageError, match="data must be a Dataset"):
        nanscope.check(_classifier(), 42)


def test_api_model_checks_run_on_a_copy_and_leave_everything_as_it_was():
    """With loss_fn: the loss-graph, activation, gradient and overfit codes on a copy; a softmax before
    cross_entropy is found, and a (N, 1) output against (N,) targets cannot fit one batch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    data = TensorDataset(x, (x @ torch.randn(6, 3, generator=g)).argmax(1))
    model = nn.Sequential(_classifier(), nn.Softmax(dim=-1))
    opt = torch.optim.Adam(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    report = nanscope.check(model, data, optimizer=opt, loss_fn=nn.functional.cross_entropy)
    assert {f.code for f in report.findings} == {"double_softmax"}
    assert {"dead_relu", "vanishing_gradients", "exploding_gradients", "init_scale"} <= set(report.checked)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(rng, torch.get_rng_state()) and opt.state == {}

    regression = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))
    targets = TensorDataset(x, x @ torch.randn(6, generator=g))  # targets (N,): the output is (N, 1)
    with pytest.warns(UserWarning, match="target size"):
        broadcast = nanscope.check(regression, targets, loss_fn=nn.functional.mse_loss)
    assert [f.code for f in broadcast.findings] == ["cannot_overfit_batch"]
    fixed = nanscope.check(regression, targets, loss_fn=lambda out, y: nn.functional.mse_loss(out[:, 0], y))
    assert fixed.findings == () and "cannot_overfit_batch" in fixed.checked


def test_the_script_probe_removes_every_hook_patch_and_mode_it_attached():
    """What `nanscope check` attaches while the script runs (optimizer step hooks, module hooks of the
    recorder, the global patches, the activation TorchFunctionMode) is gone after the probe closes."""
    from nanscope.preflight.probe import Probe, ProbeDone
    from nanscope.watching import patches

    probe = Probe(steps=6)
    patches.activate(probe)
    try:
        torch.manual_seed(0)
        model = _classifier()
        opt = torch.optim.Adam(model.parameters())
        loader = DataLoader(Flat(flat=()), batch_size=16)
        with pytest.raises(ProbeDone):
            for _ in range(3):
                for x, y in loader:
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
        assert probe.updates == 7 and any(m._forward_pre_hooks for m in model.modules())
    finally:
        patches.deactivate(probe)
        probe.close()
    assert patches.installed() == []
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert torch._C._len_torch_function_stack() == 0
