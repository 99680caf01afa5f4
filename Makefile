# pymc: `make test` and `make bench` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: test test-unit test-all bench lint memcached nutcracker libmemcached-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the declared dependencies change.
$(VENV)/.test-deps: setup.cfg setup.py pymc/protocol/speedups.c | $(BIN)/python
	$(PIP) install -e '.[test]'
	touch $@

# mypy checks tests/ and benchmarks/ too, so it needs what they import (pytest, hypothesis, ...).
$(VENV)/.lint-deps: setup.cfg setup.py pymc/protocol/speedups.c | $(BIN)/python
	$(PIP) install -e '.[test,lint]'
	touch $@

# The asyncio peers (only for `make bench`, never pymc's dependencies): each is installed on
# its own, and one that cannot be (no wheel, no compiler) leaves its cases out with a note.
BENCH_ASYNC_PEERS ?= 'aiomcache>=0.8' 'emcache>=1.3' 'uvloop>=0.19'

$(VENV)/.bench-deps: setup.cfg setup.py pymc/protocol/speedups.c Makefile | $(BIN)/python
	$(PIP) install -e '.[bench,asyncio]'
	@for peer in $(BENCH_ASYNC_PEERS); do \
	  $(PIP) install "$$peer" || echo "make bench: $$peer could not be installed: its cases are left out"; \
	done
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

# twemproxy (Debian's nutcracker, in /usr/sbin) runs in the suite: the tests that need it
# fail without it. As root with apt-get we install it; otherwise we say how, and stop.
nutcracker:
	@command -v nutcracker >/dev/null 2>&1 || [ -x /usr/sbin/nutcracker ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "nutcracker (twemproxy) not found: installing it with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nutcracker </dev/null || exit 2; \
	  else \
	    echo "nutcracker (twemproxy) not found: install it (Debian/Ubuntu: sudo apt-get install nutcracker; macOS: brew install twemproxy) and run make again" >&2; \
	    exit 2; \
	  fi; }

# pylibmc (a test dependency) has wheels for some Pythons only; for the others pip compiles it
# against libmemcached's and zlib's headers. As root with apt-get we install them; otherwise
# we say how, and stop.
libmemcached-dev:
	@[ -e /usr/include/libmemcached/memcached.h ] && [ -e /usr/include/zlib.h ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "libmemcached headers not found: installing libmemcached-dev with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libmemcached-dev zlib1g-dev \
	      </dev/null || exit 2; \
	  else \
	    echo "libmemcached headers not found: install them (Debian/Ubuntu: sudo apt-get install libmemcached-dev zlib1g-dev; macOS: brew install libmemcached) and run make again" >&2; \
	    exit 2; \
	  fi; }

# The suite (tests/unit and tests/integration) runs twice: first with the compiled reader
# (pymc.speedups, when the install could build it), then with the pure-Python one (PYMC_NO_EXTENSIONS=1). Each pass spreads the tests
# over PYTEST_WORKERS pytest-xdist workers (4: most tests wait on servers, sleeps and timeouts,
# not on the CPU, so 4 workers on 2 cores take each pass from about 6 minutes to under 3).
# PYTEST_WORKERS=0 runs in one process. Without a built module the first pass already ran
# pure Python, and the second is skipped.
PYTEST_WORKERS ?= 4
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),-p no:xdist,-n $(PYTEST_WORKERS))

test: $(VENV)/.test-deps memcached nutcracker
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)
	@if $(BIN)/python -c "import pymc, sys; sys.exit(not pymc.__speedups__)"; then \
	  echo "make test: again with the pure-Python reader (PYMC_NO_EXTENSIONS=1)"; \
	  PYMC_NO_EXTENSIONS=1 $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS); \
	else echo "make test: the compiled reader is not built: the pure-Python pass above was the only one"; fi

# The unit half alone (tests/unit: no server, no network), with both readers like `make test`.
# It needs no memcached and no twemproxy: a quick check while working on the code.
test-unit: $(VENV)/.test-deps
	$(BIN)/python -m pytest $(XDIST) tests/unit $(PYTEST_ARGS)
	@if $(BIN)/python -c "import pymc, sys; sys.exit(not pymc.__speedups__)"; then \
	  echo "make test-unit: again with the pure-Python reader (PYMC_NO_EXTENSIONS=1)"; \
	  PYMC_NO_EXTENSIONS=1 $(BIN)/python -m pytest $(XDIST) tests/unit $(PYTEST_ARGS); \
	else echo "make test-unit: the compiled reader is not built: the pure-Python pass above was the only one"; fi

# Every Python version the README claims, each in its own venv (.venv-3.10, ...). A version
# that pyenv (or PATH, as pythonX.Y) does not have is skipped with a message; any failure
# fails the target after all versions ran. `make test-all PYTHONS=3.12 PYTEST_ARGS=...` narrows it.
PYTHONS    ?= 3.10 3.11 3.12 3.13 3.14
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)

test-all: memcached nutcracker libmemcached-dev
	@failed=""; skipped=""; passed=""; \
	for v in $(PYTHONS); do \
	  py=""; \
	  for dir in $$(ls -d "$(PYENV_ROOT)"/versions/$$v.* 2>/dev/null | sort -V -r); do \
	    if [ -x "$$dir/bin/python" ]; then py="$$dir/bin/python"; break; fi; \
	  done; \
	  if [ -z "$$py" ] && command -v "python$$v" >/dev/null 2>&1 && "python$$v" -c "" 2>/dev/null; then \
	    py="$$(command -v python$$v)"; \
	  fi; \
	  if [ -z "$$py" ]; then \
	    echo "test-all: Python $$v is not installed (pyenv install $$v): SKIPPED"; \
	    skipped="$$skipped $$v"; continue; \
	  fi; \
	  echo "test-all: Python $$v ($$py) in .venv-$$v"; \
	  if $(MAKE) --no-print-directory test PYTHON="$$py" VENV=".venv-$$v" \
	      PYTEST_ARGS="$(PYTEST_ARGS)"; then passed="$$passed $$v"; \
	  else failed="$$failed $$v"; fi; \
	done; \
	echo "test-all: passed:$${passed:- none}; failed:$${failed:- none}; skipped:$${skipped:- none}"; \
	if [ -z "$$passed$$failed" ]; then echo "test-all: no Python of $(PYTHONS) is installed" >&2; exit 2; fi; \
	[ -z "$$failed" ]

# The layers (and what else may import what) are import-linter's contracts, in setup.cfg.
# What it cannot check: no module uses another module's private names (PRIVATE_REACH counts
# them; the count must be 0).
PRIVATE_REACH ?= tools/private_reach.py

lint: $(VENV)/.lint-deps
	$(BIN)/ruff check pymc tests benchmarks
	$(BIN)/ruff format --check pymc tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache --no-logo
	@[ -f "$(PRIVATE_REACH)" ] || { echo "make lint: $(PRIVATE_REACH) not found (PRIVATE_REACH=path/to/private_reach.py)" >&2; exit 2; }
	@out=$$($(BIN)/python "$(PRIVATE_REACH)" pymc) || exit 1; \
	if [ "$$(printf '%s\n' "$$out" | tail -n 1)" != 0 ]; then \
	  printf '%s\n' "$$out" >&2; \
	  echo "make lint: modules use other modules' private names (above); make them public or move them" >&2; \
	  exit 1; \
	fi; echo "private names used across modules: 0"

bench: $(VENV)/.bench-deps memcached
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache *.egg-info
