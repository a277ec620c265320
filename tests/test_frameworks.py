"""Under the real frameworks (Lightning ``Trainer.fit``, the HF ``Trainer``, an accelerate loop): ``nanscope
run`` and the explicit callbacks give the plain-loop report contract, recover, and keep healthy runs
bitwise identical. Each run is a fresh process under a timeout; the jobs and their faults are in
``tests/frameworks`` (``_faults.py`` documents the task). About 4 minutes on the 2-core CI machine."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nanscope.report.json import loads

FRAMEWORKS = Path(__file__).parent / "frameworks"
sys.path.insert(0, str(FRAMEWORKS))
from _faults import BATCH, LR_JUMP_STEP, SEED, N  # noqa: E402

# the CPU index here serves a CUDA-only torchvision whose import breaks `import lightning`, which would turn
# the skips below into a silent skip of every framework test: fail the collection instead
if importlib.util.find_spec("torchvision") is not None:
    raise RuntimeError(
        "torchvision is installed in this environment: uninstall it (pip uninstall torchvision); nanscope's dev "
        "extras never need it, and the CPU index's build breaks `import lightning`"
    )

pytest.importorskip("lightning")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

pytestmark = pytest.mark.frameworks

# fault -> (kind, where, phase, op, samples named)
EXPECT = {
    "dirty": ("nonfinite_input", "inputs", "data", None),
    "nan_label": ("nonfinite_input", "inputs", "data", None),
    "log_zero": ("domain_error", "loss", "loss", "log"),
    "sqrt": ("singular_gradient", "gradients", "backward", "sqrt"),
    "lr": ("invalid_hyperparameter", "loss", "schedule", "log"),
}
BAD = {"dirty": (42,), "nan_label": (42,), "log_zero": (17, 20), "sqrt": (29,), "lr": ()}


def _python(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _run(tmp_path: Path, job: str, *args: str, options: tuple[str, ...] = ()) -> tuple[int, str, object]:
    out = tmp_path / "r.json"
    out.unlink(missing_ok=True)
    result = _python(
        tmp_path,
        "-m",
        "nanscope",
        "run",
        "--quiet",
        "--json",
        str(out),
        *options,
        str(FRAMEWORKS / job),
        *args,
    )
    return result.returncode, result.stderr, loads(out.read_text()) if out.exists() else None


def _first_bad_batch(fault: str) -> tuple[int, tuple[int, ...]]:
    """Independent oracle for the shuffled loaders (Lightning, accelerate): the position of the first batch
    holding a bad sample, and the bad samples in it."""
    order = DataLoader(
        range(N), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(SEED)
    )
    for position, rows in enumerate(order):
        hit = tuple(sorted(set(rows.tolist()) & set(BAD[fault])))
        if hit:
            return position, hit
    raise AssertionError(fault)


def _shuffled_expect(fault: str, args: tuple[str, ...]) -> tuple[int, tuple[int, ...] | None]:
    """The expected failing step and samples of a shuffled-loader job (Lightning, accelerate) run with
    ``args``: the bad batch's position over the micro-batches per step; the LR fault breaks after its jump."""
    if not BAD[fault]:
        return LR_JUMP_STEP + 1, None
    accumulate = int(args[args.index("--accumulate") + 1]) if "--accumulate" in args else 1
    position, hit = _first_bad_batch(fault)
    return position // accumulate, hit


def _hf_oracle(tmp_path: Path, fault: str, *args: str) -> tuple[int, tuple[int, ...]]:
    """The HF Trainer's own order (its seeded sampler), from a plain run: the optimizer steps done when a bad
    sample first reached ``training_step``, and the bad samples of that batch (matched by value)."""
    result = _python(tmp_path, str(FRAMEWORKS / "hf_job.py"), "--fault", fault, "--oracle", *args)
    words = result.stdout.split("oracle step")[1].split()  # "<step> samples <i,j>"
    return int(words[0]), tuple(int(s) for s in words[2].split(","))


def _check(report, fault: str, step: int, samples: tuple[int, ...] | None, module: str | None = None) -> None:
    kind, where, phase, op = EXPECT[fault]
    cause = report.cause
    assert (cause.kind, report.first_nonfinite.where, cause.phase, cause.op) == (kind, where, phase, op)
    assert report.first_nonfinite.step == step
    if fault == "sqrt":
        name = f"{module}.scale.weight" if module else "scale.weight"
        assert cause.module == module and report.first_nonfinite.names == (name,)
    if fault == "lr":
        assert cause.hyperparameter == "lr" and "lr jump" in [e.label for e in cause.evidence]
    assert (tuple(cause.samples) if cause.samples else None) == samples


