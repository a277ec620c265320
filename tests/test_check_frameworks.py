"""``nanscope check`` on the same task under Lightning ``Trainer.fit``, HF ``Trainer.train`` and an accelerate
loop (tests/frameworks): the same findings under each, the dirty sample named, the script stopped before it
writes its results. The task's hand-written soft cross-entropy is ``-(t * log(softmax))``: ``log_of_softmax``
is a true finding there (its ``log_zero`` fault is that NaN), and its std branch is added to every logit
alike, which softmax cancels: that branch's weight gets a gradient ~1e-9 of the head's (``vanishing_gradients``,
measured, also true)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FRAMEWORKS = Path(__file__).parent / "frameworks"
BIN = Path(sys.executable).parent / "nanscope"

pytest.importorskip("lightning")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.frameworks

JOBS = ("lightning_job", "hf_job", "accelerate_job")


def _check(tmp_path: Path, job: str, fault: str) -> tuple[int, dict, Path]:
    out, marker = tmp_path / f"{job}.json", tmp_path / f"{job}.out"
    run = subprocess.run(
        [str(BIN), "check", "--quiet", "--json", str(out), f"{job}.py", "--fault", fault, "--epochs", "3",
         "--out", str(marker)],
        cwd=FRAMEWORKS, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.exists(), run.stderr
    return run.returncode, json.loads(out.read_text()), marker


@pytest.mark.parametrize("fault", ["none", "dirty"])
def test_every_framework_gives_the_same_findings(tmp_path, fault):
    found = {}
    for job in JOBS:
        code, report, marker = _check(tmp_path, job, fault)
        assert not marker.exists(), job  # stopped before it wrote its results
        assert report["environment"]["optimizer_steps"] == 21, job
        found[job] = (code, sorted((f["code"], f["severity"], f["samples"]) for f in report["findings"]))
    expected = [("log_of_softmax", "warning", None), ("vanishing_gradients", "warning", None)]
    if fault == "dirty":
        expected = sorted([*expected, ("nonfinite_samples", "error", [42])])
    want = (4 if fault == "dirty" else 0, expected)
    assert all(v == want for v in found.values()), found
