# Everything a fresh clone needs: `make demo` and `make test` set up .venv, install, and build the demo models.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODELS := build/models

.PHONY: install models models-yolo profiles demo test lint typecheck clean

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

# The detector family, for the video-monitoring pipeline (`ipa up` also builds it when missing).
models-yolo: $(MODELS)/yolo/.built

$(MODELS)/yolo/.built: $(VENV)/.installed $(wildcard mlserver_ipa/zoo/*.py)
	$(BIN)/ipa models build --family yolo --out $(MODELS)/yolo
	touch $@

# Re-measure the shipped profiles on this machine (vision about 15 minutes, speech and text about 50 on 2 cores;
# resumable). The speech and text families are built under build/models by the profiler when missing (~12 GB).
# Their encoder stages are measured on the whole grid, the sequence-to-sequence ones on a subset (the latency
# model interpolates the rest; batches that cannot meet the SLO are left out).
profiles: models models-yolo
	$(BIN)/ipa profile inference_graphs/video-monitoring.yaml --batch 1 2 4 8 --cores 0.25 0.5 1 1.5 2 --duration 3
	$(BIN)/ipa profile inference_graphs/audio-sent.yaml --stage nlp-sent --batch 1 2 4 8 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/audio-qa.yaml --stage nlp-qa --batch 1 2 4 8 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/nlp.yaml --stage nlp-li --batch 1 2 4 8 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/audio-qa.yaml --stage audio --batch 1 2 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/audio-qa.yaml --stage audio --batch 4 8 --cores 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/nlp.yaml --stage nlp-trans --batch 1 2 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/nlp.yaml --stage nlp-trans --batch 4 8 --cores 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/sum-qa.yaml --stage nlp-sum --batch 1 2 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/sum-qa.yaml --stage nlp-sum --batch 4 --cores 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/nlp.yaml --stage nlp-sum --batch 1 2 --cores 0.5 1 2 --duration 3
	$(BIN)/ipa profile inference_graphs/nlp.yaml --stage nlp-sum --batch 4 8 --cores 1 2 --duration 3
	$(BIN)/ipa profile import-infadapter ../shared/data/reference/infadapter_resnet_capacity.csv --out profiles/infadapter-resnet.csv

lint: install
	$(BIN)/ruff check mlserver_ipa adapter tests benchmarks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

test: install models lint typecheck
	$(BIN)/pytest

demo: install models
	$(BIN)/ipa demo --models $(MODELS)

clean:
	rm -rf $(VENV) build
