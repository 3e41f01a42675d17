# The two commands of the README. Both create the virtual environment when
# it is missing and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install clean-runs screenshot gpu-wheels

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One install serves both targets; the test extra only adds pytest.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

## make demo: install, then run the quickstart sweep (6 CNN-F trials on the bundled sample).
demo: $(VENV)/.installed
	$(BIN)/sweep launch sweeps/examples/quickstart.yaml

## make test: install with the test extra, then run every test (slow ones included).
test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make screenshot: the README's picture of MLflow's Compare page (runs the quickstart; needs chromium).
screenshot: $(VENV)/.installed
	$(BIN)/python docs/screenshots/take.py

## make gpu-wheels: what a bare GPU machine lacks (Ray, Optuna, MLflow, ...), as cp312 wheels packed for
## benchmarks/gpu_check.sh in .gpu-wheels/ (docs/cluster/gpu-check.md; needs pip's index, ~4 min).
gpu-wheels: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_wheels.py

clean-runs:
	rm -rf runs
