"""The loop-shape matrix: the same report contract for every shape a training loop takes (tests/shapes).

Each shape is a plain-PyTorch script with one injected fault and its expected diagnosis (``EXPECT``), run
through the API and through ``nanscope run``; for the shapes with an optimizer, ``skip`` and ``rollback`` must
leave weights, optimizer state and buffers bitwise equal to the same run without the bad step's batches
(plus, where a shape says so in ``LOST_BATCHES``, the batches its in-loop replay costs).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import nanscope
from nanscope.report.json import loads
from test_scenarios_api import check

SHAPES = Path(__file__).parent / "shapes"
if str(SHAPES) not in sys.path:
    sys.path.insert(0, str(SHAPES))

NAMES = sorted(p.stem for p in SHAPES.glob("[a-z]*.py"))
WITH_SKIP_ORACLE = [n for n in NAMES if hasattr(importlib.import_module(n), "BAD_STEPS")]
WITH_SKIP_ORACLE = [n for n in WITH_SKIP_ORACLE if importlib.import_module(n).setup()[1] is not None]


def load(name: str):
    return importlib.import_module(name)


def expected(name: str) -> dict:
    shape = load(name)
    expect = dict(shape.EXPECT)
    if expect["step"] == "scaler":
        expect["step"] = _steps_before_dirty_batch(shape)
    return expect


def _steps_before_dirty_batch(shape) -> int:
    """Independent oracle for the GradScaler shape: optimizer steps really taken before the dirty batch."""
    model, optimizer, train = shape.setup()
    taken: list[int] = []
    handle = optimizer.register_step_post_hook(lambda *_: taken.append(1))
    batches = 0
    plain_next = torch.utils.data.dataloader._BaseDataLoaderIter.__next__
    seen: list[int] = []

    def counting(it):
        batch = plain_next(it)
        if not torch.isfinite(batch[0]).all() and not seen:
            seen.append(len(taken))
        return batch

    torch.utils.data.dataloader._BaseDataLoaderIter.__next__ = counting
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train()
    finally:
        torch.utils.data.dataloader._BaseDataLoaderIter.__next__ = plain_next
        handle.remove()
    del batches
    return seen[0]


@pytest.mark.parametrize("name", NAMES)
def test_api_reports_the_same_contract_on_every_loop_shape(name):
    model, optimizer, train = load(name).setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    check(info.value.report, expected(name))


@pytest.mark.parametrize("name", NAMES)
def test_zero_code_reports_the_same_contract_on_every_loop_shape(name, tmp_path):
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-m", "nanscope", "run", "--quiet", "--json", str(out), str(SHAPES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    check(loads(out.read_text()), expected(name))


def _without_steps(shape, steps: tuple[int, ...]) -> TensorDataset:
    per_step = getattr(shape, "ACCUMULATE", 1)
    return _without_batches(shape, tuple(b for s in steps for b in range(s * per_step, (s + 1) * per_step)))


def _without_batches(shape, batches: tuple[int, ...]) -> TensorDataset:
    data = shape.faulty()
    drop = {r for b in batches for r in range(b * 8, (b + 1) * 8)}
    keep = [i for i in range(len(data)) if i not in drop]
    return TensorDataset(*(t[keep] for t in data.tensors))


def _state(model, optimizer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        for k, v in state.items():
            out[f"opt.{i}.{k}"] = torch.as_tensor(v).clone()
    return out


@pytest.mark.parametrize("policy", ["skip", "rollback"])
@pytest.mark.parametrize("name", WITH_SKIP_ORACLE)
def test_skip_and_rollback_equal_the_run_without_the_bad_batch(name, policy):
    shape = load(name)
    lost = getattr(shape, "LOST_BATCHES", None)
    clean = _without_batches(shape, lost) if lost else _without_steps(shape, shape.BAD_STEPS)
    model, optimizer, train = shape.setup(clean)
    train()
    plain = _state(model, optimizer)

    model, optimizer, train = shape.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nanscope.NonFiniteWarning)
        with nanscope.watch(model, optimizer, policy=policy) as watcher:
            train()
    report = watcher.close()
    assert report.verdict == "nonfinite" and report.outcome is not None
    assert report.outcome.skipped_steps >= 1 and not report.outcome.gave_up
    recovered = _state(model, optimizer)
    assert plain.keys() == recovered.keys()
    for key, value in plain.items():
        assert torch.equal(value, recovered[key]), key


def test_script_clipping_is_reported_and_the_history_is_before_the_clip():
    shape = load("clipping_sqrt")
    model, optimizer, train = shape.setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    report = info.value.report
    clip = [e for e in report.cause.evidence if e.label == "script clips"]
    assert clip and clip[0].data == {"clip": "norm", "limit": shape.MAX_NORM}
    norms = [n for n in report.history.grad_norm if n is not None]
    assert norms and max(norms) > shape.MAX_NORM, "the history holds the clipped norms"


def test_clipping_advice_is_never_looser_than_the_scripts_own_clip():
    from nanscope.detect.advice import clip_hint
    from nanscope.report.model import History

    history = History(step=tuple(range(10)), grad_norm=(0.3,) * 10)
    assert "max_norm=0.6" in clip_hint(history)  # no clipping by the script: 2x the early median
    tight = clip_hint(history, ("norm", 0.1))
    assert "already clips at max_norm=0.1" in tight and "0.6" not in tight
    loose = clip_hint(history, ("norm", 10.0))
    assert "already clips at max_norm=10" in loose and "tighten it to 0.6" in loose


def test_no_optimizer_run_is_watched_by_backward_calls():
    shape = load("no_optimizer")
    model, _, train = shape.setup(_without_steps(shape, shape.BAD_STEPS))
    with nanscope.watch(model, None) as watcher:
        train()
    report = watcher.close()
    assert report.verdict == "healthy"
    assert report.watched_steps == report.steps == len(_without_steps(shape, shape.BAD_STEPS)) // 8
    assert len(report.history.loss) == report.steps and all(v is not None for v in report.history.grad_norm)


def test_gradscaler_skipped_steps_are_counted_not_failures():
    shape = load("grad_scaler_dirty")
    clean = _without_steps(shape, (70 // 8,))
    model, optimizer, train = shape.setup(clean)
    with nanscope.watch(model, optimizer) as watcher:
        train()
    report = watcher.close()
    assert report.verdict == "healthy", report.headline()
    assert report.scaler_skipped_steps > 0
    assert report.steps + report.scaler_skipped_steps == len(clean) // 8


def test_wrapped_optimizers_are_unwrapped():
    class Wrapper:  # the shape of accelerate's AcceleratedOptimizer / Lightning's LightningOptimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

        def step(self, closure=None):
            return self.optimizer.step(closure)

    shape = load("read_ahead_dirty")
    model, optimizer, train = shape.setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, Wrapper(optimizer)):
        train()
    check(info.value.report, expected("read_ahead_dirty"))


def _run_script(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    script = tmp_path / "script.py"
    script.write_text(text)
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, "-m", "nanscope", "run", "--json", str(out), str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, out


def test_a_run_with_nothing_to_watch_says_so(tmp_path):
    result, out = _run_script(tmp_path, "print('hello')\n")
    assert result.returncode == 0
    assert "nothing was watched" in result.stderr
    report = loads(out.read_text())
    assert report.verdict == "unwatched" and report.watched_steps == 0


def test_a_script_that_raises_says_so_in_the_report(tmp_path):
    result, out = _run_script(
        tmp_path,
        "import torch\n"
        "m = torch.nn.Linear(2, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "for i in range(3):\n"
        "    opt.zero_grad(); m(torch.ones(1, 2)).sum().backward(); opt.step()\n"
        "raise ValueError('bad config')\n",
    )
    assert result.returncode == 1
    assert "ValueError: bad config" in result.stderr
    report = loads(out.read_text())
    assert report.ending is not None
    assert (report.ending.kind, report.ending.exception, report.ending.step) == ("exception", "ValueError", 3)
    assert report.ending.nonfinite_seen is False
    assert "raised ValueError" in result.stderr


def test_no_false_witness_when_a_finite_output_would_overflow_a_float32_sum():
    shape = load("output_overflow")
    model, optimizer, train = shape.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nanscope.NonFiniteWarning)
        with nanscope.watch(
            model, optimizer, policy="warn"
        ) as watcher:  # no replay: the output check decides
            train()
    report = watcher.close()
    check(report, {**shape.EXPECT, **shape.EXPECT_WARN})
    assert [e.detail for e in report.cause.evidence if e.label == "model output"] == [
        "every tensor the model returned was finite"
    ]


def test_a_closed_watcher_refuses_reuse():
    model, optimizer, _ = load("read_ahead_dirty").setup()
    watcher = nanscope.watch(model, optimizer)
    watcher.close()
    assert watcher.state is nanscope.WatcherState.CLOSED
    with pytest.raises(nanscope.UsageError, match="cannot be reopened"), watcher:
        pass


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_reports_are_written_with_the_users_umask(tmp_path, umask):
    import os

    model, optimizer, train = load("read_ahead_dirty").setup()
    path = tmp_path / "r.json"
    old = os.umask(umask)
    try:
        with pytest.raises(nanscope.NonFiniteError), nanscope.watch(model, optimizer, report_path=str(path)):
            train()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_zero_code_names_ignore_weak_proxies_to_the_model():
    import weakref

    shape = load("clipping_sqrt")
    model, optimizer, train = shape.setup()
    holder = [weakref.proxy(model)]  # as Lightning keeps some: a proxy claims to be an nn.Module
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(None, None):
        train()
    assert list(info.value.report.first_nonfinite.names) == shape.EXPECT["names"]
    del holder


def test_own_batches_name_their_samples_through_observe_batch():
    shape = load("own_batches_sqrt")
    watchers: list[nanscope.Watcher] = []
    model, optimizer, train = shape.setup(observe=lambda batch, rows: watchers[0].observe_batch(batch, rows))
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer) as watcher:
        watchers.append(watcher)
        train()
    check(info.value.report, {**shape.EXPECT, "samples": [shape.CONSTANT]})


@pytest.mark.parametrize(
    "name", ["submodule_calls", "clipping_sqrt", "grad_scaler_dirty", "own_batches_sqrt"]
)
def test_every_hook_and_patch_is_removed_after_each_shape(name):
    from test_watch import assert_nothing_left

    model, optimizer, train = load(name).setup()
    with pytest.raises(nanscope.NonFiniteError), nanscope.watch(model, optimizer):
        train()  # submodules hooked after the first unseen micro-batch, clip and scaler patches used
    assert_nothing_left([model], [optimizer])
