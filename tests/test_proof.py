"""Updates proven finite (nanscope.watching.proof): the bounds hold against real optimizers, the weights are
read where a premise fails, and a watched run reads them only every REREAD updates when every update is proven."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import nanscope
from nanscope.watching import checks, proof

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.5, momentum=0.9),
    dict(lr=0.3, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=2.0, momentum=0.5, dampening=0.3, weight_decay=0.5),
    dict(lr=1e6, momentum=0.99),  # diverges: the bounds grow past the limit and stop proving
]
ADAM_CONFIGS = [
    dict(lr=1e-3),
    dict(lr=0.5, betas=(0.5, 0.6), eps=1e-12, weight_decay=0.1),
    dict(lr=1e-2, amsgrad=True, eps=1e-30),
    dict(lr=10.0, betas=(0.0, 0.0), eps=1e-8),
]


def _steps(optimizer_cls, config, steps=60, scale=1.0, seed=0, groups=None):
    """Train a small model with ``optimizer_cls(**config)`` on gradients of size ``scale``; after each update,
    the bound advanced from the previous one (or anchored from an exact read) and the true maxima. ``groups``:
    one param group per tensor, each with its entries of the list's dicts (cycled) over ``config``."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    if groups:
        parts = [{"params": [p], **groups[i % len(groups)]} for i, p in enumerate(model.parameters())]
        opt = optimizer_cls(parts, **config)
    else:
        opt = optimizer_cls(model.parameters(), **config)
    params = [p for g in opt.param_groups for p in g["params"]]
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    bound = None
    out = []
    for step in range(steps):
        opt.zero_grad()
        (scale * nn.functional.mse_loss(model(x), y)).backward()
        grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        opt.step()
        weights = max(float(p.detach().abs().max()) for p in params)
        moments = proof.first_moments(opt, params)
        state = max((float(t.abs().max()) for t in moments), default=0.0)
        finite = all(bool(torch.isfinite(p).all()) for p in params)
        proven = proof.advance(bound, opt, params, step, grad_norm) if bound is not None else None
        out.append((step, proven, weights, state, finite))
        if proven is not None:
            bound = proven
        elif finite:  # what the read after an unproven update gives: exact per-tensor norms
            norms = [float(torch.linalg.vector_norm(p.detach().double())) for p in params]
            state_norms = [float(torch.linalg.vector_norm(t.double())) for t in moments]
            bound = proof.anchor(opt, params, step, norms, state_norms)
        else:
            bound = None
    return out


@pytest.mark.parametrize(
    ("cls", "config"),
    [(torch.optim.SGD, c) for c in SGD_CONFIGS]
    + [(torch.optim.Adam, c) for c in ADAM_CONFIGS]
    + [(torch.optim.AdamW, c) for c in ADAM_CONFIGS],
)
@pytest.mark.parametrize("scale", [1.0, 1e12])
def test_a_proven_update_left_the_weights_finite_and_within_the_bounds(cls, config, scale):
    proven = 0
    for step, bound, weights, state, finite in _steps(cls, config, scale=scale):
        if bound is None:
            continue
        proven += 1
        assert finite, f"step {step}: proven, but the update wrote NaN/Inf"
        assert weights <= bound.weights and state <= bound.state, (step, weights, bound)
    if config.get("lr", 0) < 1e3 and scale == 1.0:
        assert proven >= 50  # healthy: all but the anchoring reads are proven


def test_a_diverging_run_is_no_longer_proven_before_its_weights_overflow():
    results = _steps(torch.optim.SGD, dict(lr=1e6, momentum=0.99), steps=80)
    assert not results[-1][4] or any(b is None for _, b, *_ in results)  # it overflowed, unproven, or both
    for step, bound, *_rest, finite in results:
        if not finite:
            assert bound is None, f"step {step}"


