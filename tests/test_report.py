"""The report contract nanscope.report/1: JSON form, round trip, and the text a person reads."""

from __future__ import annotations

import json
import math

import pytest

import nanscope
from conftest import load
from nanscope.report import dumps, loads, render_text, to_dict, write
from nanscope.report.model import Cause, Evidence, FirstNonFinite, History, Report

CONTRACT_KEYS = ["schema", "verdict", "first_nonfinite", "cause", "suggestions", "history", "environment"]
CAUSE_KEYS = [
    "kind",
    "phase",
    "module",
    "op",
    "parameter",
    "hyperparameter",
    "samples",
    "summary",
    "evidence",
]


def failing_report() -> Report:
    model, optimizer, train = load("dirty_inputs").setup()
    with pytest.raises(nanscope.NonFiniteError) as info, nanscope.watch(model, optimizer):
        train()
    return info.value.report


def test_json_has_every_contract_field():
    data = to_dict(failing_report())
    assert list(data)[0] == "schema" and data["schema"] == "nanscope.report/1"
    assert set(CONTRACT_KEYS) <= set(data)
    assert set(CAUSE_KEYS) <= set(data["cause"])
    assert set(data["first_nonfinite"]) == {"step", "where", "names"}
    assert {"step", "loss", "grad_norm", "lr"} <= set(data["history"])


def test_nonfinite_numbers_are_strings_and_the_round_trip_is_exact():
    report = failing_report()
    text = dumps(report)
    data = json.loads(text)  # strict JSON: no NaN literals
    assert data["history"]["loss"][-1] == "nan"
    back = loads(text)
    assert math.isnan(back.history.loss[-1])
    assert back.cause == report.cause and back.first_nonfinite == report.first_nonfinite
    assert back.history.step == report.history.step


def test_write_is_atomic_and_creates_folders(tmp_path):
    path = write(failing_report(), tmp_path / "deep" / "r.json")
    assert loads(path.read_text()).verdict == "nonfinite"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_loads_refuses_other_documents():
    with pytest.raises(ValueError, match="not a nanscope.report/1 document"):
        loads('{"schema": "something/2"}')


def test_text_names_step_cause_samples_and_fixes():
    text = render_text(failing_report())
    assert "non-finite inputs at step 2" in text
    assert "cause: nonfinite_input  (phase: data)" in text
    assert "dataset samples: 37, 38" in text
    # the batch holds 37 and 38; the dataset scan after the diagnosis finds 90 too
    assert "what to do:" in text and "1. Repair or drop dataset samples [37, 38, 90]" in text
    assert "dataset scan: 3 sample(s) of TensorDataset hold NaN/Inf: 37, 38, 90" in text


def test_healthy_text():
    report = Report(
        "healthy",
        None,
        None,
        (),
        History(step=(0, 1), loss=(1.0, 0.5), grad_norm=(2.0, 1.0), lr=(0.1, 0.1)),
        {},
        steps=2,
    )
    assert render_text(report) == (
        "nanscope report\nhealthy - 2 steps watched, no NaN/Inf seen\n"
        "last step 1: loss 0.5, grad norm 1, lr 0.1\n"
    )


def test_values_are_validated():
    with pytest.raises(ValueError, match="kind='bogus'"):
        Cause(kind="bogus", phase="data", summary="")
    with pytest.raises(ValueError, match="where='weights'"):
        FirstNonFinite(0, "weights", ())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only a nonfinite report has a first_nonfinite"):
        Report("healthy", FirstNonFinite(0, "loss", ()), None, (), History(), {})


def test_evidence_data_survives_json():
    cause = Cause("undetermined", "loss", "s", evidence=(Evidence("a", "b", {"x": float("inf")}),))
    report = Report("nonfinite", FirstNonFinite(1, "loss", ("loss",)), cause, ("fix",), History(), {})
    assert loads(dumps(report)).cause.evidence[0].data == {"x": math.inf}
