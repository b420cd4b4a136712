# The one entry point. Every target runs inside .venv, created by `make setup`.
VENV        ?= .venv
PY          := $(VENV)/bin/python
WHEEL_CACHE ?= .cache/wheels
TORCH_CUDA  ?=
export VENV WHEEL_CACHE TORCH_CUDA

.PHONY: setup doctor test test-unit lint clean

setup:  ## create .venv with the pinned stack, then run the doctor
	bash scripts/setup.sh

doctor:  ## print the stack matrix and what is wrong with it
	$(PY) -m codetr_serve.doctor

test:  ## the whole suite (unit, integration, e2e against a real TorchServe)
	$(PY) -m pytest

test-unit:  ## the fast part
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf model_store/* .pytest_cache build