@pytest.mark.parametrize(
    ("cls", "config", "why"),
    [
        (torch.optim.Adam, dict(lr=1e-3, eps=0.0), "eps=0 can divide 0 by 0"),
        (torch.optim.SGD, dict(lr=float("nan")), "a NaN learning rate"),
        (torch.optim.SGD, dict(lr=0.1, momentum=1.0), "momentum 1 never decays"),
        (torch.optim.AdamW, dict(lr=1e-3, betas=(1.0, 0.999)), "beta1 1: no bias correction"),
        (torch.optim.Adam, dict(lr=torch.tensor(float("inf"))), "an infinite tensor learning rate"),
    ],
)
def test_a_premise_that_fails_means_no_proof(cls, config, why):
    model = nn.Linear(3, 2)
    opt = cls(model.parameters(), lr=1e-3)
    params = [p for g in opt.param_groups for p in g["params"]]
    bound = proof.anchor(opt, params, 0, [1.0], [0.0])
    assert bound is not None
    assert proof.advance(bound, opt, params, 1, 1.0) is not None  # as constructed: proven
    opt.param_groups[0].update(config)  # (a scheduler may set any of these; the constructor refuses some)
    assert proof.advance(bound, opt, params, 1, 1.0) is None, why


def test_other_optimizers_half_precision_and_replaced_state_are_not_proven():
    model = nn.Linear(3, 2)
    params = list(model.parameters())

    class MySGD(torch.optim.SGD):  # a subclass may change the update
        pass

    assert proof.first_moments(torch.optim.RMSprop(params), params) is None
    assert proof.anchor(MySGD(params, lr=0.1), params, 0, [1.0], []) is None
    half = [p.detach().half().requires_grad_() for p in params]
    assert proof.first_moments(torch.optim.SGD(half, lr=0.1), half) is None

    opt = torch.optim.Adam(params, lr=1e-3)
    bound = proof.anchor(opt, params, 0, [1.0], [0.0])
    assert proof.advance(bound, opt, params, 1, None) is None  # the gradients were not read at the update
    assert proof.advance(bound, opt, params, 2, 1.0) is None  # a read delivered late: update 1 unbounded
    assert proof.advance(bound, opt, params, 1, float("inf")) is None
    assert proof.advance(bound, opt, list(params), 1, 1.0) is None  # another parameter list
    opt.load_state_dict(opt.state_dict())  # a new state mapping: the moments are unknown
    assert proof.advance(bound, opt, params, 1, 1.0) is None


def test_the_bounds_follow_the_update_rules():
    model = nn.Linear(3, 2)
    params = list(model.parameters())
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.5)
    bound = proof.anchor(sgd, params, 0, [2.0, 1.0], [3.0])
    after = proof.advance(bound, sgd, params, 1, 1.0)
    g = 1.0 * 1.01 + 0.5 * 2.0
    assert after.state == pytest.approx(0.9 * 3.0 + g)
    assert after.weights == pytest.approx(2.0 + 0.1 * (0.9 * 3.0 + g))
    assert after.since == 1

    adamw = torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    bound = proof.anchor(adamw, params, 0, [2.0], [0.5])
    after = proof.advance(bound, adamw, params, 1, 1.0)
    state = 0.8 * 0.5 + 0.2 * 1.01
    assert after.state == pytest.approx(state)
    by_eps = state / (0.2 * 1e-6)
    k = 0.2 / math.sqrt((1 - 0.8**2 / 0.99) * (1 - 0.99))  # Cauchy-Schwarz: the read moment decays
    by_ratio = (0.8 * 0.5 / 1e-6 + k) / 0.2
    assert by_ratio < by_eps
    assert after.weights == pytest.approx(2.0 * (1 + 0.01 * 0.1) + 0.01 * by_ratio)
    later = proof.advance(after, adamw, params, 2, 1.0)  # one more: the read moment's share decays by beta1
    assert later.weights == pytest.approx(
        after.weights * (1 + 0.001) + 0.01 * (0.8**2 * 0.5 / 1e-6 + k) / 0.2
    )


