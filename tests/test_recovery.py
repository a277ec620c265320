"""Recovery policies: what they undo, what they keep, and that the measured runs finish where plain ones die."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import nanscope
from nanscope.detect.diagnose import Diagnosis
from nanscope.detect.spikes import SpikeDetector
from nanscope.recover import snapshot
from nanscope.recover.clip import ZClip
from nanscope.recover.policy import Action, ClipOptions, Event, RollbackOptions, make_policy, step_growth
from nanscope.report.model import Cause, FirstNonFinite

RECOVERY = Path(__file__).parent / "recovery"
if str(RECOVERY) not in sys.path:
    sys.path.insert(0, str(RECOVERY))


def job(name: str):
    return importlib.import_module(name)


def nanscope_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``nanscope run --quiet ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "nanscope", "run", "--quiet", *args], capture_output=True, text=True
    )


# ---------------------------------------------------------------- policy specs and decisions
@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("stop", "stop"),
        ("skip", "skip"),
        ("quarantine", "quarantine+skip"),
        ("rollback+quarantine", "quarantine+rollback"),
        ("clip", "clip+stop"),
        ("clip+quarantine+rollback", "quarantine+clip+rollback"),
    ],
)
def test_policy_specs_combine_one_handler_with_measures(spec, name):
    assert make_policy(spec).name == name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("skip+rollback", "combines skip and rollback: choose one"),
        ("quarantine+warn", "warn lets the failing update through"),
        ("skip+skip", "names a part twice"),
        ("rollbak", r"unknown policy part\(s\) 'rollbak'"),
    ],
)
def test_invalid_policies_fail_at_construction_with_the_reason(spec, message):
    with pytest.raises(nanscope.UsageError, match=message):
        make_policy(spec)
    with pytest.raises(nanscope.UsageError, match=message):
        nanscope.watch(nn.Linear(2, 1), None, policy=spec)


def _event(kind: str = "undetermined", samples=None, **kw) -> Event:
    cause = Cause(kind=kind, phase="loss", summary="s", samples=samples)
    diagnosis = Diagnosis(FirstNonFinite(3, "loss", ("loss",)), cause, ())
    base = dict(step=3, applied=False, consecutive=1, failures=1, steps=100, snapshot=True, first=True)
    return Event(diagnosis=diagnosis, **{**base, **kw})


def test_skip_gives_up_after_too_many_failures_and_cannot_undo_an_applied_update():
    policy = make_policy("skip")
    assert policy.decide(_event()).action is Action.SKIP
    gave_up = policy.decide(_event(consecutive=6))
    assert gave_up.action is Action.STOP and gave_up.reason.startswith("gave up: 6 failed steps in a row")
    assert policy.decide(_event(failures=11, steps=100)).action is Action.STOP  # > 10 % of the steps
    applied = policy.decide(_event(applied=True))
    assert applied.action is Action.STOP and "use rollback" in applied.reason


def test_rollback_skips_what_the_batch_explains_and_rolls_back_the_rest():
    policy = make_policy("quarantine+rollback")
    dirty = policy.decide(_event("nonfinite_input", samples=(4, 9)))
    assert dirty.action is Action.SKIP and dirty.quarantine == (4, 9)
    assert policy.decide(_event("gradient_explosion")).action is Action.ROLLBACK
    assert policy.decide(_event("optimizer_update", applied=True)).action is Action.ROLLBACK
    assert policy.decide(_event("gradient_explosion", snapshot=False)).action is Action.SKIP
    # a failure whose culprits get excluded is progress: it does not count towards giving up
    assert policy.decide(_event("nonfinite_input", samples=(5,), consecutive=9)).action is Action.SKIP


def test_rollback_escalates_repeated_op_failures_from_skip_to_rollback():
    policy = make_policy("rollback")
    assert policy.decide(_event("domain_error")).action is Action.SKIP  # once: the batch explains it
    # step after step: the weights drift (huge but finite), so the batch no longer explains it
    assert policy.decide(_event("domain_error", consecutive=2)).action is Action.ROLLBACK
    assert policy.decide(_event("domain_error", consecutive=2, snapshot=False)).action is Action.SKIP
    assert (
        policy.decide(_event("nonfinite_input", consecutive=3)).action is Action.SKIP
    )  # dirty data is exact


def test_a_not_reproducible_failure_is_retried_when_the_loop_replays_it():
    for spec in ("skip", "rollback"):
        policy = make_policy(spec)
        assert policy.decide(_event("not_reproducible", retryable=True)).action is Action.RETRY
        assert policy.decide(_event("not_reproducible")).action is Action.SKIP
    assert make_policy("stop").decide(_event("not_reproducible", retryable=True)).action is Action.STOP


def test_step_growth_fits_the_last_finite_steps_in_a_row():
    assert step_growth([1.0, 3.0, 9.0, 27.0, 81.0, math.nan, None]) == pytest.approx(3.0)
    assert step_growth([5.0, math.inf, 1.0, 2.0, 4.0, 8.0]) == pytest.approx(2.0)  # from after the gap
    assert step_growth([1.0, 2.0, math.nan]) is None  # too few
    assert step_growth([2.0] * 30, window=10) == pytest.approx(1.0)


# ---------------------------------------------------------------- skip
def _bn_job(bad_batch: int | None, drop: int | None = None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 6, generator=g), torch.randint(0, 3, (160,), generator=g)
    if bad_batch is not None:
        x[bad_batch * 16 + 5, 2] = math.nan
    dataset = TensorDataset(x, y)
    if drop is not None:
        dataset = Subset(dataset, [i for i in range(160) if i // 16 != drop])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    loader = DataLoader(dataset, batch_size=16)

    def train():
        for _ in range(2):
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()

    return model, opt, train


def test_a_skipped_step_changes_nothing_not_even_adam_moments_weight_decay_or_batchnorm_stats():
    ref_model, ref_opt, ref_train = _bn_job(None, drop=4)  # the same run without the bad batch
    ref_train()
    model, opt, train = _bn_job(bad_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, opt, policy="skip") as w:
            train()
    report = w.report()
    assert [i.kind for i in report.interventions] == ["skip", "skip"]  # the bad batch, in both epochs
    assert report.cause is not None and report.cause.samples == (69,)
    assert report.outcome is not None and report.outcome.skipped_steps == 2
    for key, value in ref_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    ref_state, state = ref_opt.state_dict()["state"], opt.state_dict()["state"]
    for p in ref_state:
        for k in ref_state[p]:
            assert torch.equal(ref_state[p][k], state[p][k]), (p, k)


# ---------------------------------------------------------------- snapshots
def _stateful():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale tensor exists from the first scale()
    state = snapshot.State(list(model.parameters()), list(model.buffers()), [opt], [sched], [scaler])
    return model, opt, sched, state


def test_a_snapshot_puts_back_weights_buffers_optimizer_scheduler_and_rng_exactly():
    model, opt, sched, state = _stateful()
    payload = snapshot.capture(state)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = json.dumps(str(opt.state_dict()))
    expected_rng = torch.rand(5)
    torch.set_rng_state(payload["rng"]["cpu"])
    (scaler,) = state.scalers
    scaler.update(new_scale=7.0)
    for _ in range(4):  # move everything on
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    snapshot.apply(payload, state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert json.dumps(str(opt.state_dict())) == expected_opt
    assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert torch.equal(torch.rand(5), expected_rng)
    assert scaler.get_scale() == 1024.0
    # the snapshot is not aliased by the restored optimizer: stepping on leaves it untouched
    saved = payload["optimizers"][0]["state"][0]["exp_avg"].clone()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved)
    assert torch.equal(payload["optimizers"][0]["state"][0]["exp_avg"], saved)


def test_adaptive_snapshot_spacing_is_a_quarter_of_the_run_between_confirm_and_max_every():
    store = snapshot.Snapshots(RollbackOptions())  # every=None: adaptive
    assert [store.spacing(s) for s in (0, 10, 40, 100, 199, 200, 5000)] == [10, 10, 10, 25, 49, 50, 50]
    assert snapshot.Snapshots(RollbackOptions(every=7)).spacing(1000) == 7
    _, _, _, state = _stateful()
    store.take(0, state)  # the recoverer takes the first one before the first update
    taken = [0]
    for step in range(1, 1000):
        if store.due(step):
            store.take(step, state)
            taken.append(step)
    gaps = [b - a for a, b in zip(taken, taken[1:], strict=False)]
    assert taken[:5] == [0, 10, 20, 30, 40]
    assert gaps == sorted(gaps) and min(gaps) >= 10 and max(gaps) == 50  # widening, then every 50


def test_a_rollback_goes_back_before_the_first_warning_of_the_episode():
    _, _, _, state = _stateful()
    store = snapshot.Snapshots(RollbackOptions(every=10, keep=2, confirm=2))
    store.take(0, state)
    store.take(10, state)
    store.confirm(12)
    store.hold = 15  # a spike at step 15: rotation keeps the newest good snapshot before it
    for step in (20, 30):
        store.take(step, state)
        store.confirm(step + 2)
    assert [s.step for s in store.items] == [10, 20, 30]  # the one before the spike is kept beyond keep=2
    assert store.best(before=15).step == 10 and store.best().step == 30
    store.hold = None
    store.confirm(40)
    assert [s.step for s in store.items] == [20, 30]


def test_rotation_never_drops_the_newest_good_snapshot(tmp_path):
    _, _, _, state = _stateful()
    store = snapshot.Snapshots(RollbackOptions(every=1, keep=2, confirm=3, directory=str(tmp_path)))
    store.take(0, state)
    store.confirm(3)  # snapshot 0 is good
    for step in (1, 2, 3):  # not confirmed yet
        store.take(step, state)
    assert [s.step for s in store.items] == [0, 3]
    assert store.best() is not None and store.best().step == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nanscope-snapshot-000000000.pt",
        "nanscope-snapshot-000000003.pt",
    ]
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_a_snapshot_leaves_the_previous_files_intact(tmp_path, monkeypatch):
    _, _, _, state = _stateful()
    store = snapshot.Snapshots(RollbackOptions(every=1, keep=3, directory=str(tmp_path)))
    store.take(0, state)
    before = (tmp_path / "nanscope-snapshot-000000000.pt").read_bytes()

    def crash(obj, fh):
        fh.write(b"half a snapshot")
        raise OSError("disk full")

    monkeypatch.setattr(snapshot.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        store.take(1, state)
    assert [p.name for p in tmp_path.iterdir()] == ["nanscope-snapshot-000000000.pt"]
    assert (tmp_path / "nanscope-snapshot-000000000.pt").read_bytes() == before


def test_rollback_restores_the_good_state_when_the_learning_rate_is_corrupted():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    policy = make_policy("rollback", rollback=RollbackOptions(every=5, confirm=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, opt, policy=policy) as w:
            for step in range(20):
                if step == 13:
                    opt.param_groups[0]["lr"] = math.nan  # a schedule bug
                loss = nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    report = w.report()
    (rollback,) = report.interventions
    assert rollback.kind == "rollback" and rollback.step == 13 and rollback.data["to_step"] == 10
    assert report.cause is not None and report.cause.kind == "invalid_hyperparameter"
    assert opt.param_groups[0]["lr"] == 0.05  # the optimizer's saved param groups came back
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert report.outcome is not None and report.outcome.steps_undone == 3


# ---------------------------------------------------------------- the measured runs (issue: a-d)
def _run(name: str, policy: str | None, **kwargs):
    module = job(name)
    if policy is None:
        return module.run(**kwargs), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(None, None, policy=policy) as w:
            result = module.run(**kwargs)
    return result, w.report()


def test_a_dirty_samples_are_quarantined_and_accuracy_matches_clean_data():
    died, _ = _run("dirty_classifier", None)
    clean, _ = _run("dirty_classifier", None, clean=True)
    kept, report = _run("dirty_classifier", "quarantine+rollback")
    assert not died["finite"]  # (d) plain PyTorch dies
    assert kept["finite"] and kept["accuracy"] >= clean["accuracy"] - 0.01
    assert report.outcome.quarantined == (300, 1201, 2950)
    assert report.outcome.rollbacks == 0  # dirty inputs: the batch explains it, so the step is only skipped


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0, 5.0, 10.0])
def test_b_a_too_high_learning_rate_is_rolled_back_and_converges(factor):
    """Least squares, full-batch SGD at 1.5x-10x the stability limit 2 / lambda_max: one back-off sized by
    the grad norm's growth (about 2x - 1 per step at x times the limit) puts the rate back under the limit."""
    died, _ = _run("lr_too_high", None, factor=factor)
    baseline, _ = _run("lr_too_high", None, factor=0.75)
    kept, report = _run("lr_too_high", "rollback", factor=factor)
    assert not died["finite"] or died["loss"] > 1e6  # (d)
    assert kept["finite"] and kept["loss"] <= 1.02 * baseline["loss"]
    rollbacks = [i for i in report.interventions if i.kind == "rollback"]
    assert rollbacks and len(rollbacks) == len(report.interventions) and len(rollbacks) <= 4
    first = rollbacks[0]
    assert first.data["to_step"] == 0 and first.data["growth"] > factor  # measured, not a fixed 0.5
    assert report.outcome.gave_up is False
    if factor <= 3:  # a slower divergence: a spike warning came before the first NaN
        spike = report.early_warnings[0]
        assert spike.series in ("loss", "grad_norm") and spike.nonfinite_after and spike.nonfinite_after > 0


