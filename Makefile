# twotower: the everyday paths. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
DATA ?= data/ml-100k
SCHEMA ?= examples/movielens/schema.toml
export TWOTOWER_DATA_DIR ?= $(DATA)
export TWOTOWER_INDEX_STORE ?= var/index

.DEFAULT_GOAL := help
.PHONY: help serve test lint train bench bench-quick bench-10m data index clean redis-server

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

# The ray extra too: the Ray engine's tests start a two-node cluster (a fresh venv: ~3 min more).
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,train,ray]'
	@touch $@ $(VENV)/.serve

$(DATA)/items.jsonl: | $(VENV)/.serve
	$(BIN)/twotower data ml-100k --out $(DATA)

data: $(DATA)/items.jsonl ## fetch MovieLens-100k into $(DATA)

index: $(VENV)/.serve data ## build the demo model's index (no PyTorch needed)
	$(BIN)/twotower reindex --if-missing

serve: index ## fresh clone -> the demo service on $(HOST):$(PORT)
	$(BIN)/twotower serve --host $(HOST) --port $(PORT) --announce

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q redis-server; \
	  else sudo apt-get update -q && sudo apt-get install -y -q redis-server; fi; }

lint: $(VENV)/.dev ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(VENV)/.dev redis-server lint ## install dev deps and redis-server, lint, run the whole suite
	$(BIN)/pytest -q

train: $(VENV)/.dev data ## train from $(SCHEMA) on $(DATA), evaluate, export a new version into var/models
	$(BIN)/twotower train --schema $(SCHEMA) --data $(DATA) --model-store var/models

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	@touch $@ $(VENV)/.serve

bench: $(VENV)/.bench ## the full benchmark (see bench/README.md); `make bench-quick` for the short one
	$(BIN)/python -m bench.run

bench-quick: $(VENV)/.bench
	$(BIN)/python -m bench.run --quick

$(VENV)/.bench-ray: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench,ray]'
	@touch $@ $(VENV)/.serve

bench-10m: $(VENV)/.bench-ray ## 10M items on one box, both engines (not in CI; see docs/SCALE.md)
	$(BIN)/python -m bench.tenm $(BENCH_ARGS)

clean: ## remove the venv, data and built indexes
	rm -rf $(VENV) var data
