"""``nanscope run`` on unmodified scripts: same diagnosis as the API, and the script behaves as under python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAULTY, HEALTHY, SCENARIOS, load
from nanscope.report.json import loads
from test_scenarios_api import check


def nanscope(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanscope", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", FAULTY)
def test_zero_code_run_diagnoses_each_fault(name, tmp_path):
    out = tmp_path / "report.json"
    result = nanscope("run", "--json", str(out), str(SCENARIOS / f"{name}.py"))
    assert result.returncode == 3, result.stderr
    check(loads(out.read_text()), load(name).EXPECT, name)
    assert "nanscope report" in result.stderr


@pytest.mark.parametrize("name", HEALTHY)
def test_zero_code_run_of_healthy_controls_exits_0(name, tmp_path):
    out = tmp_path / "report.json"
    result = nanscope("run", "--json", str(out), str(SCENARIOS / f"{name}.py"))
    assert result.returncode == 0, result.stderr
    report = loads(out.read_text())
    assert report.verdict == "healthy"
    assert report.steps > 0 and len(report.history.step) == report.steps


def test_warn_policy_keeps_the_script_running_and_exits_with_its_code(tmp_path):
    out = tmp_path / "report.json"
    result = nanscope("run", "--policy", "warn", "--json", str(out), str(SCENARIOS / "dirty_inputs.py"))
    assert result.returncode == 0, result.stderr
    report = loads(out.read_text())
    assert report.verdict == "nonfinite" and report.policy == "warn"
    assert report.detections, "later non-finite steps are counted"


SCRIPT = """
import sys
print("argv", sys.argv)
print("name", __name__)
print("path0", sys.path[0])
print("err line", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_script_sees_plain_python_argv_name_path_and_exit_code(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    plain = subprocess.run([sys.executable, str(script), "7", "--lr", "0.1"], capture_output=True, text=True)
    watched = nanscope("run", "--quiet", str(script), "7", "--lr", "0.1")
    assert plain.returncode == watched.returncode == 7
    assert watched.stdout == plain.stdout
    assert "err line" in watched.stderr


def test_module_mode_runs_like_python_dash_m(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("import sys\nprint('args', sys.argv[1:], __name__)\n")
    result = nanscope("run", "--quiet", "-m", "pkg.train", "--epochs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "args ['--epochs', '2'] __main__"


def test_script_exception_exits_1_with_its_traceback(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("def f():\n    raise ValueError('bad config')\nf()\n")
    result = nanscope("run", "--quiet", str(script))
    assert result.returncode == 1
    assert "ValueError: bad config" in result.stderr
    assert "boom.py" in result.stderr and "runpy" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "script not found: missing.py"),
        (["run"], "give a script to run"),
        (["run", "--policy", "bogus", "x.py"], "unknown policy part(s) 'bogus'"),
        (["run", "--history", "0", "x.py"], "--history must be >= 1"),
        (["run", "--quiet", "-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
        ([], "usage: nanscope"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, message, tmp_path):
    (tmp_path / "x.py").write_text("")
    result = nanscope(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_help_and_version():
    assert nanscope("--help").returncode == 0
    assert "run a training script under watch" in nanscope("--help").stdout
    assert nanscope("run", "--help").returncode == 0
    assert nanscope("--version").stdout.startswith("nanscope ")


RUNNER = """
import sys, torch
sys.path.insert(0, {scenarios!r})
import healthy_mlp
model, optimizer, train = healthy_mlp.setup()
train()
torch.save({{"state": model.state_dict(), "opt": optimizer.state_dict(), "rng": torch.get_rng_state()}}, sys.argv[1])
"""


def test_healthy_run_is_bitwise_identical_with_and_without_nanscope(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(scenarios=str(SCENARIOS)))
    plain = subprocess.run(
        [sys.executable, str(runner), str(tmp_path / "plain.pt")], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    watched = nanscope("run", "--quiet", str(runner), str(tmp_path / "watched.pt"))
    assert watched.returncode == 0, watched.stderr
    a, b = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "watched.pt")
    assert torch.equal(a["rng"], b["rng"])
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    for pa, pb in zip(a["opt"]["state"].values(), b["opt"]["state"].values(), strict=False):
        for key in pa:
            assert torch.equal(torch.as_tensor(pa[key]), torch.as_tensor(pb[key]))


def test_demo_names_the_dirty_recordings(tmp_path):
    from nanscope.demo.job import Recordings

    out = tmp_path / "report.json"
    result = nanscope("demo", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = loads(out.read_text())
    assert report.cause.kind == "nonfinite_input"
    assert report.cause.samples and set(report.cause.samples) <= set(Recordings().dead)
    assert "dataset samples" in result.stderr
    assert "`nanscope check " in result.stderr and "(nonfinite_samples: every dataset sample" in result.stderr
    # the whole dataset was read after the diagnosis: every flat recording is named at once
    scan = report.dataset_scan
    assert scan is not None and scan.complete and scan.total == len(Recordings())
    assert scan.dirty == tuple(Recordings().dead)


def test_demo_with_worker_processes_names_the_same_samples(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert nanscope("demo", "--json", str(a), cwd=tmp_path).returncode == 0
    assert nanscope("demo", "--workers", "2", "--json", str(b), cwd=tmp_path).returncode == 0
    ra, rb = loads(a.read_text()), loads(b.read_text())
    assert ra.cause.samples == rb.cause.samples
    assert ra.first_nonfinite.step == rb.first_nonfinite.step


def test_demo_on_clean_data_is_healthy(tmp_path):
    out = tmp_path / "report.json"
    result = nanscope("demo", "--dead", "0", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert loads(out.read_text()).verdict == "healthy"
