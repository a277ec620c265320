"""nanscope doctor: every format read, every verdict right on real generated runs, broken input refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nanscope.curves.readers import FORMATS, read
from nanscope.detect.curves import VERDICTS, classify
from nanscope.errors import UsageError

CURVES = Path(__file__).parent / "curves"
if str(CURVES) not in sys.path:
    sys.path.insert(0, str(CURVES))

import runs  # noqa: E402


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="TensorBoard runs need the tensorboard package (the dev extra)")
    return runs.generate(tmp_path_factory.mktemp("runs"))


def test_every_generated_run_is_classified_right_with_since_within_a_tenth_of_the_run(labeled):
    confusion: Counter[tuple[str, str]] = Counter()
    formats: Counter[str] = Counter()
    misses = []
    for name, verdict, fmt, path, log in labeled:
        curves = read(path)
        assert curves.format == fmt, name  # the format is detected and named
        formats[fmt] += 1
        diagnosis = classify(curves)
        confusion[verdict, diagnosis.verdict] += 1
        if diagnosis.verdict != verdict:
            misses.append(f"{name}: {verdict} read as {diagnosis.verdict}")
            continue
        if log.onset is not None:
            first, last = (runs.written_step(fmt, log, log.train[i][0]) for i in (0, -1))
            assert diagnosis.since is not None, name
            error = abs(diagnosis.since - runs.written_step(fmt, log, log.onset)) / (last - first)
            assert error <= 0.10, (
                f"{name}: since {diagnosis.since}, onset {log.onset} ({error:.0%} of the run)"
            )
    assert misses == []
    assert all(formats[f] >= 2 for f in FORMATS), formats  # every format used at least twice
    per_verdict = Counter(v for v, _ in confusion.elements())
    assert all(per_verdict[v] >= 2 for v in VERDICTS), per_verdict  # at least two runs per verdict


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_truncated_logs_are_read_as_far_as_they_go(tmp_path):
    csv_log = _write(
        tmp_path / "metrics.csv", "epoch,step,train_loss,val_loss\n0,9,1.0,\n0,9,,1.1\n1,19,0.8,\n1,19,0"
    )
    curves = read(csv_log)
    assert curves.format == "lightning_csv"
    assert curves.get("train_loss").values == (1.0, 0.8)  # type: ignore[union-attr]
    assert curves.get("val_loss").values == (1.1,)  # type: ignore[union-attr]
    assert any("truncated" in n for n in curves.notes)
    jsonl = _write(
        tmp_path / "m.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    )
    curves = read(jsonl)
    assert curves.get("loss").values == (2.0, 1.5)  # type: ignore[union-attr]
    assert curves.notes and "line(s) 3" in curves.notes[0]
    console = _write(
        tmp_path / "fit.txt",
        "Epoch 1/3\n4/4 [====] - 0s 2ms/step - loss: 1.2 - val_loss: 1.3\nEpoch 2/3\n2/4 [==>.] - ETA: 0s - loss: 0.9",
    )
    curves = read(console)
    assert curves.format == "keras_console"
    assert curves.get("loss").values == (1.2, 0.9)  # type: ignore[union-attr]
    assert curves.get("val_loss").values == (1.3,)  # type: ignore[union-attr]
    assert any("without its validation" in n for n in curves.notes)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"just some notes\nnothing numeric here\n",
            "not a training log nanscope can read. Supported: lightning_csv",
        ),
        (bytes(range(256)) * 8, "a binary file, not a training log"),
        (b'{"log_history": [{"step": 1, "loss": 2', "trainer_state.json is not valid JSON"),
        (b"epoch,loss\n", "holds no numeric series"),
    ],
)
def test_unreadable_input_gets_a_clear_error_that_lists_the_formats(tmp_path, content, message):
    path = tmp_path / "input.log"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        read(path)
    with pytest.raises(UsageError, match="no such file or directory"):
        read(tmp_path / "missing.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no training log found in this directory"):
        read(empty)


def test_doctor_cli_names_the_format_and_writes_the_contract(tmp_path, labeled):
    name, verdict, fmt, path, _ = next(r for r in labeled if r[1] == "overfitting")
    out = tmp_path / "curves.json"
    result = subprocess.run(
        [sys.executable, "-m", "nanscope", "doctor", str(path), "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"format: {fmt}" in result.stdout and f"verdict: {verdict}" in result.stdout
    data = json.loads(out.read_text())
    assert list(data)[:1] == ["schema"] and data["schema"] == "nanscope.curves/1"
    assert {"format", "series", "verdict", "since", "findings", "suggestions"} <= set(data)
    assert data["format"] == fmt and data["verdict"] == verdict and data["since"] is not None
    assert {s["role"] for s in data["series"]} >= {"train_loss", "val_loss"}
    bad = subprocess.run(
        [sys.executable, "-m", "nanscope", "doctor", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr


def test_a_tensorboard_directory_with_several_runs_keeps_them_apart(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package (the dev extra)")
    from torch.utils.tensorboard import SummaryWriter

    for run in range(5):  # more than a handful of files: read behind a progress bar on stderr
        writer = SummaryWriter(str(tmp_path / f"run{run}"))
        for step in range(10):
            writer.add_scalar("train/loss", 1.0 / (step + 1 + run), step)
        writer.close()
    curves = read(tmp_path)
    assert curves.format == "tensorboard"
    assert sorted(s.name for s in curves.series) == [f"run{r}/train/loss" for r in range(5)]
    assert curves.get("run3/train/loss").values[0] == pytest.approx(0.25)  # type: ignore[union-attr]


def test_keras_3_console_output_is_read_too(tmp_path):
    bar = "━" * 20
    text = "".join(
        f"Epoch {e + 1}/3\n\r 1/32 {bar} 0s 5ms/step - accuracy: 0.5 - loss: 9.9"
        f"\r32/32 {bar} 1s 5ms/step - accuracy: 0.{5 + e} - loss: {1.0 - 0.2 * e:.1f} - val_accuracy: 0.6"
        f" - val_loss: {1.1 - 0.2 * e:.1f}\n"
        for e in range(3)
    )
    curves = read(_write(tmp_path / "keras3.txt", text))
    assert curves.format == "keras_console"
    assert curves.get("loss").values == pytest.approx((1.0, 0.8, 0.6))  # type: ignore[union-attr]
    assert curves.get("val_loss").values == pytest.approx((1.1, 0.9, 0.7))  # type: ignore[union-attr]
    assert curves.get("loss").steps == (1.0, 2.0, 3.0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("train", "val", "lr"),
    [
        ("Loss/train", "Loss/val", "lr-SGD"),
        ("train/loss", "eval/loss", "train/learning_rate"),
        ("train_loss", "val_loss", "lr"),
        ("loss/training", "loss/validation", "learning_rate"),
        ("nanscope/loss", "validation_loss", "nanscope/lr"),
    ],
)
def test_the_ecosystems_tag_conventions_are_understood_in_tensorboard_logs(tmp_path, train, val, lr):
    pytest.importorskip("tensorboard", reason="needs the tensorboard package (the dev extra)")
    from torch.utils.tensorboard import SummaryWriter

    from nanscope.detect.curves import roles

    writer = SummaryWriter(str(tmp_path))
    for step in range(40):  # training falls, validation turns back up: overfitting
        writer.add_scalar(train, 2.0 / (1 + step), step)
        writer.add_scalar(val, 1.0 + abs(step - 15) / 15, step)
        writer.add_scalar(lr, 0.1, step)
    writer.close()
    curves = read(tmp_path)
    assert roles(curves) == {train: "train_loss", val: "val_loss", lr: "lr"}
    assert classify(curves).verdict == "overfitting"