@pytest.mark.parametrize("factor", [1.5, 2.5, 5.0, 10.0])
def test_b_a_too_high_learning_rate_of_an_mlp_with_momentum_is_rolled_back_and_converges(factor):
    died, _ = _run("mlp_too_high", None, factor=factor)
    clean, _ = _run("mlp_too_high", None, factor=1.0)
    kept, report = _run("mlp_too_high", "rollback", factor=factor)
    assert not died["finite"]  # (d)
    assert kept["finite"] and kept["loss"] <= 1.02 * clean["loss"]
    assert {i.kind for i in report.interventions} == {"rollback"} and not report.outcome.gave_up
    # each rollback went back before the spike that announced its failure, never to a later state
    for r in report.interventions:
        assert r.data["to_step"] < r.step


@pytest.mark.parametrize("policy", ["skip", "rollback"])
def test_c_a_bad_batch_in_a_transformer_lm_is_skipped_and_the_loss_matches_the_clean_run(policy):
    died, _ = _run("bad_batch_lm", None)
    clean, _ = _run("bad_batch_lm", None, clean=True)
    kept, report = _run("bad_batch_lm", policy)
    assert not died["finite"]  # (d)
    assert kept["finite"] and abs(kept["loss"] - clean["loss"]) <= 0.02 * clean["loss"]
    assert report.cause is not None and report.cause.kind == "domain_error" and report.cause.op == "div"
    assert [i.kind for i in report.interventions] == ["skip", "skip"]  # the batch, once per epoch


