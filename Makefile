# One command each on a fresh machine: `make demo` (set up + run the pipeline on the embedded simulation,
# then serve the champion and score real 2011A jets) and `make test` (set up + run the test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000
SERVE_PORT ?= 8080
TEST_WORKERS ?= 2
TRACKING_DIR ?= data/mlflow
export MLFLOW_TRACKING_URI ?= http://127.0.0.1:$(PORT)
export MLFLOW_EXPERIMENT_NAME ?= wtag
# Quiet TensorFlow's start-up chatter; use every core for Keras/XGBoost.
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Offline project: no MLflow usage telemetry (it cannot reach anything from here).
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup setup-gpu demo test tracking tracking-stop serve bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "wtag needs Python 3.11 (python_env.yaml pins 3.11.7)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# GPU machines: onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9; its extras bring them as pip packages, which
# wtag.inference preloads before it asks for the CUDA execution provider.
setup-gpu: setup
	$(BIN)/python -m pip install --quiet "onnxruntime-gpu[cuda,cudnn]==$$($(BIN)/python -c 'import onnxruntime as o; print(o.__version__)')"

tracking: setup
	$(BIN)/wtag tracking-server start --port $(PORT) --dir $(TRACKING_DIR)

tracking-stop: setup
	$(BIN)/wtag tracking-server stop --dir $(TRACKING_DIR)

demo: tracking
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mlflow run . -e main --env-manager local --experiment-name $(MLFLOW_EXPERIMENT_NAME)
	$(BIN)/python examples/score_demo.py --port $(SERVE_PORT) --data ../shared/data

serve: setup
	$(BIN)/wtag serve --port $(SERVE_PORT)

bench: setup
	$(BIN)/python bench/generate.py speed
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/scale.py

# Two pytest-xdist workers; conftest keeps the tests of each expensive shared fixture on one of them.
test: setup
	$(BIN)/python -m pytest -v -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf $(VENV) build *.egg-info
