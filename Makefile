# Two commands on a fresh machine:  make repro  and  make test
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install system-deps repro exp-show plots tune test test-fast bench bench-scale bench-scale-limited lint mlflow-ui clean demo-continuous
.DEFAULT_GOAL := help

help:  ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the pinned dependencies

repro: $(STAMP)  ## Run the whole pipeline on the offline default (dvc repro)
	PATH="$(abspath $(BIN)):$$PATH" PIPELINE_RUN_GROUP=repro-$$(date -u +%Y%m%dT%H%M%SZ) $(BIN)/dvc repro

# The columns a user compares: the accuracies and the params that differ between experiments, with
# short headers (DVC's own table has over 100 columns: every cell is "…" in an 80-column terminal).
exp-show: $(STAMP)  ## Experiments side by side: accuracies and the params that differ
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python scripts/exp_show.py

PLOTS_JS := plots/node_modules/.package-lock.json
$(PLOTS_JS): plots/package.json plots/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found; install Node.js and npm (apt-get install npm)"; exit 1; }
	npm ci --prefix plots --no-audit --no-fund --loglevel=error

plots: $(STAMP) $(PLOTS_JS)  ## Learning curves and confusion matrices as a page that works offline (dvc_plots/index.html)
	$(BIN)/dvc plots show

tune: $(STAMP)  ## Search a variant's settings: make tune VARIANT=three_conv [TRIALS=20] [APPLY=1]
	@test -n "$(VARIANT)" || { echo "error: name the variant, e.g. make tune VARIANT=three_conv"; exit 2; }
	$(BIN)/python -m pipeline tune $(VARIANT) $(if $(TRIALS),--trials $(TRIALS)) $(if $(APPLY),--apply)

system-deps:  ## Debian packages the tests need (headless Chromium, npm); installs them as root
	bash scripts/system_deps.sh

test: $(STAMP) system-deps  ## Run the test suite
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## Only the fast tests (no training, no servers)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)  ## Measure speed (benchmarks/, figures go into the README)
	$(BIN)/python -m benchmarks.run

bench-scale: $(STAMP)  ## The pipeline on 60,000 and 300,000 images and 50,000 colour ones: time, memory, disk (~8 min)
	$(BIN)/python -m benchmarks.scale

bench-scale-limited: $(STAMP)  ## 2,000,000 images (1.6 GB) through every stage in a 1.5 GB memory group (root; ~15 min, 20 the first time)
	$(BIN)/python -m benchmarks.scale --sizes 2000000 --colour 0 --rounds 0 --memory-limit 1.5e9

demo-continuous: $(STAMP)  ## Continuous training, day by day, offline (demo-continuous/; about 6 minutes)
	$(BIN)/python -m flows.demo --dir demo-continuous

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

mlflow-ui: $(STAMP)  ## Browse the runs at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:  ## Remove generated outputs (not .venv, not the MLflow store)
	rm -rf data/raw data/prepared models reports .cache

-include mk/*.mk
