# Two entry points for a fresh machine (Python 3 + build tools):
#   make demo   set up .venv, start a head, run the agent example, stop the head
#   make test   set up .venv and run the full check (format, lint, types, tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test check bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/agent_workflow.py --start-head

test: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/check

bench: $(VENV)/.installed
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
