"""Zero-code under the real frameworks (first slice): `nanscope run` on Lightning and HF Trainer scripts
gives the same report contract as on a plain loop. Each run is a fresh process under a timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nanscope.report.json import loads

FRAMEWORKS = Path(__file__).parent / "frameworks"

pytest.importorskip("lightning")
pytest.importorskip("transformers")


def _run(tmp_path: Path, script: str, *args: str) -> tuple[int, str, object]:
    out = tmp_path / "r.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nanscope",
            "run",
            "--quiet",
            "--json",
            str(out),
            str(FRAMEWORKS / script),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    return result.returncode, result.stderr, loads(out.read_text()) if out.exists() else None


def _shuffled_step(dirty: int, seed: int, batch: int = 8, n: int = 96) -> int:
    """Independent oracle: the position of the batch holding ``dirty`` in a DataLoader over range(n)."""
    order = DataLoader(
        range(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return next(step for step, rows in enumerate(order) if dirty in rows.tolist())


@pytest.mark.parametrize("clip", [None, "1.0"])
def test_lightning_dirty_sample_under_the_closure_and_clipping(tmp_path, clip):
    code, stderr, report = _run(tmp_path, "lightning_dirty.py", *([clip] if clip else []))
    assert code == 3, stderr
    assert report.cause.kind == "nonfinite_input" and report.first_nonfinite.where == "inputs"
    assert list(report.cause.samples) == [42]
    assert report.first_nonfinite.step == _shuffled_step(42, seed=1)
    clipped = [e for e in report.cause.evidence if e.label == "script clips"]
    assert (clipped[0].data["limit"] if clipped else None) == (float(clip) if clip else None)


def test_lightning_domain_error_is_replayed_inside_the_closure(tmp_path):
    code, stderr, report = _run(tmp_path, "lightning_log_zero.py")
    assert code == 3, stderr
    cause = report.cause
    assert (cause.kind, cause.phase, cause.op, cause.module) == ("domain_error", "loss", "log", None)
    assert list(cause.samples) == [17, 20] and report.first_nonfinite.step == 17 // 8


def test_hf_trainer_with_accumulation_and_prefetch_names_the_sample(tmp_path):
    oracle = subprocess.run(
        [sys.executable, str(FRAMEWORKS / "hf_dirty.py"), "--oracle"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    expected = int(oracle.stdout.split("oracle step")[1])
    code, stderr, report = _run(tmp_path, "hf_dirty.py")
    assert code == 3, stderr
    assert report.cause.kind == "nonfinite_input"
    assert list(report.cause.samples) == [42]
    assert report.first_nonfinite.step == expected


def test_accelerate_loop_with_accumulation_names_the_step_and_sample(tmp_path):
    pytest.importorskip("accelerate")
    code, stderr, report = _run(tmp_path, "accelerate_dirty.py")
    assert code == 3, stderr
    assert report.cause.kind == "nonfinite_input" and list(report.cause.samples) == [42]
    # the optimizer step that contains the culprit micro-batch (two micro-batches per step)
    assert report.first_nonfinite.step == _shuffled_step(42, seed=1) // 2
    assert [e.data["limit"] for e in report.cause.evidence if e.label == "script clips"] == [1.0]
