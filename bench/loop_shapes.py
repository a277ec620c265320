"""Print what nanscope reports for each loop shape of ``tests/shapes`` (API, policy ``stop``).

    python bench/loop_shapes.py                       # every shape, with this checkout's nanscope
    PYTHONPATH=/tmp/before/src python bench/loop_shapes.py   # the same with another checkout's (before/after)

One line per shape: step, kind/phase, op, samples and the names of what was non-finite; for
``output_overflow`` also the phase under ``warn`` (no replay: the model-output check decides).
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path

SHAPES = Path(__file__).resolve().parent.parent / "tests" / "shapes"


def describe(name: str) -> str:
    import nanscope

    shape = importlib.import_module(name)
    model, optimizer, train = shape.setup()
    try:
        with nanscope.watch(model, optimizer) as watcher:
            train()
        report = watcher.close()
    except nanscope.NonFiniteError as exc:
        report = exc.report
    except Exception as exc:  # an old checkout may refuse a shape outright
        return f"{type(exc).__name__}: {exc}"[:120]
    cause, first = report.cause, report.first_nonfinite
    if cause is None or first is None:
        return report.verdict
    samples = list(cause.samples) if cause.samples else None
    text = f"step {first.step} {cause.kind}/{cause.phase} op={cause.op} samples={samples} names={list(first.names)[:3]}"
    if name == "output_overflow":
        model, optimizer, train = shape.setup()
        with nanscope.watch(model, optimizer, policy="warn") as watcher:
            train()
        warned = watcher.close().cause
        if warned is not None:
            output = "; ".join(e.detail for e in warned.evidence if e.label == "model output")
            text += f" | warn: phase={warned.phase} {output}"
    return text


def main() -> int:
    sys.path.insert(0, str(SHAPES))
    warnings.simplefilter("ignore")
    names = sys.argv[1:] or sorted(p.stem for p in SHAPES.glob("[a-z]*.py"))
    print(json.dumps({name: describe(name) for name in names}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
