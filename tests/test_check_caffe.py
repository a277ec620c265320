"""``nanscope check`` on Caffe files (issue 14): the protobuf text reader, caffe_lr_policy computed as Caffe's
SGDSolver::GetLearningRate does, caffe_pool_stride; healthy files give nothing; a broken file is a usage error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nanscope.preflight.caffe import check_file, learning_rate, parse

CAFFE = Path(__file__).parent / "preflight" / "caffe"
BIN = Path(sys.executable).parent / "nanscope"


def test_the_reader_keeps_nesting_repeats_strings_and_comments():
    data = parse((CAFFE / "pool_stride.prototxt").read_text())
    assert data["name"] == ["LeNetish"] and len(data["layer"]) == 4
    conv = data["layer"][1]
    assert conv["convolution_param"][0]["weight_filler"][0]["type"] == ["xavier"]
    assert data["layer"][0]["input_param"][0]["shape"][0]["dim"] == ["64", "1", "28", "28"]


def test_poly_without_max_iter_gives_a_nan_learning_rate():
    report = check_file(str(CAFFE / "poly_no_max_iter.prototxt"))
    (found,) = report.findings
    assert found.code == "caffe_lr_policy" and found.severity == "error" and not report.ok
    assert found.evidence["missing"] == ["max_iter"]
    assert "nan at iteration 0" in found.message  # (1 - 0/0)^0.9
    solver = parse((CAFFE / "poly_no_max_iter.prototxt").read_text())
    assert math.isnan(learning_rate(solver, 0)) and learning_rate(solver, 5) == math.inf


def test_a_missing_parameter_that_leaves_the_rate_finite_is_a_warning():
    (found,) = check_file(str(CAFFE / "inv_no_power.prototxt")).findings
    assert found.severity == "warning" and found.evidence["missing"] == ["power"]


def test_healthy_solvers_match_caffe_formulas_and_pass():
    for name in ("healthy_solver", "healthy_poly"):
        report = check_file(str(CAFFE / f"{name}.prototxt"))
        assert report.findings == () and report.checked == ("caffe_lr_policy",)
    step = parse((CAFFE / "healthy_solver.prototxt").read_text())
    assert learning_rate(step, 25000) == pytest.approx(0.01 * 0.1**2)
    poly = parse((CAFFE / "healthy_poly.prototxt").read_text())
    assert learning_rate(poly, 15000) == pytest.approx(0.001 * 0.5**0.9)


def test_pooling_stride_larger_than_the_kernel():
    report = check_file(str(CAFFE / "pool_stride.prototxt"))
    assert [(f.code, f.where) for f in report.findings] == [
        ("caffe_pool_stride", "pool_stride.prototxt: layer 'pool1'")
    ]
    assert report.findings[0].evidence == {"kernel": [2, 2], "stride": [3, 3]}
    healthy = check_file(str(CAFFE / "healthy_net.prototxt"))  # V1 layers, global pooling, kernel_h/_w
    assert healthy.findings == () and healthy.checked == ("caffe_pool_stride",)


def test_cli_exit_codes_and_json(tmp_path):
    out = tmp_path / "c.json"
    run = subprocess.run(
        [str(BIN), "check", "--json", str(out), str(CAFFE / "pool_stride.prototxt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 4 and json.loads(out.read_text())["findings"][0]["code"] == "caffe_pool_stride"
    ok = subprocess.run(
        [str(BIN), "check", str(CAFFE / "healthy_solver.prototxt")], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "no problem found" in ok.stderr
    bad = subprocess.run([str(BIN), "check", str(CAFFE / "broken.prototxt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "ends inside a message" in bad.stderr
