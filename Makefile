# Ferrum Infer: `make run` starts the whole cluster on localhost, `make test` runs every test.
# Both do all set-up first: .venv, packages (CPU torch pinned), generated protos, demo model.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN := services/_generated/ferrum_pb2.py
MODEL_DIR ?= models/ferrum-demo
MODEL := $(MODEL_DIR)/config.json

.PHONY: setup venv protos kernels model low-priority-model test-models run test test-suite test-unit test-cluster bench bench-quick clean

# kernels (one core compiling) and model (one training thread) run side by side.
setup: venv protos
	@$(MAKE) --no-print-directory -j2 kernels model

# pip takes torch from the machine's local CPU wheel (uv does not look there); uv installs the rest
# (1 min 55 s with pip, 8 s with uv), or pip where uv fails (uv reads no pip.conf: a private index
# configured only for pip). compileall then writes the bytecode on every core, which pip would have
# written file by file. It runs even where PYTHONDONTWRITEBYTECODE is set, so no process compiles
# torch or transformers from source at each start. It leaves out what no process here imports: the
# modeling code of architectures other than the demo's (a model's own file compiles in milliseconds
# at import), test suites, and tools (pip, setuptools, plotting): 34 s instead of 58 s on 2 cores.
# A file only a newer Python can compile (torch ships one) fails there as it would under pip, which
# ignores it too.
UNIMPORTED := /(pip|setuptools|matplotlib|fontTools|networkx|graphql|rich)/|/tests?/|/testing/_internal/|/transformers/models/(?!auto/|llama/|qwen2/)
venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile torch==2.13.0 uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[test]" \
		|| $(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test]"
	$(PY) -m compileall -qq -j 0 -x '$(UNIMPORTED)' \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	touch $@

protos: $(GEN)
$(GEN): protos/ferrum.proto $(STAMP)
	mkdir -p services/_generated
	$(PY) -m grpc_tools.protoc -Iservices/_generated=protos --python_out=. \
		--grpc_python_out=. --pyi_out=. services/_generated/ferrum.proto
	touch services/_generated/__init__.py

# The CPU kernels for this CPU's instruction set, AVX-512 or AVX2 (worker/engine/cpu_kernels); a
# no-op when built, a warning when they cannot be built (the engine then uses torch's SDPA and
# operations).
kernels: $(STAMP)
	$(PY) -m worker.engine.cpu_kernels

model: $(MODEL)
$(MODEL): | $(STAMP)
	$(PY) -m worker.demo_model --out $(MODEL_DIR)

# exec: the cluster's process replaces the recipe's shell, so the SIGTERM that make passes on to its
# child (`kill` of make, a container stop) reaches it and it stops every process it started; with a
# shell in between the shell died and the cluster went on holding its ports.
run: setup
	FERRUM_INFER_MODEL_PATH=$${FERRUM_INFER_MODEL_PATH:-$(MODEL_DIR)} exec $(PY) -c "import services.local_cluster as c; c.run_forever()"

# The test suite's tiny models (tests/conftest.py's fixtures) build beside the kernels and the demo
# model, instead of inside the first tests that need them.
TEST_MODELS := .cache/test-models
test-models: $(STAMP)
	$(PY) -m worker.demo_model --preset tiny --arch llama --out $(TEST_MODELS)/tiny-llama
	$(PY) -m worker.demo_model --preset tiny --arch qwen2 --out $(TEST_MODELS)/tiny-qwen2

# The suite starts once the kernels and its models are built. It never loads the demo model, whose
# one training thread (the set-up's longest part: 3-4 min on 2 cores) goes on beside the kernels'
# build and the tests at low priority, on what CPU they leave; `make test` ends when both have
# finished.
test: venv protos
	@$(MAKE) --no-print-directory -j3 low-priority-model test-suite

low-priority-model: | $(STAMP)
	@nice -n 15 $(MAKE) --no-print-directory model

test-suite: kernels test-models
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

bench: setup
	$(PY) -m tests.bench $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m tests.bench --preset quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) services/_generated worker/engine/cpu_kernels/_build

# ---------------------------------------------------------------- deployment
IMAGE ?= ferrum-infer
TORCH_VARIANT ?= cpu
COMPOSE ?= docker compose
CHART := helm/ferrum-infer

.PHONY: image compose-up compose-down chart-lint chart-template

# Container image: make image (CPU), make image TORCH_VARIANT=cuda (CUDA build).
image:
	docker build --build-arg TORCH_VARIANT=$(TORCH_VARIANT) -t $(IMAGE):$(TORCH_VARIANT) .

# One-machine cluster on http://localhost:8080; WORKERS=3 scales, GPU=1 adds the CUDA override.
compose-up:
	$(COMPOSE) $(if $(GPU),-f docker-compose.yml -f docker-compose.gpu.yml) up --build -d --scale worker=$(or $(WORKERS),1)

compose-down:
	$(COMPOSE) $(if $(GPU),-f docker-compose.yml -f docker-compose.gpu.yml) down

# helm lint/template with the helm binary when present, else Helm's Go SDK (test extra).
chart-lint: $(STAMP)
	@if command -v helm >/dev/null 2>&1; then helm lint --strict $(CHART); \
	else $(PY) -m tests.deploy.helm_sdk lint; fi

chart-template: $(STAMP)
	@if command -v helm >/dev/null 2>&1; then helm template ferrum-infer $(CHART) $(if $(VALUES),-f $(VALUES)); \
	else $(PY) -m tests.deploy.helm_sdk template $(if $(VALUES),-f $(VALUES)); fi