def _reads(optimizer, steps=250):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = optimizer(model.parameters())
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    calls = []
    real = checks.StepChecks._weights_ready

    def counted(self, it, *args):
        calls.append(it.step)
        return real(self, it, *args)

    checks.StepChecks._weights_ready = counted
    try:
        with nanscope.watch(model, opt):
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    finally:
        checks.StepChecks._weights_ready = real
    return calls, model


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
        lambda p: torch.optim.AdamW(  # a learning rate and a weight decay per tensor
            [{"params": [q], "lr": 1e-3 * (i + 1), "weight_decay": 0.01 * (i % 2)} for i, q in enumerate(p)]
        ),
    ],
)
def test_a_watched_run_reads_the_weights_at_the_first_update_and_every_reread_after(optimizer):
    calls, _ = _reads(optimizer)
    assert calls == [0, proof.REREAD, 2 * proof.REREAD]


@pytest.mark.parametrize(
    "optimizer",
    [lambda p: torch.optim.Adam(p, lr=1e-3, eps=0.0), lambda p: torch.optim.RMSprop(p, lr=1e-3)],
)
def test_an_unproven_update_is_read_every_step(optimizer):
    calls, _ = _reads(optimizer, steps=30)
    assert calls == list(range(30))


def test_healthy_weights_are_bitwise_the_same_with_the_proof():
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    for _ in range(250):
        opt.zero_grad()
        nn.functional.mse_loss(plain(x), y).backward()
        opt.step()
    _, watched = _reads(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_update_that_overflows_after_proven_ones_is_caught_at_its_step():
    """A learning rate set to 1e36 at step 5 (finite, so no hyperparameter check trips) times gradients of
    ~1e4 overflows float32: the bound says the update may overflow, the weights are read, and the overflow is
    the optimizer's, at step 5 (not the loss's at step 6)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1) + 1e4
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, opt):
        for step in range(10):
            if step == 5:
                opt.param_groups[0]["lr"] = 1e36
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    report = info.value.report
    assert report.cause.kind == "optimizer_update"
    assert report.first_nonfinite.step == 5


def _advanced(opt, params, norms=(2.0, 1.0), state=(3.0,)):
    bound = proof.anchor(opt, params, 0, list(norms), list(state))
    return proof.advance(bound, opt, params, 1, 1.0)


def test_groups_that_differ_in_learning_rate_only_are_bound_exactly_as_one_group_at_the_largest():
    model = nn.Linear(3, 2)
    params = list(model.parameters())
    for cls, config in [
        (torch.optim.SGD, dict(momentum=0.9, weight_decay=0.5)),
        (torch.optim.AdamW, dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
        (torch.optim.Adam, dict(weight_decay=0.1)),
    ]:
        grouped = cls([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": -0.3}], **config)
        one = cls(params, lr=0.3, **config)
        a, b = _advanced(grouped, params), _advanced(one, params)
        assert (a.weights, a.state) == (b.weights, b.state), cls


def test_groups_that_differ_in_the_rest_are_bound_by_the_worst_of_them():
    model = nn.Linear(3, 2)
    params = list(model.parameters())
    configs = [dict(weight_decay=0.1, betas=(0.9, 0.99)), dict(weight_decay=0.0, betas=[0.5, 0.9], eps=1e-12)]
    grouped = torch.optim.Adam([{"params": [p], **c} for p, c in zip(params, configs, strict=True)], lr=0.01)
    each = [_advanced(torch.optim.Adam(params, lr=0.01, **c), params) for c in configs]
    both = _advanced(grouped, params)  # (betas as a list in one group: compared, not hashed)
    assert both.weights == max(b.weights for b in each) and both.state == max(b.state for b in each)


def test_betas_changed_since_the_read_lose_the_refinement_even_when_swapped_between_groups():
    """The Cauchy-Schwarz refinement holds for a group whose betas are those of the read: two groups that
    swapped theirs have the read's set of rows but not their own."""
    model = nn.Linear(3, 2)
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [{"params": [params[0]], "betas": (0.8, 0.99)}, {"params": [params[1]], "betas": (0.5, 0.9)}],
        lr=0.01,
        eps=1e-6,
    )
    bound = proof.anchor(opt, params, 0, [2.0, 1.0], [0.5])
    refined = proof.advance(bound, opt, params, 1, 1.0)
    first, second = opt.param_groups
    first["betas"], second["betas"] = second["betas"], first["betas"]
    swapped = proof.advance(bound, opt, params, 1, 1.0)
    fresh = proof.advance(proof.anchor(opt, params, 0, [2.0, 1.0], [0.5]), opt, params, 1, 1.0)
    # without the refinement: W (1 + lr wd) + lr max over the groups of S' / ((1 - beta1) eps)
    by_eps = max((b1 * 0.5 + (1 - b1) * 1.01) / ((1 - b1) * 1e-6) for b1 in (0.8, 0.5))
    assert swapped.weights == pytest.approx(2.0 * (1 + 0.01 * 0.01) + 0.01 * by_eps)
    assert refined.weights < swapped.weights and fresh.weights < swapped.weights


