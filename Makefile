# pymc: `make test` and `make bench` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: test bench lint memcached clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the declared dependencies change.
$(VENV)/.test-deps: setup.cfg setup.py | $(BIN)/python
	$(PIP) install -e '.[test]'
	touch $@

# mypy checks tests/ and benchmarks/ too, so it needs what they import (pytest, hypothesis, ...).
$(VENV)/.lint-deps: setup.cfg setup.py | $(BIN)/python
	$(PIP) install -e '.[test,lint]'
	touch $@

$(VENV)/.bench-deps: setup.cfg setup.py | $(BIN)/python
	$(PIP) install -e '.[bench]'
	touch $@

# memcached must be on PATH. As root with apt-get we install it; otherwise we say how, and stop.
memcached:
	@command -v memcached >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "memcached not found: installing it with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q memcached </dev/null || exit 2; \
	  else \
	    echo "memcached not found: install it (Debian/Ubuntu: sudo apt-get install memcached; macOS: brew install memcached) and run make again" >&2; \
	    exit 2; \
	  fi; }

test: $(VENV)/.test-deps memcached
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.lint-deps
	$(BIN)/ruff check pymc tests benchmarks
	$(BIN)/ruff format --check pymc tests benchmarks
	$(BIN)/mypy

bench: $(VENV)/.bench-deps memcached
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
