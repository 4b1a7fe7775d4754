# Two commands on a fresh machine: `make demo` (or `make serve`) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# Installs come from uv.lock: exactly the versions the last green CI tested. Compiled at install:
# where PYTHONDONTWRITEBYTECODE is set no process caches its bytecode, and every server, CLI
# command or test process would compile the SDK afresh (5 s instead of 1 s to import).
UV_VERSION := 0.13.9
SYNC := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(BIN)/uv sync --frozen --extra dev --compile-bytecode
# Our own code (installed editable) compiled too, for the same reason.
COMPILE := $(BIN)/python -m compileall -q src tests

.PHONY: install demo serve offline-model test test-fast lint bench chaos image upgrade clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q uv==$(UV_VERSION); }
	$(SYNC)
	touch $@

demo: install
	$(COMPILE)
	$(BIN)/claude-sessions demo

serve: install
	$(COMPILE)
	$(BIN)/claude-sessions serve

offline-model: install
	$(BIN)/claude-sessions offline-model

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(COMPILE)
	$(BIN)/pytest -q -n 2 --dist loadfile

# The tests that start no CLI (logic on fake workers, stores, config, the API in process): under a minute.
test-fast: lint
	$(COMPILE)
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not slow"

bench: install
	$(SYNC) --extra bench
	cd bench && ../$(BIN)/python run.py

# Three nodes behind HAProxy on a private PostgreSQL, clients talking through a fault every few
# seconds (docs/benchmarks.md#chaos-soak); its last line says what was lost, doubled, reordered,
# forked or leaked, all 0. Needs root (PostgreSQL runs as its own user), PostgreSQL and haproxy.
MINUTES ?= 1
chaos: install
	cd bench && ../$(BIN)/python chaos.py --minutes $(MINUTES)

# The container image (deploy/Containerfile), built with podman and checked: run as root.
image:
	deploy/image/build.sh

# The deliberate step: the newest versions pyproject.toml allows, into uv.lock, then the whole suite.
upgrade: install
	UV_PYTHON_DOWNLOADS=never $(BIN)/uv lock --upgrade
	$(MAKE) test

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