def test_random_grouped_configs_never_prove_a_non_finite_update():
    rng = random.Random(1)
    proven = overflowed = 0
    for trial in range(12):
        cls = rng.choice([torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
        groups = [
            dict(lr=10 ** rng.uniform(-4, 6), weight_decay=rng.choice([0.0, 0.1, 5.0])) for _ in range(3)
        ]
        config = dict(momentum=0.9) if cls is torch.optim.SGD else dict(eps=10 ** rng.uniform(-30, -2))
        results = _steps(cls, config, steps=30, scale=10 ** rng.uniform(0, 12), seed=trial, groups=groups)
        for step, bound, weights, state, finite in results:
            overflowed += not finite
            if bound is not None:
                proven += 1
                assert finite and weights <= bound.weights and state <= bound.state, (trial, step, groups)
    assert proven > 50 and overflowed > 50  # (both kinds of run drawn: 98 proven, 163 overflowed)


def test_random_configs_never_prove_a_non_finite_update():
    rng = random.Random(0)
    for trial in range(30):
        cls = rng.choice([torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
        lr = 10 ** rng.uniform(-4, 8)
        if cls is torch.optim.SGD:
            config = dict(
                lr=lr, momentum=rng.choice([0.0, 0.5, 0.9, 0.999]), weight_decay=rng.choice([0, 0.1, 5])
            )
        else:
            config = dict(lr=lr, eps=10 ** rng.uniform(-30, -2), weight_decay=rng.choice([0, 0.1, 5]))
        for step, bound, weights, state, finite in _steps(
            cls, config, steps=40, scale=10 ** rng.uniform(0, 15), seed=trial
        ):
            if bound is not None:
                assert finite and weights <= bound.weights and state <= bound.state, (
                    trial,
                    cls,
                    config,
                    step,
                )


def test_tensor_hyperparameters_are_never_compared_by_value(monkeypatch):
    """``==`` on a tensor beta gives a tensor whose truth value is read from the device (a host-device sync
    per step on a GPU): the proof compares the groups' hyperparameters by identity and hashes them."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.Adam(
        [
            {"params": m.parameters(), "betas": (torch.tensor(0.9), torch.tensor(0.999)), "weight_decay": wd}
            for m, wd in zip(model, (0.0, 0.1), strict=True)
        ],
        lr=1e-3,
    )
    params = [p for g in opt.param_groups for p in g["params"]]
    bound = proof.anchor(opt, params, 0, [1.0] * len(params), [0.0])

    def refused(self):
        raise AssertionError("a tensor hyperparameter's truth value was read")

    monkeypatch.setattr(torch.Tensor, "__bool__", refused)
    after = proof.advance(bound, opt, params, 1, 1.0)
    assert after is not None and after.weights > bound.weights  # (CPU tensors: their values are read)