def test_the_cli_keeps_quarantined_samples_in_a_file_that_the_next_run_applies(tmp_path):
    file = tmp_path / "quarantine.json"
    script = str(RECOVERY / "dirty_classifier.py")
    options = ["--policy", "quarantine", "--quarantine", str(file)]
    first = nanscope_run(*options, "--json", str(tmp_path / "1.json"), script)
    assert first.returncode == 0, first.stderr
    saved = json.loads(file.read_text())
    assert saved["schema"] == "nanscope.quarantine/1"
    assert [s["index"] for s in saved["datasets"][0]["samples"]] == [300, 1201, 2950]
    second = nanscope_run(*options, "--json", str(tmp_path / "2.json"), script)
    assert second.returncode == 0, second.stderr
    report = json.loads((tmp_path / "2.json").read_text())
    assert report["verdict"] == "healthy"  # the dirty samples never reached the model
    assert json.loads(second.stdout)["accuracy"] >= json.loads(first.stdout)["accuracy"] - 0.01


# ---------------------------------------------------------------- early warning and clipping
def test_the_spike_detector_flags_a_jump_and_a_steady_blow_up_but_not_noise():
    g = torch.Generator().manual_seed(0)
    noise = SpikeDetector(ratio=2.0)
    noisy = [1.0 + 0.3 * float(v) for v in torch.rand(500, generator=g)]
    assert [v for v in noisy if noise.update(v)] == []
    jump = SpikeDetector(ratio=2.0)
    values = [1.0 + 0.05 * (i % 3) for i in range(40)] + [5.0]
    assert [i for i, v in enumerate(values) if jump.update(v)] == [40]
    growth = SpikeDetector(ratio=4.0)
    flagged = [i for i in range(60) if growth.update(1.3**i) and i < 60]
    assert flagged and flagged[0] <= 25


