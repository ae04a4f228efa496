# Two commands for a fresh machine (Python 3.11, Node.js 20, npm):
#   make demo   the main job
#   make test   the whole test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lumeau-installed
NODE_STAMP := node_modules/.lumeau-installed

.PHONY: demo test bench setup clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Exact versions come from package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)
	$(VENV)/bin/lumeau demo

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/protocol.py --json

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis out build
