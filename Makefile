# Two commands on a fresh machine: `make demo` (or `make serve`) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install demo serve offline-model test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/claude-sessions demo

serve: install
	$(BIN)/claude-sessions serve

offline-model: install
	$(BIN)/claude-sessions offline-model

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	cd bench && ../$(BIN)/python run.py

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