def test_zclip_learns_its_threshold_and_clips_outliers_only():
    clip = ZClip(ClipOptions(z=2.5, alpha=0.9, warmup=10))
    g = torch.Generator().manual_seed(0)
    norms = [0.9 + 0.2 * float(v) for v in torch.rand(50, generator=g)]  # bounded noise: never 2.5 std out
    assert [n for n in norms if clip.update(n)] == []
    assert clip.threshold is not None and 1.0 < clip.threshold < 2.0
    assert clip.update(50.0)
    assert clip.threshold < 3.0  # the outlier entered the statistics clipped


def test_clip_policy_scales_an_outlier_gradient_and_reports_the_clip_rate():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    with nanscope.watch(model, opt, policy="clip") as w:
        for step in range(60):
            scale = 1000.0 if step == 50 else 1.0
            loss = scale * nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            before = model.weight.detach().clone()
            opt.step()
            if step == 50:
                moved = float((model.weight.detach() - before).norm())
    outcome = w.report().outcome
    assert outcome is not None and outcome.clipped_steps == 1
    assert outcome.clip_rate == pytest.approx(1 / 60)
    assert moved < 0.01 * 10  # lr x a clipped norm of a few units, not lr x thousands


def test_healthy_runs_raise_no_early_warning():
    from conftest import HEALTHY, load

    for name in HEALTHY:
        model, optimizer, train = load(name).setup()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with nanscope.watch(model, optimizer) as w:
                train()
        assert w.report().early_warnings == (), name
        assert not [c for c in caught if issubclass(c.category, nanscope.SpikeWarning)], name


