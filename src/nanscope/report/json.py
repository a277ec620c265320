"""The ``nanscope.report/1`` JSON form of a :class:`~nanscope.report.model.Report`.

JSON has no NaN or Infinity, so non-finite numbers are written as the strings ``"nan"``, ``"inf"`` and
``"-inf"`` (and read back as floats). Fields are only ever added, never renamed; see ``docs/report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanscope._atomic import atomic_write_text
from nanscope.report.model import (
    Cause,
    DatasetScan,
    Detection,
    EarlyWarning,
    Ending,
    Evidence,
    FirstNonFinite,
    History,
    Intervention,
    Outcome,
    RankSummary,
    Report,
)

__all__ = ["dumps", "loads", "to_dict", "to_plain", "write"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_plain(value: Any) -> Any:
    """Any value of the report family (frozen dataclasses, mappings, sequences, numbers) as JSON-ready data,
    non-finite floats as strings."""
    return _plain(value)


def to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data, ``schema`` first."""
    data = _plain(report)
    return {"schema": data.pop("schema"), **data}


def dumps(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def write(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves half a report behind."""
    return atomic_write_text(path, dumps(report))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return _NONFINITE[value] if isinstance(value, str) else float(value)


def _restore(value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def loads(text: str) -> Report:
    """Parse a ``nanscope.report/1`` document back into a :class:`Report`; unknown fields are ignored."""
    data = json.loads(text)
    if data.get("schema") != "nanscope.report/1":
        raise ValueError(f"not a nanscope.report/1 document (schema={data.get('schema')!r})")
    first = data.get("first_nonfinite")
    cause = data.get("cause")
    hist = data.get("history") or {}
    return Report(
        verdict=data["verdict"],
        first_nonfinite=None
        if first is None
        else FirstNonFinite(step=first["step"], where=first["where"], names=tuple(first["names"])),
        cause=None
        if cause is None
        else Cause(
            kind=cause["kind"],
            phase=cause["phase"],
            summary=cause["summary"],
            module=cause.get("module"),
            op=cause.get("op"),
            parameter=cause.get("parameter"),
            hyperparameter=cause.get("hyperparameter"),
            samples=None if cause.get("samples") is None else tuple(cause["samples"]),
            evidence=tuple(
                Evidence(e["label"], e["detail"], _restore(e.get("data", {})))
                for e in cause.get("evidence", [])
            ),
            rank=cause.get("rank"),
        ),
        suggestions=tuple(data.get("suggestions", ())),
        history=History(
            step=tuple(hist.get("step", ())),
            loss=tuple(_number(v) for v in hist.get("loss", ())),
            grad_norm=tuple(_number(v) for v in hist.get("grad_norm", ())),
            lr=tuple(_number(v) for v in hist.get("lr", ())),
            dropped=hist.get("dropped", 0),
        ),
        environment=data.get("environment", {}),
        policy=data.get("policy", "stop"),
        steps=data.get("steps", 0),
        detections=tuple(Detection(d["step"], d["where"]) for d in data.get("detections", ())),
        detections_dropped=data.get("detections_dropped", 0),
        interventions=tuple(
            Intervention(i["step"], i["kind"], i["detail"], _restore(i.get("data", {})))
            for i in data.get("interventions", ())
        ),
        early_warnings=tuple(
            EarlyWarning(
                step=w["step"],
                series=w["series"],
                value=float(_number(w["value"])),  # type: ignore[arg-type]
                baseline=float(_number(w["baseline"])),  # type: ignore[arg-type]
                score=float(_number(w["score"])),  # type: ignore[arg-type]
                layers=tuple(w.get("layers", ())),
                nonfinite_after=w.get("nonfinite_after"),
            )
            for w in data.get("early_warnings", ())
        ),
        outcome=None if data.get("outcome") is None else _outcome(data["outcome"]),
        watched_steps=data.get("watched_steps", 0),
        scaler_skipped_steps=data.get("scaler_skipped_steps", 0),
        ending=None if data.get("ending") is None else Ending(**data["ending"]),
        ranks=tuple(
            RankSummary(**{**r, "samples": None if r.get("samples") is None else tuple(r["samples"])})
            for r in data.get("ranks", ())
        ),
        dataset_scan=None
        if data.get("dataset_scan") is None
        else DatasetScan(**{**data["dataset_scan"], "dirty": tuple(data["dataset_scan"]["dirty"])}),
    )


def _outcome(data: dict[str, Any]) -> Outcome:
    known = {f.name for f in dataclasses.fields(Outcome)}
    values: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known
    }
    return Outcome(**values)
