# The two commands a new machine needs: `make run` and `make test`. Both install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install run test lint deploy-check bench gpu-check fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/sppo run

test: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The deployment files without a Docker engine: the Dockerfiles linted (hadolint, a dev dependency), the
# compose file validated by Debian's docker-compose against its schema (every service, both model server
# profiles), with .env.example as its .env and the two values it must be given.
deploy-check: $(STAMP)
	$(BIN)/hadolint docker/api.Dockerfile docker/worker.Dockerfile
	@command -v docker-compose >/dev/null || { echo "deploy-check needs docker-compose (apt-get install docker-compose)"; exit 1; }
	tmp=$$(mktemp -d) && cp docker-compose.yml $$tmp/ && cp .env.example $$tmp/.env \
	  && POSTGRES_PASSWORD=check SPPO_INFERENCE_SECRET=check \
	    docker-compose --project-directory $$tmp -f $$tmp/docker-compose.yml config -q; \
	  status=$$?; rm -rf $$tmp; exit $$status

# The slow tests, then the algorithm benchmark (pytest exits 5 when no test carries the slow mark), then
# the model server's, fault-soak and load benchmarks (PostgreSQL at SPPO_TEST_POSTGRES_URL).
# BENCH_ARGS passes flags to the benchmark, e.g. BENCH_ARGS="--budget-s 20 --seeds 1" for a smoke run;
# INFERENCE_BENCH_ARGS to the model server's (e.g. "--requests-per-client 2"); CHAOS_ARGS to the fault
# soak (e.g. "--jobs 4 --budget-s 600 --label reduced"); LOAD_ARGS to the load one (e.g. "--runs 1 --duration-s 3");
# MULTI_DEVICE_ARGS to the 1-vs-2-process one (e.g. "--steps 2"); MEMORY_ARGS to the CPU memory one
# (benchmarks/memory.py: about 40 minutes on 2 cores, ~10 GB; e.g. "--model-dir DIR" to reuse a built model).
# Optional last: our GRPO against TRL's GRPOTrainer, with the python of TRL_VENV (trl kept out of .venv so
# the project's own dependencies stay as installed; `pip install trl` there, see benchmarks/trl_grpo.py);
# without that venv the main one runs it and it reports the skip. TRL_ARGS e.g. "--rounds 2 --steps 3".
TRL_VENV ?= .venv-trl
bench: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python benchmarks/algorithms.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/python_graders.py
	$(BIN)/python benchmarks/multi_device.py $(MULTI_DEVICE_ARGS)
	$(BIN)/python benchmarks/serving.py $(INFERENCE_BENCH_ARGS)
	$(BIN)/python benchmarks/chaos.py $(CHAOS_ARGS)
	$(BIN)/python -m benchmarks.load $(LOAD_ARGS)
	$(BIN)/python benchmarks/memory.py $(MEMORY_ARGS)
	$(if $(wildcard $(TRL_VENV)/bin/python),$(TRL_VENV),$(VENV))/bin/python benchmarks/trl_grpo.py $(TRL_ARGS)

# The engine on one GPU within one 8-minute lease, no network (benchmarks/gpu_check.py): writes
# benchmarks/results/gpu/<device>.json. GPU_CHECK_ARGS e.g. "--max-seconds 300"; make test runs its
# `--device cpu --tiny` smoke mode.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Schemathesis against a live server: every phase (coverage included), many examples per operation.
fuzz: $(STAMP)
	SPPO_FUZZ_PHASES=examples,coverage,fuzzing,stateful SPPO_FUZZ_MAX_EXAMPLES=200 SPPO_FUZZ_MAX_TIME_S=480 \
		SPPO_FUZZ_RESULTS=benchmarks/results/fuzz.json \
		$(BIN)/pytest --timeout 900 tests/security/test_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
