# Two entry points: `make demo` and `make test`. Both set up .venv first (torch 2.13.0 CPU before the project,
# so pip never pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nanscope-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/nanscope demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/run.py
	$(BIN)/python bench/hot_path.py --out docs/performance-hot-path.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache nanscope-report.json
