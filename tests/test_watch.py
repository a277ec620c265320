"""The watcher's contract: detaches everything, changes nothing, never kills training, clear misuse errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import dataloader as dl

import nanscope
from conftest import load
from nanscope.watching.probes import Prober

ORIGINALS = {
    "backward": torch.autograd.backward,
    "optimizer_init": torch.optim.Optimizer.__init__,
    "next_index": dl._BaseDataLoaderIter._next_index,
    "next": dl._BaseDataLoaderIter.__next__,
    "clip_grad_norm_": torch.nn.utils.clip_grad_norm_,
    "clip_grad_value_": torch.nn.utils.clip_grad_value_,
    "clip_grads_with_norm_": torch.nn.utils.clip_grads_with_norm_,
    "inner_clip_grads_with_norm_": torch.nn.utils.clip_grad._clip_grads_with_norm_,
    "scaler_scale": torch.amp.GradScaler.scale,
    "scaler_step": torch.amp.GradScaler.step,
}


def assert_nothing_left(models, optimizers):
    assert torch.autograd.backward is ORIGINALS["backward"]
    assert torch.optim.Optimizer.__init__ is ORIGINALS["optimizer_init"]
    assert dl._BaseDataLoaderIter._next_index is ORIGINALS["next_index"]
    assert dl._BaseDataLoaderIter.__next__ is ORIGINALS["next"]
    clip = torch.nn.utils.clip_grad
    for owner in (torch.nn.utils, clip):
        assert owner.clip_grad_norm_ is ORIGINALS["clip_grad_norm_"]
        assert owner.clip_grad_value_ is ORIGINALS["clip_grad_value_"]
    assert torch.nn.utils.clip_grads_with_norm_ is ORIGINALS["clip_grads_with_norm_"]
    assert clip._clip_grads_with_norm_ is ORIGINALS["inner_clip_grads_with_norm_"]
    assert torch.amp.GradScaler.scale is ORIGINALS["scaler_scale"]
    assert torch.amp.GradScaler.step is ORIGINALS["scaler_step"]
    assert not _global_optimizer_pre_hooks and not _global_optimizer_post_hooks
    from torch.nn.modules import module as module_globals

    assert not module_globals._global_forward_hooks and not module_globals._global_forward_pre_hooks
    for model in models:
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for opt in optimizers:
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_close_removes_every_hook_and_patch():
    model, optimizer, train = load("healthy_mlp").setup()
    with nanscope.watch(model, optimizer):
        assert torch.autograd.backward is not ORIGINALS["backward"]
        assert model._forward_hooks and optimizer._optimizer_step_pre_hooks
        train()
    assert_nothing_left([model], [optimizer])


def test_nothing_left_after_a_stop_either():
    model, optimizer, train = load("dirty_inputs").setup()
    with pytest.raises(nanscope.NonFiniteError), nanscope.watch(model, optimizer):
        train()
    assert_nothing_left([model], [optimizer])


def test_nothing_left_in_discovery_mode():
    watcher = nanscope.watch(None, None)
    model, optimizer, train = load("healthy_mlp").setup()
    assert _global_optimizer_pre_hooks
    train()
    report = watcher.close()
    assert report.verdict == "healthy" and report.steps == 24
    assert_nothing_left([model], [optimizer])


def train_and_capture(name, watched, policy="stop"):
    model, optimizer, train = load(name).setup()
    if watched:
        frequent = nanscope.RollbackOptions(every=5, confirm=2)  # many snapshots under rollback
        with nanscope.watch(
            model, optimizer, policy=nanscope.make_policy(policy, rollback=frequent)
        ) as watcher:
            train()
        report = watcher.report()
        assert report.verdict == "healthy"
        assert policy != "quarantine+rollback" or report.outcome.snapshots >= 3
    else:
        train()
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


@pytest.mark.parametrize("policy", ["stop", "skip", "quarantine+rollback"])
@pytest.mark.parametrize("name", ["healthy_mlp", "attention_inf_mask", "masked_nan_labels"])
def test_healthy_run_is_bitwise_identical_and_draws_the_same_random_numbers(name, policy):
    plain_state, plain_rng = train_and_capture(name, watched=False)
    watched_state, watched_rng = train_and_capture(name, watched=True, policy=policy)
    assert torch.equal(plain_rng, watched_rng)
    for key, value in plain_state.items():
        assert torch.equal(value, watched_state[key]), key


def test_an_internal_error_only_warns_and_training_goes_on(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated nanscope bug")

    monkeypatch.setattr(Prober, "probe", broken)
    plain_state, _ = train_and_capture("healthy_mlp", watched=False)
    model, optimizer, train = load("healthy_mlp").setup()
    with (
        pytest.warns(nanscope.InternalErrorWarning, match="simulated nanscope bug"),
        nanscope.watch(model, optimizer),
    ):
        train()
    for key, value in plain_state.items():
        assert torch.equal(value, model.state_dict()[key])
    assert_nothing_left([model], [optimizer])


def test_a_users_own_exception_propagates_unchanged():
    model, optimizer, _ = load("healthy_mlp").setup()

    class Mine(Exception):
        pass

    with pytest.raises(Mine), nanscope.watch(model, optimizer):
        model(torch.randn(2, 8)).sum().backward()
        raise Mine()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "rollbak"}, r"unknown policy part\(s\) 'rollbak' .*handlers: stop, warn, skip, rollback"),
        ({"history": 0}, "history must be a positive int"),
        ({"optimizer": "adam"}, "optimizer must be a torch.optim.Optimizer"),
    ],
)
def test_misuse_is_refused_at_construction_with_the_alternatives(kwargs, message):
    model = nn.Linear(2, 1)
    args = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), **kwargs}
    with pytest.raises(nanscope.UsageError, match=message):
        nanscope.watch(model, **args)


def test_every_problem_is_listed_at_once():
    with pytest.raises(nanscope.UsageError) as info:
        nanscope.watch(nn.Linear(2, 1), "adam", policy="x", history=-1)
    text = str(info.value)
    assert "unknown policy" in text and "history" in text and "optimizer must be" in text


def test_close_is_idempotent_and_reports_the_run():
    model, optimizer, train = load("healthy_mlp").setup()
    watcher = nanscope.watch(model, optimizer)
    train()
    first = watcher.close()
    assert watcher.closed and watcher.close() is first
    assert first.steps == 24 and first.history.step == tuple(range(24))
    assert first.environment["torch"] == torch.__version__


def test_history_is_bounded():
    model, optimizer, train = load("healthy_mlp").setup()
    with nanscope.watch(model, optimizer, history=5) as watcher:
        train()
    report = watcher.close()
    assert report.history.step == (19, 20, 21, 22, 23)
    assert report.history.dropped == 19


def test_gradient_accumulation_counts_iterations_by_optimizer_steps():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(24, 4)
    x[17] = float("nan")
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer) as w:
        for micro in range(12):  # 3 micro-batches of 2 per step
            w.observe_batch(x[2 * micro : 2 * micro + 2], indices=[2 * micro, 2 * micro + 1])
            model(x[2 * micro : 2 * micro + 2]).pow(2).mean().backward()
            if micro % 3 == 2:
                optimizer.step()
                optimizer.zero_grad()
    report = info.value.report
    assert report.first_nonfinite.step == 17 // 6
    assert report.cause.samples == (17,)


def test_batches_without_indices_name_rows_not_samples():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    x[5, 1] = float("inf")
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer) as w:
        w.observe_batch((x,))
        model(x).mean().backward()
        optimizer.step()
    cause = info.value.report.cause
    assert cause.kind == "nonfinite_input" and cause.samples is None
    assert "batch rows 5" in cause.summary


def test_dataset_indices_with_a_custom_batch_sampler():
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randn(40, 1)
    x[33] = float("nan")
    batches = [[33, 1, 2], [3, 4, 5]][::-1]  # the bad one second
    loader = DataLoader(TensorDataset(x, y), batch_sampler=batches)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        for xb, yb in loader:
            nn.functional.mse_loss(model(xb), yb).backward()
            optimizer.step()
    assert info.value.report.first_nonfinite.step == 1
    assert info.value.report.cause.samples == (33,)


def test_dict_batches_and_single_sample_loaders():
    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"x": torch.full((3,), float("nan") if i == 6 else 1.0), "y": torch.tensor([0.0])}

    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        for batch in DataLoader(Dicts(), batch_size=None):  # no batching: one sample per "batch"
            nn.functional.mse_loss(model(batch["x"]), batch["y"]).backward()
            optimizer.step()
    report = info.value.report
    assert report.first_nonfinite.names == ("batch['x']",)
    assert report.cause.samples == (6,)


def test_grad_scaler_skips_are_not_reported():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # the first steps overflow and are skipped
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with nanscope.watch(model, optimizer) as watcher:
        for _ in range(6):
            loss = nn.functional.mse_loss(model(x) * 1e10, y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert watcher.close().verdict == "healthy"
    assert scaler.get_scale() < 2.0**127, "the scaler did see non-finite gradients"


def test_nonfinite_hyperparameters_are_named_by_group_and_key():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(
        [{"params": [model.weight]}, {"params": [model.bias], "betas": (0.9, float("nan"))}]
    )
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    report = info.value.report
    assert report.first_nonfinite.names == ("param_groups[1].betas",)
    assert report.cause.hyperparameter == "betas"
    assert torch.isfinite(model.bias).all()


def test_nonfinite_batchnorm_buffers_are_found_before_they_spread():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[1].running_var[2] = float("nan")  # e.g. a bad checkpoint; training-mode outputs stay finite
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        model(torch.randn(8, 3)).pow(2).mean().backward()
        optimizer.step()
    report = info.value.report
    assert report.cause.kind == "nonfinite_parameters"
    assert report.first_nonfinite.names == ("1.running_var",)


def test_warn_policy_warns_once_and_counts_later_steps():
    model, optimizer, train = load("dirty_inputs").setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nanscope.watch(model, optimizer, policy="warn") as watcher:
            train()
    assert sum(issubclass(w.category, nanscope.NonFiniteWarning) for w in caught) == 1
    report = watcher.close()
    assert report.first_nonfinite.step == 2
    assert [d.step for d in report.detections][:2] == [3, 4]


def test_report_path_gets_the_diagnosis_at_the_stop_and_the_final_report_at_close(tmp_path):
    from nanscope.report import loads

    path = tmp_path / "run.json"
    model, optimizer, train = load("dirty_inputs").setup()
    with pytest.raises(nanscope.NonFiniteError), nanscope.watch(model, optimizer, report_path=str(path)):
        train()
    assert loads(path.read_text()).cause.kind == "nonfinite_input"
    model, optimizer, train = load("healthy_mlp").setup()
    with nanscope.watch(model, optimizer, report_path=str(path)):
        train()
    assert loads(path.read_text()).verdict == "healthy"


def test_a_closed_watcher_ignores_late_calls():
    model, optimizer, train = load("healthy_mlp").setup()
    watcher = nanscope.watch(model, optimizer)
    report = watcher.close()
    watcher.observe_batch(torch.full((2, 8), float("nan")))
    train()  # hooks are gone: nothing is watched, nothing raised
    assert watcher.close() is report and report.steps == 0


def test_constant_inf_mask_buffers_are_not_blamed_but_nan_buffers_are():
    class Masked(nn.Module):
        def __init__(self, poison: bool):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(4))
            if poison:
                self.mask[0, 0] = float("nan")

        def forward(self, x):
            return torch.softmax(self.lin(x) + self.mask, dim=-1)

    for poison in (False, True):
        torch.manual_seed(0)
        model = Masked(poison)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            with nanscope.watch(model, optimizer) as watcher:
                for _ in range(3):
                    (model(torch.randn(4, 4)) * torch.randn(4, 4)).sum().backward()
                    optimizer.step()
        except nanscope.NonFiniteError as exc:
            assert poison, exc.report.headline()
            assert exc.report.first_nonfinite.names == ("mask",)
        else:
            assert not poison and watcher.close().verdict == "healthy"


def _hooked(model):
    return [name for name, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks]


def test_models_found_at_the_first_backward_get_hooks_on_the_model_alone():
    """``watch(None, None)`` opened after the model and optimizer exist finds them at the first backward: that step's
    forward ran unhooked, which is not a loop calling submodules, so only the model is hooked (hooking
    its 18 submodules would cost two hook calls each per step); a loop that does call a submodule gets them
    hooked at its next backward."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(6)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 4)
    with nanscope.watch(None, None):
        for _ in range(3):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
        assert _hooked(model) == [""]
        optimizer.zero_grad()
        model[0](x).pow(2).mean().backward()  # the loop calls a submodule: its forwards were unseen
        optimizer.step()
        assert len(_hooked(model)) == 19  # the model and its submodules two levels deep (6 + 12)
    assert _hooked(model) == []
