# Everything a fresh clone needs: `make demo` and `make test` set up .venv, install, and build the demo models.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODELS := build/models

.PHONY: install models demo test lint typecheck clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Demo variant families: real architectures, deterministic random weights, built offline.
models: $(MODELS)/resnet/.built

$(MODELS)/resnet/.built: $(VENV)/.installed $(wildcard mlserver_ipa/zoo/*.py)
	$(BIN)/ipa models build --family resnet --out $(MODELS)/resnet
	touch $@

lint: install
	$(BIN)/ruff check mlserver_ipa adapter tests benchmarks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install models lint typecheck
	$(BIN)/pytest

demo: install models
	$(BIN)/ipa demo --models $(MODELS)/resnet

clean:
	rm -rf $(VENV) build