LIGHTNING = [
    ("dirty", ("--workers", "2")),
    ("nan_label", ()),
    ("log_zero", ("--clip", "1.0")),
    ("sqrt", ("--accumulate", "2")),
    ("lr", ("--precision", "bf16-mixed")),
    ("dirty", ("--manual", "--clip", "1.0")),
    ("sqrt", ("--manual",)),
]


@pytest.mark.parametrize(("fault", "args"), LIGHTNING, ids=[f"{f}{''.join(a)}" for f, a in LIGHTNING])
def test_lightning_zero_code(tmp_path, fault, args):
    code, stderr, report = _run(tmp_path, "lightning_job.py", "--fault", fault, *args)
    assert code == 3, stderr
    _check(report, fault, *_shuffled_expect(fault, args), module="net")
    if "--clip" in args and "--manual" not in args:
        assert [e.data["limit"] for e in report.cause.evidence if e.label == "script clips"] == [1.0]


HF = [
    ("dirty", ("--accumulate", "2")),
    ("nan_label", ("--compute-loss", "--collator")),
    ("log_zero", ("--compute-loss", "--workers", "2")),
    ("sqrt", ("--max-grad-norm", "0")),
    ("lr", ()),
]


@pytest.mark.parametrize(("fault", "args"), HF, ids=[f"{f}{''.join(a)}" for f, a in HF])
def test_hf_trainer_zero_code(tmp_path, fault, args):
    step, samples = _hf_oracle(tmp_path, fault, *args) if BAD[fault] else (LR_JUMP_STEP + 1, None)
    code, stderr, report = _run(tmp_path, "hf_job.py", "--fault", fault, *args)
    assert code == 3, stderr
    _check(report, fault, step, samples, module="net")


ACCELERATE = [("dirty", ("--accumulate", "2")), ("log_zero", ()), ("sqrt", ()), ("lr", ())]


@pytest.mark.parametrize(("fault", "args"), ACCELERATE, ids=[f"{f}{''.join(a)}" for f, a in ACCELERATE])
def test_accelerate_zero_code(tmp_path, fault, args):
    code, stderr, report = _run(tmp_path, "accelerate_job.py", "--fault", fault, *args)
    assert code == 3, stderr
    _check(report, fault, *_shuffled_expect(fault, args), module=None)
    assert [e.data["limit"] for e in report.cause.evidence if e.label == "script clips"] == [1.0]


def _final(tmp_path: Path, name: str) -> tuple[dict[str, torch.Tensor], float]:
    weights = torch.load(tmp_path / f"{name}.pt")
    return weights, json.loads((tmp_path / name).read_text())["clean_loss"]


@pytest.mark.parametrize(
    ("job", "args"),
    [
        ("lightning_job.py", ("--precision", "bf16-mixed", "--accumulate", "2")),
        ("hf_job.py", ("--accumulate", "2", "--workers", "2")),
        ("accelerate_job.py", ("--accumulate", "2")),
        ("lightning_job.py", ("--callback", "--report", "cb.json")),
        ("hf_job.py", ("--callback", "--report", "cb.json")),
    ],
)
def test_healthy_runs_are_bitwise_identical_under_nanscope(tmp_path, job, args):
    plain = _python(tmp_path, str(FRAMEWORKS / job), "--out", "plain", "--epochs", "2", *args)
    assert plain.returncode == 0, plain.stderr
    if "--callback" in args:  # the plain run was the callback's: compare with a run without nanscope
        report = loads((tmp_path / "cb.json").read_text())
        bare = _python(tmp_path, str(FRAMEWORKS / job), "--out", "watched", "--epochs", "2")
        assert bare.returncode == 0, bare.stderr
    else:
        code, stderr, report = _run(tmp_path, job, "--out", "watched", "--epochs", "2", *args)
        assert code == 0, stderr
    assert report.verdict == "healthy" and report.watched_steps > 0
    a, _ = _final(tmp_path, "plain")
    b, _ = _final(tmp_path, "watched")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("job", ["lightning_job.py", "hf_job.py"])
