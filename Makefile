# pfode: two commands on a fresh machine.
#   make demo   creates .venv, installs pfode, samples the shipped digits model and benchmarks the solvers
#   make test   creates .venv if missing, installs the dev extras, runs ruff and pytest
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel on this machine; override e.g. TORCH_SPEC='torch==2.5.1' elsewhere.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"

venv: $(PY)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q -e .
	@touch $@

# tests run the adapters and peers too: diffusers, POT, torchdiffeq, torchsde, and k-diffusion and flow_matching
# without its declared dependencies (they pull torchvision and a CUDA build of torch)
$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,bench]'
	$(PIP) install -q --no-deps k-diffusion flow_matching
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pfode sample --force
	$(VENV)/bin/pfode bench --force

test: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) benchmarks/solvers_gmm.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
