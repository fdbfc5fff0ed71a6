# Runpack: `make run` starts a local server, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DB ?= runpack.db

.PHONY: run test install install-dev lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[server]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/runpack serve --host $(HOST) --port $(PORT) --db $(DB) --local-runners 1

test: install-dev
	$(BIN)/ruff check runpack runpack_runner tests
	$(BIN)/ruff format --check runpack runpack_runner tests
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check runpack runpack_runner tests
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format runpack runpack_runner tests
	$(BIN)/ruff check --fix runpack runpack_runner tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
