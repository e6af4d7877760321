# make demo  - create .venv, install pmx, run the FastAPI example with 4 workers
# make test  - create .venv with the test dependencies and run the whole suite
# make lint  - ruff and mypy

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "pmx needs Python 3.10 or newer")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[examples]'
	@touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[test]'
	@touch $@

demo: $(VENV)/.demo
	@echo "pmx: serving examples/fastapi_app on http://127.0.0.1:8000 with 4 workers (Ctrl-C stops)"
	$(BIN)/pmx run examples.fastapi_app.main:app -i 4 --bind 127.0.0.1:8000

test: $(VENV)/.test
	$(BIN)/python -m pytest

lint: $(VENV)/.test
	$(BIN)/ruff check pmx tests examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# make bench - install wrk and the servers to compare with, run bench/run.py, which
#              writes docs/benchmarks.md (make bench BENCH_ARGS=--quick: under 10 minutes;
#              BENCH_ARGS='--only tail,spread --workers 2' runs a subset)
.PHONY: bench
BENCH_ARGS ?=

$(VENV)/.bench: $(BIN)/python pyproject.toml
	$(PIP) install -e '.[test]' gunicorn uvicorn-worker
	$(PIP) install granian || echo "granian did not install; the benchmark leaves it out"
	@touch $@

bench: $(VENV)/.bench
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