def test_a_policy_that_gives_up_stops_the_run_with_exit_3_and_says_why(tmp_path):
    script = str(Path(__file__).parent / "scenarios" / "lr_schedule_nan.py")
    out = tmp_path / "r.json"
    result = nanscope_run("--policy", "skip", "--json", str(out), script)
    assert result.returncode == 3, result.stderr
    report = json.loads(out.read_text())
    kinds = [i["kind"] for i in report["interventions"]]
    # the schedule sets the NaN again at the next step: a repeated hyperparameter failure ends the run
    assert kinds == ["skip", "give_up"]
    assert report["interventions"][-1]["detail"].startswith("gave up: lr broke the run again after recovery")
    assert report["outcome"]["gave_up"] is True and report["cause"]["kind"] == "invalid_hyperparameter"


def test_rollback_with_snapshots_on_disk_through_the_cli_leaves_no_files_behind(tmp_path):
    snapshots = tmp_path / "snaps"
    out = tmp_path / "r.json"
    lr_too_high = str(RECOVERY / "lr_too_high.py")
    options = ["--policy", "rollback", "--snapshot-every", "20", "--snapshot-dir", str(snapshots)]
    result = nanscope_run(*options, "--json", str(out), lr_too_high)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["finite"]
    report = json.loads(out.read_text())
    assert report["outcome"]["snapshots"] >= 600 // 20 and report["outcome"]["rollbacks"] >= 1
    assert list(snapshots.iterdir()) == []  # scratch state, removed at the end


