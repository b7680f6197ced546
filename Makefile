# The two commands of the README: `make demo` (the main job) and `make test`.
# Each bootstraps .venv when it is missing: torch first (pinned), then motionrep with its dev extra.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.motionrep-installed
TORCH  := torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: demo test test-slow lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/motionrep demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" -n 2 --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
