"""The HTML reports, opened in a real headless Chromium: they render, log no console error, hold their parts.

Needs Debian's ``chromium`` package (``.ci/run`` installs it) and matplotlib (the ``html`` extra); skipped with
the reason where either is missing. Screenshots are kept in each test's tmp dir.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import nanscope
from conftest import load

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
)
pytest.importorskip("matplotlib", reason="HTML reports need matplotlib (the html extra)")

from nanscope.report import html  # noqa: E402

_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND"]


def open_in_chromium(page: Path, shots: Path) -> str:
    """The DOM Chromium rendered; fails on any console message of the page. A screenshot lands in ``shots``."""
    assert CHROMIUM is not None
    url = page.resolve().as_uri()
    dom = subprocess.run(
        [CHROMIUM, *_FLAGS, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    shot = shots / (page.stem + ".png")
    subprocess.run(
        [CHROMIUM, *_FLAGS, "--window-size=1200,1600", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    return dom.stdout


def self_contained(text: str) -> bool:
    """No resource the page would fetch: no src/href to another host, no script, no stylesheet link."""
    return not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) and "<script" not in text


def test_the_console_check_catches_a_page_error(tmp_path):  # the control for the checks below
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    with pytest.raises(AssertionError, match="undefinedFunction is not defined"):
        open_in_chromium(page, tmp_path)


def test_the_run_report_renders_with_cause_samples_history_and_advice(tmp_path):
    model, optimizer, train = load("dirty_inputs").setup()
    with pytest.raises(nanscope.NonFiniteError) as caught, nanscope.watch(model, optimizer):
        train()
    page = html.write(html.run_page(caught.value.report), tmp_path / "run.html")
    assert self_contained(page.read_text())
    dom = open_in_chromium(page, tmp_path)
    assert 'id="verdict"' in dom and "non-finite inputs at step 2" in dom
    assert re.search(r'<table id="cause">.*nonfinite_input', dom, re.S)
    assert re.search(r'<table id="samples">.*<td>37</td>.*<td>38</td>', dom, re.S)
    assert re.search(r'<div id="plot"><svg', dom) and 'id="suggestions"' in dom


def test_a_recovered_run_shows_what_nanscope_did(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "recovery"))
    import bad_batch_lm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanscope.watch(None, None, policy="skip") as watcher:
            bad_batch_lm.run()
    page = html.write(html.run_page(watcher.report()), tmp_path / "recovered.html")
    dom = open_in_chromium(page, tmp_path)
    assert re.search(r'<ul id="actions"><li>step 30: skip', dom)
    assert "domain_error" in dom and "<td>div</td>" in dom


def test_the_doctor_page_renders_the_curves_with_the_finding(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "curves"))
    import runs

    from nanscope.curves.readers import read
    from nanscope.detect.curves import report

    log = runs.classify_run(n_train=64, label_noise=0.3, hidden=256, epochs=60)
    curves = read(runs.write_keras_csv(log, tmp_path))
    page = html.write(html.curves_page(report(curves), curves), tmp_path / "doctor.html")
    assert self_contained(page.read_text())
    dom = open_in_chromium(page, tmp_path)
    assert re.search(r'id="verdict"[^>]*>overfitting since epoch', dom)
    assert re.search(r'<div id="plot"><svg', dom) and 'id="findings"' in dom and 'id="series"' in dom