def test_quarantine_works_with_shuffling_and_worker_processes(tmp_path):
    script = str(Path(__file__).parent / "scenarios" / "dirty_shuffled_workers.py")
    out = tmp_path / "r.json"
    result = nanscope_run("--policy", "quarantine", "--json", str(out), script)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # every dirty sample, quarantined at the first failure (the dataset scan found the others)
    assert report["outcome"]["quarantined"] == [5, 61, 100, 127]
    assert report["dataset_scan"]["dirty"] == [5, 61, 100, 127]
    assert [i["kind"] for i in report["interventions"]] == ["quarantine", "skip"]
    assert report["outcome"]["failed_steps"] == 1


def test_warnings_point_at_the_training_loop_not_at_nanscope():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with warnings.catch_warnings(record=True) as caught, nanscope.watch(model, opt, policy="skip"):
        warnings.simplefilter("always")
        for step in range(40):
            scale = math.nan if step == 30 else (1e4 if step == 25 else 1.0)
            loss = scale * nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()  # the NaN is seen here
            opt.step()  # spikes are read when the step completes
    ours = [c for c in caught if issubclass(c.category, (nanscope.NonFiniteWarning, nanscope.SpikeWarning))]
    assert {c.category for c in ours} == {nanscope.NonFiniteWarning, nanscope.SpikeWarning}
    assert {c.filename for c in ours} == {__file__}


class _LogSigmoidNet(nn.Module):
    """A hand-written log-sigmoid inside the model: log(0) = -inf once a logit is far below zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        return torch.log(torch.sigmoid(self.lin(x)))


def _log_sigmoid_run(corrupt_at: int | None, loud: int | None):
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(64, 4, generator=g)
    if loud is not None:
        x[loud] = torch.tensor([-400.0, 0.0, 0.0, 0.0])  # one sample whose logit underflows the sigmoid
    model = _LogSigmoidNet()
    with torch.no_grad():
        model.lin.weight.copy_(torch.tensor([[1.0, 0.2, -0.1, 0.3]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(x), batch_size=8)
    policy = make_policy("rollback", rollback=RollbackOptions(every=2, confirm=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(model, optimizer, policy=policy) as w:
            for step, (xb,) in enumerate(loader):
                if step == corrupt_at:
                    with torch.no_grad():
                        model.lin.weight.mul_(1e4)  # a corruption no check sees: the weights stay finite
                optimizer.zero_grad()
                (-model(xb).mean()).backward()
                optimizer.step()
    return w.report()


def test_rollback_asks_the_last_good_batch_whether_the_batch_or_the_weights_explain_a_failure():
    weights = _log_sigmoid_run(corrupt_at=4, loud=None)
    assert weights.cause.kind == "domain_error" and weights.cause.op == "log"
    (evidence,) = [e for e in weights.cause.evidence if e.label == "last good batch"]
    assert evidence.data == {"fails": True}
    assert weights.interventions[0].kind == "rollback"  # not skipped: the next batch would fail as well
    batch = _log_sigmoid_run(corrupt_at=None, loud=20)
    (evidence,) = [e for e in batch.cause.evidence if e.label == "last good batch"]
    assert evidence.data == {"fails": False}
    assert [i.kind for i in batch.interventions] == ["skip"]  # the batch explains it: only skipped
