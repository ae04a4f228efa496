# Two commands for a fresh machine (Python 3.11, Node.js 20, npm):
#   make demo   the main job
#   make test   the whole test suite (what CI runs): `make lint`, then pytest
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lumeau-installed
NODE_STAMP := node_modules/.lumeau-installed

.PHONY: demo test lint pytest bench setup clean chromium openssl-headers mosquitto

setup: $(STAMP) $(NODE_STAMP) chromium mosquitto

# setup.py builds gateway._fastadmit (C, links OpenSSL's libcrypto): the stamp follows its sources.
$(STAMP): pyproject.toml setup.py gateway/_fastadmit.c | openssl-headers
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# Exact versions come from package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# tests/test_web_ui.py drives Debian's Chromium (package chromium); installed when missing (CI runs
# as root on Debian). Without apt-get the test fails saying so: it is never skipped.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "warning: $(CHROMIUM) is missing and apt-get (as root) is not available: tests/test_web_ui.py will fail" >&2; fi; }

# tests/test_upstream_mqtt.py starts Debian's MQTT broker (package mosquitto) on a free port, as the
# gateway's MQTT upstream's counterpart; installed when missing, as chromium is. Without it those tests
# fail saying so: they are never skipped.
MOSQUITTO := /usr/sbin/mosquitto
mosquitto:
	@test -x $(MOSQUITTO) || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's mosquitto for the MQTT upstream tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null; \
	  else echo "warning: $(MOSQUITTO) is missing and apt-get (as root) is not available: tests/test_upstream_mqtt.py will fail" >&2; fi; }

# gateway/_fastadmit.c includes OpenSSL's headers (Debian package libssl-dev; a fresh Debian 12 has the
# library, not the headers). Installed when missing, as chromium is; without them the extension is not
# built, the gateway falls back to its Python admission path and tests/test_gateway_admit_fast.py fails.
OPENSSL_H := /usr/include/openssl/sha.h
openssl-headers:
	@test -f $(OPENSSL_H) || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's libssl-dev for gateway/_fastadmit.c"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libssl-dev >/dev/null; \
	  else echo "warning: $(OPENSSL_H) is missing and apt-get (as root) is not available: gateway._fastadmit will not be built" >&2; fi; }

# The main job: a simulated district (60 street lights, 12 irrigation zones, 24 h, faults) running the
# real firmware against a real `lumeau gateway` process and `lumeau sink`; report in out/report.html.
demo: $(STAMP)
	$(VENV)/bin/lumeau demo --out out

test: lint pytest

# Lint and types (rules and their reasons: [tool.ruff] and [tool.mypy] in pyproject.toml). mypy checks the
# CPython packages here; protocol/ and firmware/ are checked against MicroPython's API by tests/test_typecheck.py.
MYPY_PATHS := gateway lumeau simulator bench $(wildcard city)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(MYPY_PATHS)

pytest: $(STAMP) $(NODE_STAMP) chromium mosquitto
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark in bench/, each printing one JSON object (figures: bench/README.md).
bench: $(STAMP) $(NODE_STAMP)
	@for b in bench/*.py; do echo "== $$b" >&2; $(PY) $$b --json || exit 1; done

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis out build