@pytest.mark.parametrize(("policy", "fault"), [("skip", "sqrt"), ("quarantine+rollback", "dirty")])
def test_recovery_under_the_framework_ends_near_the_clean_run(tmp_path, job, policy, fault):
    clean = _python(tmp_path, str(FRAMEWORKS / job), "--out", "clean", "--epochs", "3")
    assert clean.returncode == 0, clean.stderr
    options = ("--policy", policy, "--snapshot-every", "2")
    code, stderr, report = _run(
        tmp_path, job, "--fault", fault, "--out", "rec", "--epochs", "3", options=options
    )
    assert code == 0, stderr
    _, clean_loss = _final(tmp_path, "clean")
    weights, loss = _final(tmp_path, "rec")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert abs(loss - clean_loss) / clean_loss < 0.03, (loss, clean_loss)
    # the warning points at the user's line (trainer.fit / trainer.train), not into the framework
    first = next(line for line in stderr.splitlines() if "non-finite" in line)
    assert first.startswith(f"{FRAMEWORKS / job}:"), first
    kinds = [i.kind for i in report.interventions]
    if policy == "skip":
        assert kinds and set(kinds) == {"skip"} and report.outcome.skipped_steps == len(kinds)
    else:  # quarantined at once: the sample never comes back, in the framework's own DataLoader
        assert report.outcome.quarantined == BAD[fault] and report.outcome.failed_steps == 1


def test_a_recurring_schedule_jump_gives_up_after_one_rollback(tmp_path):
    options = ("--policy", "rollback", "--snapshot-every", "2")
    code, stderr, report = _run(
        tmp_path, "lightning_job.py", "--fault", "lr", "--epochs", "3", options=options
    )
    assert code == 3, stderr
    assert [i.kind for i in report.interventions] == ["rollback", "give_up"]
    rollback = report.interventions[0]
    assert rollback.data["lr_factor"] == 0.5  # the back-off survived LambdaLR's recomputation from base_lrs
    assert report.history.lr[LR_JUMP_STEP + 1] == pytest.approx(0.05)


def test_a_stop_under_lightning_leaves_only_finite_checkpoints(tmp_path):
    # min_steps makes Lightning ignore should_stop and save last.ckpt: nanscope raises instead
    checkpoints = tmp_path / "ckpt"
    code, stderr, report = _run(
        tmp_path,
        "lightning_job.py",
        "--fault",
        "dirty",
        "--checkpoints",
        str(checkpoints),
        "--min-steps",
        "30",
    )
    assert code == 3 and report.verdict == "nonfinite", stderr
    saved = sorted(checkpoints.glob("*.ckpt"))
    assert saved and (checkpoints / "last.ckpt") in saved
    for path in saved:
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
    assert max(torch.load(p, weights_only=False)["global_step"] for p in saved) <= report.first_nonfinite.step


