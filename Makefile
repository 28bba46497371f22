# The two commands a new machine needs: `make run` and `make test`. Both install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install run test lint bench clean

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

# The slow tests, then the algorithm benchmark (pytest exits 5 when no test carries the slow mark), then
# the load benchmark (PostgreSQL at SPPO_TEST_POSTGRES_URL, Redis db 14).
# BENCH_ARGS passes flags to the benchmark, e.g. BENCH_ARGS="--budget-s 20 --seeds 1" for a smoke run;
# LOAD_ARGS to the load benchmark, e.g. LOAD_ARGS="--runs 1 --duration-s 3".
bench: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python benchmarks/algorithms.py $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.load $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
