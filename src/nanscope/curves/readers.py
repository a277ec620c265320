"""Readers for the logs training tools write, each returning :class:`~nanscope.curves.model.Curves`.

``read(path)`` detects the format (a directory is searched for the files the tools write) and names it in the
result. Logs cut short (a run that crashed mid-write) are read as far as they go; what was skipped is listed in
``Curves.notes``. Anything else gets a :class:`~nanscope.errors.UsageError` that lists the supported formats.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from nanscope.curves.model import Curves, Series
from nanscope.errors import UsageError

__all__ = ["FORMATS", "read"]

#: format name -> what it is, for messages and ``--help``
FORMATS = {
    "lightning_csv": "PyTorch Lightning CSVLogger metrics.csv",
    "keras_csv": "Keras CSVLogger file (epoch, loss, val_loss, ...)",
    "keras_console": "Keras fit() console output (Epoch 1/10 ... - loss: ... - val_loss: ...)",
    "hf_trainer_state": "Hugging Face Trainer trainer_state.json",
    "tensorboard": "TensorBoard event files (events.out.tfevents.*; needs the tensorboard package)",
    "caffe": "Caffe solver text log (Iteration N, loss = ...)",
    "jsonl": "JSON Lines, one object per step ({'step': 10, 'loss': 0.5, ...})",
    "csv": "generic CSV with a step/epoch column (e.g. experiment-tracker exports)",
}

_STEP_KEYS = ("step", "_step", "global_step", "iteration", "iter", "trainer/global_step", "epoch")


def _supported() -> str:
    return "; ".join(f"{name}: {what}" for name, what in FORMATS.items())


def _number(text: object) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return float(text.strip().replace("-nan", "nan"))
    except ValueError:
        return None


class _Collector:
    def __init__(self) -> None:
        self.points: dict[str, list[tuple[float, float]]] = {}
        self.axes: dict[str, str] = {}

    def add(self, name: str, step: float, value: float, axis: str = "step") -> None:
        self.points.setdefault(name, []).append((step, value))
        self.axes.setdefault(name, axis)

    def curves(self, fmt: str, source: Path, notes: Iterable[str] = ()) -> Curves:
        series = tuple(
            Series(name, tuple(p[0] for p in pts), tuple(p[1] for p in pts), self.axes[name])
            for name, pts in self.points.items()
            if pts
        )
        if not series:
            raise UsageError(f"{source}: read as {FORMATS[fmt]}, but it holds no numeric series")
        return Curves(fmt, str(source), series, tuple(notes))


# ---------------------------------------------------------------- CSV family
def _rows(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    lines = text.splitlines()
    notes = []
    if text and not text.endswith("\n") and len(lines) > 2:  # its last cell may be cut short
        notes.append(f"the last line ({len(lines)}) has no line end (a truncated write): left out")
        lines = lines[:-1]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    rows = [r for r in reader if r]
    return [h.strip() for h in rows[0]], rows[1:], notes


def _read_csv(path: Path, text: str, fmt: str) -> Curves:
    header, rows, notes = _rows(text)
    lower = [h.lower() for h in header]
    axis = "step"
    step_col: int | None = 0
    if fmt == "keras_csv":
        axis = "epoch"
    else:
        found = [i for key in _STEP_KEYS for i, h in enumerate(lower) if h == key or h.endswith(" - " + key)]
        step_col = found[0] if found else None
        if step_col is not None and lower[step_col] == "epoch":
            axis = "epoch"
    skip = {step_col} | ({lower.index("epoch")} if fmt == "lightning_csv" and "epoch" in lower else set())
    out = _Collector()
    short = 0
    for n, row in enumerate(rows):
        step = _number(row[step_col]) if step_col is not None and step_col < len(row) else float(n)
        if step is None:
            continue
        if len(row) < len(header):
            short += 1
        for i, cell in enumerate(row[: len(header)]):
            if i in skip:
                continue
            value = _number(cell)
            if value is not None:
                out.add(header[i], step, value, axis)
    if short:
        notes.append(f"{short} row(s) shorter than the header: their missing cells are left out")
    return out.curves(fmt, path, notes)


# ---------------------------------------------------------------- JSON family
def _read_jsonl(path: Path, text: str) -> Curves:
    out = _Collector()
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            bad.append(n)
            continue
        if not isinstance(entry, dict):
            bad.append(n)
            continue
        key = next((k for k in _STEP_KEYS if isinstance(entry.get(k), (int, float))), None)
        step = float(entry[key]) if key else float(n - 1)
        axis = "epoch" if key == "epoch" else "step"
        for name, value in entry.items():
            number = _number(value) if name != key else None
            if number is not None and name not in ("epoch", "_runtime", "_timestamp", "timestamp"):
                out.add(name, step, number, axis)
    notes = (
        [f"line(s) {', '.join(map(str, bad[:10]))} are not JSON objects (truncated?): skipped"] if bad else []
    )
    return out.curves("jsonl", path, notes)


def _read_hf(path: Path, data: dict) -> Curves:
    out = _Collector()
    for entry in data.get("log_history", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), (int, float)):
            continue
        for name, value in entry.items():
            number = _number(value)
            if (
                number is not None
                and name not in ("step", "epoch", "total_flos")
                and not name.endswith(("_runtime", "_per_second"))
            ):
                out.add(name, float(entry["step"]), number)
    return out.curves("hf_trainer_state", path)


# ---------------------------------------------------------------- text logs
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+|nan|inf|-nan|NaN|Inf))"
_CAFFE_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_CAFFE_LR = re.compile(r"Iteration (\d+), lr = " + _NUM)
_CAFFE_TESTING = re.compile(r"Iteration (\d+), Testing net")
_CAFFE_OUTPUT = re.compile(r"(Train|Test) net output #\d+: (\S+) = " + _NUM)


def _read_caffe(path: Path, text: str) -> Curves:
    out = _Collector()
    iteration = 0.0
    for line in text.splitlines():
        if m := _CAFFE_LOSS.search(line):
            iteration = float(m.group(1))
            out.add("loss", iteration, float(m.group(2)))
        elif m := _CAFFE_LR.search(line):
            out.add("lr", float(m.group(1)), float(m.group(2)))
        elif m := _CAFFE_TESTING.search(line):
            iteration = float(m.group(1))
        elif (m := _CAFFE_OUTPUT.search(line)) and m.group(1) == "Test":  # train outputs repeat the loss line
            out.add(f"test/{m.group(2)}", iteration, float(m.group(3)))
    return out.curves("caffe", path)


_KERAS_EPOCH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s*$")
_KERAS_METRIC = re.compile(r"(?:^|\s-\s)([A-Za-z_][\w/]*): " + _NUM)


def _read_keras_console(path: Path, text: str) -> Curves:
    out = _Collector()
    epoch = None
    last: dict[str, float] = {}
    for line in re.split(r"[\r\n]+", text):
        if m := _KERAS_EPOCH.match(line):
            if epoch is not None:
                for name, value in last.items():
                    out.add(name, epoch, value, "epoch")
            epoch, last = float(m.group(1)), {}
            continue
        if epoch is not None and ("/step" in line or " - loss" in line or "ETA" in line):
            metrics = {k: float(v) for k, v in _KERAS_METRIC.findall(line) if k not in ("ETA",)}
            if metrics:
                last = metrics  # progress lines repeat; the last one of the epoch holds its values
    notes = []
    if epoch is not None and last:
        final = "val_loss" in last or not any(k.startswith("val_") for k in out.points)
        for name, value in last.items():
            out.add(name, epoch, value, "epoch")
        if not final:
            notes.append(f"epoch {epoch:g} ended without its validation values (a truncated log)")
    return out.curves("keras_console", path, notes)


# ---------------------------------------------------------------- TensorBoard
def _read_tensorboard(path: Path) -> Curves:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise UsageError(
            f"{path} holds TensorBoard event files; reading them needs the tensorboard package: "
            "pip install 'nanscope[tensorboard]'"
        ) from exc
    out = _Collector()
    files = [path] if path.is_file() else sorted(path.rglob("events.out.tfevents.*"))
    runs = {f.parent for f in files}
    for file in _progress(files, "reading TensorBoard event files"):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        # several runs (one folder each) in one directory: their tags are told apart by the folder
        prefix = "" if len(runs) == 1 else f"{file.parent.relative_to(path).as_posix()}/"
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                out.add(prefix + tag, float(event.step), float(event.value))
    return out.curves("tensorboard", path)


def _progress(items: list[Path], label: str) -> Iterable[Path]:
    """A rich progress bar for long inputs when rich is installed and there is more than a handful."""
    if len(items) < 4:
        return items
    try:
        from rich.console import Console
        from rich.progress import track
    except ImportError:
        return items
    return track(items, description=label, transient=True, console=Console(stderr=True))


# ---------------------------------------------------------------- detection
def _find_in_dir(path: Path) -> Path:
    """The log file a tool leaves in a run directory (the newest when there are several)."""
    for pattern in ("trainer_state.json", "metrics.csv"):
        found = sorted(path.rglob(pattern), key=lambda p: (p.stat().st_mtime, str(p)))
        if found:
            return found[-1]
    if any(path.rglob("events.out.tfevents.*")):
        return path
    candidates = [p for ext in ("*.jsonl", "*.csv", "*.log", "*.txt") for p in sorted(path.glob(ext))]
    if candidates:
        return candidates[0]
    raise UsageError(f"{path}: no training log found in this directory. Supported: {_supported()}")


def detect(path: Path) -> tuple[str, Path]:
    """``(format, file)`` for a log file or run directory."""
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        path = _find_in_dir(path)
        if path.is_dir():
            return "tensorboard", path
    if path.name.startswith("events.out.tfevents"):
        return "tensorboard", path
    head = path.read_bytes()[:65536]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("utf-8", errors="replace")
        if text.count("\ufffd") > len(text) // 10:
            raise UsageError(
                f"{path}: a binary file, not a training log. Supported: {_supported()}"
            ) from None
    stripped = text.lstrip()
    if stripped.startswith("{") and '"log_history"' in text:
        return "hf_trainer_state", path
    if stripped.startswith("{"):
        return "jsonl", path
    first = stripped.splitlines()[0] if stripped else ""
    if "," in first and not first.startswith("I1") and "Epoch" not in first:
        cols = [c.strip().lower() for c in first.split(",")]
        if cols[0] == "epoch" and "step" not in cols:
            return "keras_csv", path
        if "epoch" in cols and "step" in cols:
            return "lightning_csv", path
        return "csv", path
    if "solver.cpp" in text or _CAFFE_LOSS.search(text):
        return "caffe", path
    if re.search(r"^\s*Epoch \d+/\d+", text, re.M):
        return "keras_console", path
    raise UsageError(f"{path}: not a training log nanscope can read. Supported: {_supported()}")


def read(path: str | Path) -> Curves:
    """Read a log file or a run directory into :class:`Curves` (the format is detected)."""
    fmt, file = detect(Path(path))
    if fmt == "tensorboard":
        return _read_tensorboard(file)
    text = file.read_text(encoding="utf-8", errors="replace")
    readers: dict[str, Callable[[], Curves]] = {
        "lightning_csv": lambda: _read_csv(file, text, "lightning_csv"),
        "keras_csv": lambda: _read_csv(file, text, "keras_csv"),
        "csv": lambda: _read_csv(file, text, "csv"),
        "jsonl": lambda: _read_jsonl(file, text),
        "caffe": lambda: _read_caffe(file, text),
        "keras_console": lambda: _read_keras_console(file, text),
    }
    if fmt == "hf_trainer_state":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{file}: trainer_state.json is not valid JSON ({exc}); is it complete?"
            ) from exc
        return _read_hf(file, data)
    return readers[fmt]()