def test_a_stop_under_hf_saves_and_evaluates_no_nonfinite_weights(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    code, stderr, report = _run(
        tmp_path, "hf_job.py", "--fault", "dirty", "--save-steps", "1", "--eval-steps", "1"
    )
    assert code == 3 and report.verdict == "nonfinite", stderr
    saved = sorted((tmp_path / "out").glob("checkpoint-*/model.safetensors"))
    assert saved
    for path in saved:
        assert all(torch.isfinite(v).all() for v in safetensors.load_file(path).values()), path
    assert "eval_loss': 'nan" not in stderr and "eval_loss': nan" not in stderr


@pytest.mark.parametrize(("job", "module"), [("lightning_job.py", "net"), ("hf_job.py", "net")])
def test_the_explicit_callback_gives_the_zero_code_report(tmp_path, job, module):
    result = _python(tmp_path, str(FRAMEWORKS / job), "--fault", "sqrt", "--callback", "--report", "r.json")
    assert result.returncode == 1 and "nanscope.errors.NonFiniteError" in result.stderr, result.stderr
    report = loads((tmp_path / "r.json").read_text())
    step, samples = _hf_oracle(tmp_path, "sqrt") if job == "hf_job.py" else _shuffled_expect("sqrt", ())
    _check(report, "sqrt", step, samples, module=module)


@pytest.mark.parametrize(
    ("job", "save", "resume"),
    [
        ("lightning_job.py", ("--checkpoints", "ck"), "ck/last.ckpt"),
        ("hf_job.py", ("--save-steps", "12"), "out/checkpoint-12"),
    ],
)
def test_the_callback_state_travels_in_the_framework_checkpoint(tmp_path, job, save, resume):
    policy = ("--callback", "--policy", "quarantine+skip")
    first = _python(
        tmp_path, str(FRAMEWORKS / job), "--fault", "dirty", *policy, *save, "--report", "r1.json"
    )
    assert first.returncode == 0, first.stderr
    assert loads((tmp_path / "r1.json").read_text()).outcome.quarantined == (42,)
    again = _python(
        tmp_path, str(FRAMEWORKS / job), "--fault", "dirty", *policy, "--epochs", "3", "--resume", resume,
        "--report", "r2.json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    resumed = loads((tmp_path / "r2.json").read_text())
    # sample 42 stayed out of the resumed epochs: no new failure; the counters came back with the quarantine
    assert resumed.verdict == "healthy" and resumed.watched_steps == 24
    assert resumed.outcome.quarantined == (42,) and resumed.outcome.failed_steps == 1


def test_the_callback_works_with_the_standalone_pytorch_lightning_package_and_leaves_nothing(tmp_path):
    pytest.importorskip("pytorch_lightning")
    result = _python(tmp_path, str(FRAMEWORKS / "pytorch_lightning_callback.py"))
    assert result.returncode == 0, result.stderr
    caught, left = result.stdout.strip().splitlines()[-2:]
    assert caught == f"caught nonfinite_input [42] step {42 // BATCH} True"
    assert left == "left behind: []"  # every hook and patch removed when the fit raised


def test_accelerate_launch_runs_nanscope_run_as_a_module(tmp_path):
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        pytest.skip("no accelerate launcher next to this interpreter")
    result = subprocess.run(
        [str(launcher), "launch", "--cpu", "--num_processes", "1", "-m", "nanscope", "run", "--quiet"]
        + ["--json", "r.json", str(FRAMEWORKS / "accelerate_job.py"), "--fault", "sqrt"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    # accelerate's launcher reports the child's exit 3 as its own failure (CalledProcessError, exit 1)
    assert result.returncode != 0 and "returned non-zero exit status 3" in result.stderr, result.stderr
    report = loads((tmp_path / "r.json").read_text())
    _check(report, "sqrt", *_shuffled_expect("sqrt", ()), module=None)


def _scalars(directory: Path) -> tuple[list[Path], dict[str, list[tuple[int, float]]], dict[str, list[str]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(directory.rglob("events.out.tfevents.*"))
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[str]] = {}
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:
            texts[tag.removesuffix("/text_summary")] = [
                e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)
            ]
    return files, scalars, texts


@pytest.mark.parametrize(("job", "logdir"), [("lightning_job.py", "tb"), ("hf_job.py", "out/runs")])
def test_nanscope_writes_into_the_frameworks_own_tensorboard_writer(tmp_path, job, logdir):
    pytest.importorskip("tensorboard")
    options = ("--callback", "--policy", "skip", "--tensorboard", "--report", "r.json")
    result = _python(tmp_path, str(FRAMEWORKS / job), "--fault", "dirty", *options)
    assert result.returncode == 0, result.stderr
    step = loads((tmp_path / "r.json").read_text()).first_nonfinite.step
    files, scalars, texts = _scalars(tmp_path / logdir)
    assert len(files) == 1  # the framework's writer: no second event file in its run directory
    loss = scalars["nanscope/loss"]
    # the NaN loss as it was (HF's filter would log the running average); the skipped step's index is
    # logged again by the iteration that redoes it
    assert [s for s, v in loss if v != v] == [step] and [s for s, _ in loss].count(step) == 2
    assert scalars["nanscope/skipped_steps"][-1][1] == 1 and "nanscope/grad_norm" in scalars
    assert texts["nanscope/first_nonfinite"][0].startswith(f"non-finite inputs at step {step}")
    assert texts["nanscope/interventions"][0].startswith(f"step {step}: skip")


def test_nanscope_run_tensorboard_never_shares_a_live_run_directory(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    board = tmp_path / "board"
    SummaryWriter(str(board)).close()  # a run already writes here
    code, stderr, report = _run(
        tmp_path, "accelerate_job.py", "--fault", "sqrt", options=("--tensorboard", str(board))
    )
    assert code == 3, stderr
    files, scalars, _ = _scalars(board / "nanscope")
    assert len(files) == 1 and len(scalars["nanscope/loss"]) == report.first_nonfinite.step + 1
