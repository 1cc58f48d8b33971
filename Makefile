# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export FLAN_MOE_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test test-slow lint format clean browser

$(VENV)/.installed: requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m flan_moe.cli.main

# Debian's chromium for the headless-browser tests (idempotent; see the script's header).
browser:
	bash scripts/install_browser.sh

test: $(VENV)/.installed-dev browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --durations=15

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 -m slow

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
