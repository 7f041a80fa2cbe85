# Connectile: `make demo` runs the main job end to end, `make test` runs lint, types and tests.
# Both create the virtual environment .venv on first use (exact versions from requirements/constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
BENCH_STAMP := $(VENV)/.stamp-bench
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast test-slow lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: a synthetic EM volume, blockwise on a local Ray cluster.
demo: $(STAMP)
	$(BIN)/connectile demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks jobs
	$(BIN)/mypy

## Lint, type check and the whole test suite, the two-node Ray cluster and 2-worker Ray Train scenarios
## included (about 4-5 minutes on 2 idle cores; `make test-fast` leaves the `slow` ones out).
## pytest's "no tests" exit 5 is not a failure.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-fast: lint
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

## Side-by-side benchmarks against the peers (daisy, scipy, TensorStore, …); see benchmarks/RESULTS.md.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_runtime.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs
