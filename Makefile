# The README's commands. `make run` and `make test` each set up everything they need:
# a virtual environment in .venv, PyTorch (the CPU build where no GPU is present),
# then this package with its pinned dependency ranges.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# The temporary Prefect server takes 10-20 s to start on 2 busy cores; Prefect gives up at 20 s.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: setup run test test-fast docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# A plain `torch` requirement pulls a multi-GB CUDA build: pick the build first.
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install "torch==$(TORCH_VERSION)"; \
	else \
		$(PY) -m pip install "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
		|| $(PY) -m pip install "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PY) -m pip install --quiet -e ".[dev$$(command -v nvidia-smi >/dev/null 2>&1 && echo ,gpu)]"
	@touch $(STAMP)

## The lifecycle on the embedded default data (add overrides with ARGS="model.n_layer=2 ...").
run: $(STAMP)
	$(PY) -m flows.lifecycle $(ARGS)

## The whole test suite, slow integration tests included.
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

## Unit tests only (seconds).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" tests/unit $(ARGS)

## The docs site on http://127.0.0.1:8000, rebuilt on every change (the configuration reference too).
docs: $(STAMP)
	$(PY) -m mkdocs serve

clean:
	rm -rf outputs .pytest_cache
