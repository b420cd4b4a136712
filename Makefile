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
	$(PY) -m codetr_serve.tools.doctor

test:  ## the whole suite (unit, integration, e2e against a real TorchServe)
	$(PY) -m pytest

test-unit:  ## the fast part
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf model_store/* .pytest_cache build

# ---- serving ---------------------------------------------------------------------------------------------
# `make serve` with no arguments serves a tiny random-weight demo model; CONFIG=/CHECKPOINT= serve a real one.
CONFIG      ?=
CHECKPOINT  ?=
FORMAT      ?= zip
MODEL_NAME  ?= co_detr
TS_FLAGS    ?=
ifeq ($(CONFIG),)
ARCHIVE_ARGS := --config config/co_dino_tiny.py
else
ARCHIVE_ARGS := --config $(CONFIG) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))
endif
MODEL_FILE  := $(if $(filter no-archive,$(FORMAT)),$(MODEL_NAME),$(MODEL_NAME).mar)

.PHONY: archive serve stop
archive:  ## build model_store/$(MODEL_NAME).mar from CONFIG/CHECKPOINT (tiny demo model by default)
	./archive.sh $(ARCHIVE_ARGS) --name $(MODEL_NAME) --format $(FORMAT)

serve: archive  ## start TorchServe in the foreground on the model store (Ctrl-C or `make stop` to end)
	@echo "Once 'Model $(MODEL_NAME) loaded' shows, in another shell:"
	@echo '  curl -H "Authorization: Bearer $$(python3 -c "import json;print(json.load(open(\"key_file.json\"))[\"inference\"][\"key\"])")" -H "Content-Type: image/jpeg" --data-binary @your_image.jpg http://127.0.0.1:8080/predictions/$(MODEL_NAME)'
	@echo "  or: .venv/bin/python -m codetr_serve.tools.client your_image.jpg --draw boxes.png"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/torchserve --start --ncs --foreground \
	  --ts-config config/config.properties --model-store model_store \
	  --models $(MODEL_NAME)=$(MODEL_FILE) $(TS_FLAGS)

stop:  ## stop a TorchServe started with `make serve`
	$(VENV)/bin/torchserve --stop

# ---- benchmarks ------------------------------------------------------------------------------------------
# Sweeps (batch x delay x workers x threads), in-process ceiling, mmdet-style baseline, Swin-L cold start.
# Writes bench/results/<timestamp>/report.md (+ CSV, JSON, PNG); see docs/tuning.md. ~15 min on 2 CPU cores.
BENCH_ARGS ?=
.PHONY: bench
bench:  ## benchmark TorchServe serving on loopback and write bench/results/<timestamp>/report.md
	$(PY) -m bench.run $(BENCH_ARGS)
