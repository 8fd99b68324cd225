# Everything sets itself up: the first run creates .venv and installs Cascade with its dev tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: serve test check lint types bench clean

# Two make commands started at once on a fresh clone (`make serve` and `make test`) take turns:
# the second waits on the lock and then finds the environment ready, instead of building it at
# the same time as the first.
$(READY): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Cascade needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	@mkdir -p $(VENV)
	flock $(VENV)/.lock $(MAKE) --no-print-directory build-venv

.PHONY: build-venv
build-venv:
	@if [ -f $(READY) ] && [ $(READY) -nt pyproject.toml ]; then exit 0; fi; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet -e ".[dev]" && \
	touch $(READY)

serve: $(READY)  ## run the service on ./cascade.db with the sandbox channels
	$(BIN)/cascade serve

test: $(READY)  ## the whole test suite (PostgreSQL tests skip locally when no server answers)
	$(BIN)/pytest

lint: $(READY)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: $(READY)
	$(BIN)/mypy

check: lint types

bench: $(READY)  ## the benchmark suite, its tables in bench/results/latest.md (see BENCHMARKS.md)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
