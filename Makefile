# tabxai: `make run` serves the embedded default, `make test` runs the whole suite.
# Both install into .venv first, pinned by constraints.txt.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints.txt

# The newest Python >= 3.12 on this machine (XGBoost >= 3.3 and shap >= 0.54 publish
# nothing for older ones). pyenv shims that exist but are not activated are skipped.
PYTHON_CANDIDATES := python3.14 python3.13 python3.12 python3 \
	$(shell ls -d $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] \
	/usr/bin/python3.1[2-9] 2>/dev/null | sort -rV)
PYTHON ?= $(shell for p in $(PYTHON_CANDIDATES); do \
	if $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; \
	then command -v $$p 2>/dev/null || echo $$p; break; fi; done)

.PHONY: run test lint fuzz bench-upload clean

run: $(VENV)/.installed
	$(VENV)/bin/tabxai serve

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# schemathesis against a real server: thousands of generated requests, no 5xx and only
# documented statuses. FUZZ_ARGS="--database-url postgresql+psycopg:///test --max-examples 300"
fuzz: $(VENV)/.installed-dev
	$(PY) -m bench.fuzz $(FUZZ_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check service models explainers tests bench migrations
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

$(VENV)/bin/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "tabxai needs Python 3.12 or newer (XGBoost >= 3.3 and shap >= 0.54 need it)," \
		     "and none was found: install python3.12 or python3.13, or run" \
		     "'make PYTHON=/path/to/python3.12 ...'." >&2; exit 1; fi
	@echo "using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/python pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) tabxai-data .pytest_cache .hypothesis
