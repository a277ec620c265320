"""CUDA behaviour (run where a GPU exists; skipped elsewhere): no host sync per step, same diagnoses."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nanscope

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def lm_and_data():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
    model = nn.Sequential(nn.Embedding(100, 64), nn.TransformerEncoder(layer, 2), nn.Linear(64, 100)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 100, (20, 8, 33), device="cuda")
    return model, optimizer, tokens


def train_steps(model, optimizer, tokens):
    for batch in tokens:
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 100), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_the_loop_itself_does_not_sync():  # the control for the next test
    model, optimizer, tokens = lm_and_data()
    train_steps(model, optimizer, tokens[:2])  # warm-up (lazy init may sync)
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_steps(model, optimizer, tokens[2:])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_always_on_checks_do_not_sync_the_host_per_step():
    model, optimizer, tokens = lm_and_data()
    train_steps(model, optimizer, tokens[:2])
    with nanscope.watch(model, optimizer) as watcher:
        train_steps(model, optimizer, tokens[2:4])  # first steps: one-time checks may sync
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_steps(model, optimizer, tokens[4:])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    report = watcher.close()
    assert report.verdict == "healthy"
    assert report.steps == 18 and all(v is not None for v in report.history.loss)


def test_healthy_cuda_run_is_bitwise_identical():
    states = []
    for watched in (False, True):
        model, optimizer, tokens = lm_and_data()
        if watched:
            with nanscope.watch(model, optimizer):
                train_steps(model, optimizer, tokens)
        else:
            train_steps(model, optimizer, tokens)
        states.append(({k: v.clone() for k, v in model.state_dict().items()}, torch.cuda.get_rng_state()))
    assert torch.equal(states[0][1], states[1][1])
    for key, value in states[0][0].items():
        assert torch.equal(value, states[1][0][key]), key


@pytest.mark.parametrize("eager", [False, True])
def test_dirty_samples_are_named_on_cuda(eager):
    torch.manual_seed(0)
    x, y = torch.randn(256, 16), torch.randn(256, 1)
    x[[70, 200]] = float("nan")
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=32,
        shuffle=True,
        num_workers=2,
        generator=torch.Generator().manual_seed(3),
    )
    oracle = DataLoader(range(256), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
    step, expected = next(
        (i, sorted(set(b.tolist()) & {70, 200})) for i, b in enumerate(oracle) if set(b.tolist()) & {70, 200}
    )
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer, eager=eager):
        for _ in range(2):
            for xb, yb in loader:
                xb, yb = xb.cuda(non_blocking=True), yb.cuda(non_blocking=True)
                loss = nn.functional.mse_loss(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    report = info.value.report
    assert report.cause.kind == "nonfinite_input"
    assert report.first_nonfinite.step == step
    assert list(report.cause.samples) == expected


def test_skip_on_cuda_discards_exactly_the_bad_batch():
    import warnings

    def job(bad: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(160, 6, generator=g), torch.randint(0, 3, (160,), generator=g)
        x[69, 2] = float("nan")
        batches = [(x[i : i + 16].cuda(), y[i : i + 16].cuda()) for i in range(0, 160, 16)]
        if not bad:
            del batches[4]
        return model, opt, batches

    def train(model, opt, batches):
        for xb, yb in batches:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()

    ref = job(bad=False)
    train(*ref)
    model, opt, batches = job(bad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, opt, policy="skip") as w:
            train(model, opt, batches)
    assert [i.kind for i in w.report().interventions] == ["skip"]
    for key, value in ref[0].state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_rollback_and_clip_on_cuda_without_a_sync_per_step():
    import warnings

    from nanscope.recover.policy import RollbackOptions, make_policy

    model, optimizer, tokens = lm_and_data()
    policy = make_policy("clip+rollback", rollback=RollbackOptions(every=4, confirm=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, optimizer, policy=policy) as w:
            train_steps(model, optimizer, tokens[:12])
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # snapshots (every 4 steps) copy to the host: not here
            try:
                train_steps(model, optimizer, tokens[13:15])
            finally:
                torch.cuda.set_sync_debug_mode("default")
            optimizer.param_groups[0]["lr"] = float("nan")
            train_steps(model, optimizer, tokens[15:20])
    report = w.report()
    assert [i.kind for i in report.interventions][:1] == ["rollback"]
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert all(torch.isfinite(p).all() for p in model.parameters())
