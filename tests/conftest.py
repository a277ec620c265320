from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

SCENARIOS = Path(__file__).parent / "scenarios"
if str(SCENARIOS) not in sys.path:
    sys.path.insert(0, str(SCENARIOS))

ALL_SCENARIOS = sorted(p.stem for p in SCENARIOS.glob("[a-z]*.py"))
FAULTY = [name for name in ALL_SCENARIOS if "verdict" not in importlib.import_module(name).EXPECT]
HEALTHY = [name for name in ALL_SCENARIOS if name not in FAULTY]


def load(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def _no_leftover_patches():
    from nanscope.watching import patches

    yield
    assert patches.installed() == [], "a test left nanscope patches installed"
    assert patches.active() == ()


@pytest.fixture
def quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
